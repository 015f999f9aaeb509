"""Reconnect storms: a jittered retry: per subscriber, and a staged drain on stop (also under a real twistd)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from sse_daemon.events.schema import Event
from sse_daemon.policy.storms import drain_schedule, retry_frame, retry_hint

from .conftest import RawHttpClient, TwistdProcess, deadline, raw_request, status, subscribe, wait_for, write_config

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    {extra}
"""


def config(**extra: object) -> str:
    return SINK.format(extra="\n    ".join(f"{k}: {v}" for k, v in extra.items()))


def retries(raw: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"\nretry: (\d+)\n", raw)]


# --------------------------------------------------------------------------- pure


@pytest.mark.reactor_free
def test_retry_hint_is_uniform_in_the_range() -> None:
    assert retry_hint(1000, 5000, lambda: 0.0) == 1000
    assert retry_hint(1000, 5000, lambda: 0.999999) == 5000
    assert retry_hint(1000, 5000, lambda: 0.5) == 3000
    assert retry_hint(3000, 3000, lambda: 0.7) == 3000
    assert retry_hint(5000, 1000, lambda: 0.0) == 1000, "a reversed range is read in order"
    assert retry_hint(0, 0, lambda: 0.5) is None and retry_frame(None) == b""
    assert retry_frame(1234) == b"retry: 1234\n\n"


@pytest.mark.reactor_free
@pytest.mark.parametrize(
    ("count", "window", "batch_min", "expected"),
    [
        (0, 10, 1, []),
        (3, 0, 1, [(0.0, 3)]),
        (5, 1, 1, [(0.0, 1), (0.25, 1), (0.5, 1), (0.75, 1), (1.0, 1)]),
        (6, 1, 2, [(0.0, 2), (0.5, 2), (1.0, 2)]),
        (7, 1, 2, [(0.0, 2), (0.333333, 2), (0.666667, 2), (1.0, 1)]),
        (20, 10, 20, [(0.0, 20)]),
        (1000, 10, 20, [(i * 0.25, 25 if i < 16 else 24) for i in range(41)]),  # steps of 0.25 s bound the batches
        (10_000, 1, 1, [(i * 0.25, 2000) for i in range(5)]),
    ],
)
def test_drain_schedule(count: int, window: float, batch_min: int, expected: list) -> None:
    schedule = drain_schedule(count, window, batch_min)
    assert schedule == expected
    assert sum(n for _, n in schedule) == count


# --------------------------------------------------------------------------- over sockets


@pytest_twisted.ensureDeferred
async def test_each_subscriber_gets_its_own_retry_hint(daemon) -> None:
    service = await daemon(config(**{"retry.min": 1000, "retry.max": 2000}))
    sink = service.sinks["Events"].sink
    draws = iter([0.0, 0.25, 0.9999])
    sink.jitter = lambda: next(draws)
    port = service.port_of("Events")
    clients = [await subscribe(port) for _ in range(3)]
    for client in clients:
        await client.wait_for(b"retry: ")
    assert [retries(bytes(c.received)) for c in clients] == [[1000], [1250], [2000]]
    opening = bytes(clients[0].received).partition(b"\r\n\r\n")[2]
    assert opening.startswith(b"27\r\n: sse-daemon stream open\n\nretry: 1000\n\n"), "in the first bytes"
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_no_hint_when_retry_max_is_zero(daemon) -> None:
    service = await daemon(config(**{"retry.max": 0}))
    client = await subscribe(service.port_of("Events"))
    assert b"retry:" not in client.received
    await client.close()


@pytest_twisted.ensureDeferred
async def test_stop_stops_accepting_then_closes_in_stages_on_the_clock(daemon) -> None:
    clock = Clock()
    service = await daemon(config(**{"drain.window": 1, "drain.batch.min": 2, "heartbeat.interval": 0,
                                     "retry.min": 100, "retry.max": 900}), clock=clock)
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    clients = []
    for _ in range(6):
        clients.append(await subscribe(port))
        clock.advance(0.001)  # distinct connection times: the oldest go first
    stopping = service.stopService()
    await wait_for(lambda: sum(c.is_closed for c in clients) == 2, what="the first batch")
    assert [c.is_closed for c in clients] == [True, True, False, False, False, False]
    with pytest.raises(error.ConnectionRefusedError):
        await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawHttpClient()))
    # those still connected keep getting events while they wait for their turn
    service.bus.publish("Events", [Event({"n": 42})])
    for client in clients[2:]:
        await client.wait_for(b'"n":42')
    assert not stopping.called
    clock.advance(0.5)
    await wait_for(lambda: sum(c.is_closed for c in clients) == 4, what="the second batch")
    clock.advance(0.5)
    await wait_for(lambda: all(c.is_closed for c in clients), what="the last batch")
    await deadline(stopping)
    for client in clients:
        raw = bytes(client.received)
        assert b": server shutting down; reconnect\n" in raw
        assert 100 <= retries(raw)[-1] <= 900, "a last retry: hint of its own"
        assert raw.endswith(b"0\r\n\r\n"), "each stream ends cleanly"
    assert not sink.subscribers


