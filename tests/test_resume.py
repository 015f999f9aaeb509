"""Honest resume: bounded history (count, age, bytes) and an explicit reset event when events were lost."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from sse_daemon.connectors.history import History
from sse_daemon.events.schema import Event
from sse_daemon.wire.eventstream import EventStreamParser, Message

from .conftest import subscribe, wait_for
from .test_sink import _unchunk

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    retry.max: 0
    {extra}
"""


def config(**extra: object) -> str:
    return SINK.format(extra="\n    ".join(f"{k}: {v}" for k, v in extra.items()))


def publish(service, *numbers: int) -> None:
    service.bus.publish("Events", [Event({"n": n}) for n in numbers])


def parsed(raw: bytes) -> list[Message]:
    body = raw.partition(b"\r\n\r\n")[2]
    return [m for m in EventStreamParser().feed(_unchunk(body)) if isinstance(m, Message)]


def numbers(messages: list[Message]) -> list[int]:
    return [json.loads(m.data)["event"]["n"] for m in messages if m.event == "message"]


def head(raw: bytes) -> dict[str, str]:
    lines = raw.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    return {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}


# --------------------------------------------------------------------------- the pure history


@pytest.mark.reactor_free
def test_exact_resume_replays_what_follows_and_says_so() -> None:
    clock = Clock()
    history = History(10, clock.seconds, start=100)
    for i in range(101, 106):
        history.append(i, b"frame%d" % i)
    resume = history.resume("103")
    assert resume.frames == (b"frame104", b"frame105")
    assert resume.reset is None and resume.after == 103
    assert history.resume("105").frames == () and history.resume("105").reset is None


@pytest.mark.reactor_free
@pytest.mark.parametrize(
    ("requested", "reason"),
    [("99", "too-old"), ("from-before", "unparseable"), ("", "unparseable"), ("1e3", "unparseable"), ("106", "unknown")],
)
def test_ids_history_cannot_vouch_for_get_a_reset(requested: str, reason: str) -> None:
    history = History(10, Clock().seconds, start=100)
    for i in range(101, 106):
        history.append(i, b"f%d" % i)
    resume = history.resume(requested)
    assert resume.reset == reason
    assert resume.frames == tuple(b"f%d" % i for i in range(101, 106)), "everything held is replayed"
    assert resume.after == 100 and resume.oldest == 101


@pytest.mark.reactor_free
@pytest.mark.parametrize("size, max_bytes, max_age", [(5, 0, 0.0), (0, 0, 0.0), (100, 12, 0.0), (3, 7, 0.0), (50, 0, 2.5)])
def test_extend_keeps_what_appending_one_by_one_keeps(size: int, max_bytes: int, max_age: float) -> None:
    """A sink keeps a publish's events with one ``extend``: the same entries, floor, newest, bytes and
    evictions as appending them one at a time, under every bound."""
    clock = Clock()
    one, many = (History(size, clock.seconds, 0, max_age, max_bytes) for _ in range(2))
    event_id = 0
    for batch in (1, 4, 0, 9, 2, 30, 1):
        ids = list(range(event_id + 1, event_id + 1 + batch))
        frames = [b"f" * (1 + i % 5) for i in ids]
        event_id += batch
        for i, frame in zip(ids, frames):
            one.append(i, frame)
        many.extend(ids, frames)
        clock.advance(1.0)
        assert (list(many.entries()), many.floor, many.newest, many.bytes, many.evicted) == \
               (list(one.entries()), one.floor, one.newest, one.bytes, one.evicted)
    assert one.evicted, "the bounds were reached"


@pytest.mark.reactor_free
def test_count_bound_moves_the_floor() -> None:
    history = History(3, Clock().seconds, start=0)
    for i in range(1, 8):
        history.append(i, b"x")
    assert len(history) == 3 and history.floor == 4
    assert history.resume("4").reset is None, "the client has 4; 5, 6, 7 are all held"
    assert history.resume("3").reset == "too-old", "5 was... 4 was evicted: the client at 3 lost it"


@pytest.mark.reactor_free
def test_byte_bound() -> None:
    history = History(100, Clock().seconds, start=0, max_bytes=10)
    for i in range(1, 5):
        history.append(i, b"abcd")  # 4 bytes each: two fit
    assert [f for f in history.resume("0").frames] == [b"abcd", b"abcd"]
    assert history.bytes == 8 and history.floor == 2
    history.append(5, b"x" * 11)  # larger than the whole bound: held by nobody
    assert len(history) == 0 and history.floor == 5 and history.bytes == 0


@pytest.mark.reactor_free
def test_age_bound_on_the_clock() -> None:
    clock = Clock()
    history = History(100, clock.seconds, start=0, max_age=60)
    history.append(1, b"a")
    clock.advance(30)
    history.append(2, b"b")
    clock.advance(30.5)  # event 1 is now 60.5 s old
    resume = history.resume("0")
    assert resume.frames == (b"b",) and resume.reset == "too-old" and history.floor == 1
    assert history.resume("1").reset is None
    clock.advance(60)
    assert len(history) == 0 and history.resume("2").reset is None, "2 was the newest: nothing lost"