@pytest_twisted.ensureDeferred
async def test_real_twistd_drains_in_stages_on_sigterm(tmp_path: Path) -> None:
    config_path = write_config(tmp_path, config(**{"drain.window": 1.0, "drain.batch.min": 2}))
    process, port = await TwistdProcess.start(config_path, tmp_path)
    try:
        clients = [await subscribe(port) for _ in range(6)]
        closed_at: dict[int, float] = {}
        for i, client in enumerate(clients):
            client.closed.addCallback(lambda _, i=i: closed_at.setdefault(i, reactor.seconds()))
        signalled = reactor.seconds()
        process.signal("TERM")
        await wait_for(lambda: len(closed_at) == 6, timeout=15, what="every stream to be closed")
        await wait_for(lambda: process.ended, timeout=15, what="twistd to exit")
        times = sorted(closed_at.values())
        assert times[-1] - times[0] >= 0.7, f"closes are spread over the window: {times}"
        assert times[1] - times[0] < 0.3 and times[2] - times[1] >= 0.3, f"in batches of two: {times}"
        assert reactor.seconds() - signalled < 10, "exits well within systemd's TimeoutStopSec"
        assert process.reason.value.exitCode == 0, process.output
        assert b"closing 6 subscribers over 1.0s in 3 batches" in process.output
        for client in clients:
            assert b"server shutting down" in client.received and client.received.endswith(b"0\r\n\r\n"), (process.output.decode()[-3000:], [b"shutting" in c.received for c in clients])
    finally:
        await process.kill()


PUBLISHED = """\
sources:
  In: {type: http, schema: "n int", stream: S, receiver.url: "http://127.0.0.1:0/in"}
sinks:
  Out: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, drain.window: 0.5}
"""

STREAMING_HEAD = (b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"%x\r\n%s\r\n")


@pytest_twisted.ensureDeferred
async def test_real_twistd_sigterm_answers_an_open_streaming_publish_with_what_it_took(tmp_path: Path) -> None:
    """Seen: a streaming publish open at SIGTERM (its publisher between two lines) was cut at exit without
    an answer, its lines delivered: the publisher could not tell what had been accepted."""
    process, port = await TwistdProcess.start(write_config(tmp_path, PUBLISHED), tmp_path)
    try:
        live = await subscribe(port)
        lines = b'{"n": 1}\n{"n": 2}\n'
        publisher = await raw_request(port, STREAMING_HEAD % (len(lines), lines))
        await live.wait_for(b'"n":2')  # both lines are published: the body stays open
        process.signal("TERM")
        await wait_for(lambda: publisher.is_closed and process.ended, timeout=15, what="the answer and twistd's exit")
        assert process.reason.value.exitCode == 0, process.output
        raw = bytes(publisher.received)
        assert raw and status(raw) == 200, f"the publisher got {raw!r}"
        answer = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert (answer["accepted"], answer["lines"], answer.get("ended")) == (2, 2, "shutting-down")
    finally:
        await process.kill()


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_the_answer_of_a_publish_the_bus_has_not_acknowledged(daemon) -> None:
    """A POST whose events wait for the bus (Redis's acknowledgement, a commit) at SIGTERM: twistd cuts every
    connection once stopService fires, so it must fire only after the publisher has its answer."""
    service = await daemon(PUBLISHED)
    ingest = service.sources["In"]
    real_publish = ingest.bus.publish
    acknowledged: list[Deferred] = []

    def slow_publish(stream: str, events: list) -> Deferred:
        done: Deferred = Deferred()
        acknowledged.append(done)
        done.addCallback(lambda _: real_publish(stream, events))
        return done

    ingest.bus.publish = slow_publish
    body = b'{"n": 7}'
    publisher = await raw_request(service.port_of("In"), b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await wait_for(lambda: acknowledged, what="the publish to reach the bus")
    stopped = service.stopService()
    assert not stopped.called, "stopped while a publisher waits for its answer"
    reactor.callLater(0.2, acknowledged[0].callback, None)
    await deadline(stopped)
    assert publisher.received and status(bytes(publisher.received)) == 200, bytes(publisher.received)


@pytest_twisted.ensureDeferred
async def test_real_twistd_a_second_sigterm_or_a_sigint_during_the_drain_is_logged_and_ignored(tmp_path: Path) -> None:
    """Seen: a second SIGTERM (or a SIGINT) while the daemon drained logged a critical ReactorNotRunning
    traceback; after a SIGINT twistd then ended by that signal instead of exiting 0."""
    process, port = await TwistdProcess.start(write_config(tmp_path, config(**{"drain.window": 2.0, "drain.batch.min": 1})), tmp_path)
    try:
        clients = [await subscribe(port) for _ in range(3)]  # the drain takes 2 s
        process.signal("TERM")
        await wait_for(lambda: b"closing 3 subscribers over" in process.output, what="the drain to begin")
        process.signal("TERM")
        process.signal("INT")
        await wait_for(lambda: process.ended, timeout=15, what="twistd to exit")
        assert b"Traceback" not in process.output, process.output.decode()
        assert process.reason.value.exitCode == 0, process.output
        assert process.output.count(b"already shutting down") == 2, process.output.decode()
        assert all(c.is_closed and b"server shutting down" in c.received for c in clients), "the drain went on to its end"
    finally:
        await process.kill()