@pytest.mark.reactor_free
def test_size_zero_keeps_nothing_but_still_knows_the_newest() -> None:
    history = History(0, Clock().seconds, start=0)
    history.append(1, b"a")
    history.append(2, b"b")
    assert len(history) == 0
    assert history.resume("2").reset is None
    assert history.resume("1").reset == "too-old"


# --------------------------------------------------------------------------- over a socket


@pytest_twisted.ensureDeferred
async def test_exact_resume_over_the_wire(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("Events")
    publish(service, 1, 2, 3)
    first = await subscribe(port, headers="Last-Event-ID: 0\r\n")  # 0 is before this sink started
    await wait_for(lambda: len(parsed(bytes(first.received))) == 4, what="reset + 3 events")
    second_id = parsed(bytes(first.received))[2].id
    await first.close()
    client = await subscribe(port, headers=f"Last-Event-ID: {second_id}\r\n")
    await wait_for(lambda: numbers(parsed(bytes(client.received))) == [3], what="the replay")
    assert head(bytes(client.received))["sse-replay-from"] == second_id, "nothing lost: replay continues after the id sent"
    assert [m.event for m in parsed(bytes(client.received))] == ["message"], "no reset event"
    await client.close()
    assert service.sinks["Events"].sink.counters["resume_exact"] == 1


@pytest_twisted.ensureDeferred
async def test_id_from_before_a_restart_gets_reset_then_history(daemon) -> None:
    service = await daemon(config(**{"resume.reset.event": "gap"}))
    sink = service.sinks["Events"].sink
    port = service.port_of("Events")
    publish(service, 1, 2)
    stale = "1000"  # an id of an earlier run: far below this run's first id
    client = await subscribe(port, headers=f"Last-Event-ID: {stale}\r\n")
    await wait_for(lambda: len(parsed(bytes(client.received))) == 3, what="reset + history")
    reset, *replayed = parsed(bytes(client.received))
    assert reset.event == "gap"
    oldest = replayed[0].id
    assert json.loads(reset.data) == {
        "reason": "too-old", "requested": stale, "oldest": oldest, "resumed_after": str(sink.history.floor),
    }
    assert reset.id == str(sink.history.floor), "a reconnect after the reset resumes exactly"
    assert head(bytes(client.received))["sse-replay-from"] == str(sink.history.floor) != stale
    assert numbers(replayed) == [1, 2]
    await client.close()
    assert sink.counters["resume_reset_too_old"] == 1


@pytest_twisted.ensureDeferred
async def test_empty_history_reset_has_null_oldest_and_a_usable_id(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("Events")
    client = await subscribe(port, path="/events?last_event_id=not-a-number")
    await wait_for(lambda: parsed(bytes(client.received)), what="the reset event")
    (reset,) = parsed(bytes(client.received))
    assert reset.event == "reset" and json.loads(reset.data)["oldest"] is None
    assert json.loads(reset.data)["reason"] == "unparseable"
    await client.close()
    # the client resumes with the id the reset gave it: nothing was lost since, so no reset
    publish(service, 7)
    again = await subscribe(port, headers=f"Last-Event-ID: {reset.id}\r\n")
    await wait_for(lambda: parsed(bytes(again.received)), what="the replay")
    assert [m.event for m in parsed(bytes(again.received))] == ["message"]
    assert numbers(parsed(bytes(again.received))) == [7]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_evicted_by_age_on_the_injected_clock(daemon) -> None:
    clock = Clock()
    clock.advance(1_000)
    service = await daemon(config(**{"history.max.age": 60, "heartbeat.interval": 0}), clock=clock)
    port = service.port_of("Events")
    listener = await subscribe(port)
    publish(service, 1)
    clock.advance(45)
    publish(service, 2)
    await wait_for(lambda: len(parsed(bytes(listener.received))) == 2, what="two live events")
    first_id = parsed(bytes(listener.received))[0].id
    await listener.close()
    clock.advance(30)  # event 1 is 75 s old: gone; event 2 is 30 s old
    late = await subscribe(port, headers=f"Last-Event-ID: {int(first_id) - 1}\r\n")
    await wait_for(lambda: len(parsed(bytes(late.received))) == 2, what="reset + event 2")
    reset, event = parsed(bytes(late.received))
    assert reset.event == "reset" and json.loads(reset.data)["reason"] == "too-old"
    assert numbers([event]) == [2]
    await late.close()
    on_time = await subscribe(port, headers=f"Last-Event-ID: {first_id}\r\n")
    await wait_for(lambda: parsed(bytes(on_time.received)), what="event 2")
    assert [m.event for m in parsed(bytes(on_time.received))] == ["message"], "1 was received: nothing lost"
    await on_time.close()


@pytest_twisted.ensureDeferred
async def test_no_last_event_id_no_replay_no_header(daemon) -> None:
    service = await daemon(config())
    publish(service, 1)
    client = await subscribe(service.port_of("Events"))
    publish(service, 2)
    await wait_for(lambda: parsed(bytes(client.received)), what="a live event")
    assert numbers(parsed(bytes(client.received))) == [2]
    assert "sse-replay-from" not in head(bytes(client.received))
    await client.close()
