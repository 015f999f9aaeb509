"""worker.count on a sink: real worker processes accepting on one socket (127.0.0.1, port 0)."""

from __future__ import annotations

import base64
import os
import signal

import bcrypt
import pytest
import pytest_twisted

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.ops.figures import sink_figures
from sse_daemon.events.schema import Event

from .conftest import RawHttpClient, deadline, raw_request, subscribe, wait_for
from .test_sink import messages

CONFIG = """\
sources:
  In: {type: http, stream: S, schema: "n int", receiver.url: "http://127.0.0.1:0/publish"}
sinks:
  S: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: /events,
      worker.count: 2, history.size: 100, drain.window: 0.2}
"""

#: connections tried before giving up on landing on a given worker (each lands on either with
#: about even odds, so 40 misses in a row would take ~1e-12 luck)
ATTEMPTS = 40


def publish(service, *numbers: int) -> None:
    service.bus.publish("S", [Event({"n": n}) for n in numbers])


def numbers(client: RawHttpClient) -> list[int]:
    return [int(m.data.split('"n":')[1].rstrip("}")) for m in messages(bytes(client.received)) if '"n":' in m.data]


async def worker_of(client: RawHttpClient, log_events: list[dict]) -> int:
    """Which worker accepted this connection: the one that logged its peer address."""
    peer = f"127.0.0.1:{client.transport.getHost().port}"
    event = await wait_for(lambda: next((e for e in log_events if e.get("peer") == peer and "worker" in e
                                         and "connected" in e.get("log_format", "")), None),
                           what=f"a worker to log subscriber {peer}")
    return event["worker"]


async def subscriber_on(worker: int, port: int, log_events: list[dict], headers: str = "") -> RawHttpClient:
    """Subscribe until a connection lands on ``worker``; the others are closed."""
    for _ in range(ATTEMPTS):
        client = await subscribe(port, headers=headers)
        if await worker_of(client, log_events) == worker:
            return client
        await client.close()
    raise AssertionError(f"no connection out of {ATTEMPTS} landed on worker {worker}")


async def started(service) -> list[int]:
    pool = service.sinks["S"]
    await wait_for(lambda: all(w is not None and w.figures for w in pool.workers), what="both workers to report")
    return pool.pids()


@pytest_twisted.ensureDeferred
async def test_events_reach_subscribers_on_every_worker(daemon, log_events) -> None:
    service = await daemon(CONFIG)
    pids = await started(service)
    assert len(set(pids)) == 2 and os.getpid() not in pids, "two processes of their own"
    port = service.port_of("S")
    first, second = await subscriber_on(0, port, log_events), await subscriber_on(1, port, log_events)
    publish(service, 1, 2, 3)
    for client in (first, second):
        await wait_for(lambda client=client: len(numbers(client)) == 3, what="three events on each worker")
    assert numbers(first) == numbers(second) == [1, 2, 3]
    assert [m.id for m in messages(bytes(first.received))] == [m.id for m in messages(bytes(second.received))], \
        "the same ids from every worker"
    figures = await wait_for(lambda: (f := sink_figures(service.sinks["S"]))["events_out"] == 6 and f,
                             what="the workers' figures in the daemon's")
    assert figures["subscribers"] == 2 and figures["events_in"] == 3 and figures["history"] == 3
    for client in (first, second):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_subscriber_resumes_on_another_worker(daemon, log_events) -> None:
    service = await daemon(CONFIG)
    await started(service)
    port = service.port_of("S")
    client = await subscriber_on(0, port, log_events)
    publish(service, 1, 2)
    await wait_for(lambda: numbers(client) == [1, 2], what="events 1 and 2")
    last_id = messages(bytes(client.received))[-1].id
    await client.close()
    publish(service, 3, 4)  # while it is away
    again = await subscriber_on(1, port, log_events, headers=f"Last-Event-ID: {last_id}\r\n")
    await wait_for(lambda: numbers(again) == [3, 4], what="the replay from the other worker's history")
    assert all(m.event == "message" for m in messages(bytes(again.received))), "an exact resume: no reset event"
    publish(service, 5)
    await wait_for(lambda: numbers(again) == [3, 4, 5], what="live events after the replay")
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_replaced_and_its_subscribers_resume(daemon, log_events) -> None:
    service = await daemon(CONFIG)
    pool = service.sinks["S"]
    old_pid = (await started(service))[0]
    port = service.port_of("S")
    client = await subscriber_on(0, port, log_events)
    publish(service, 1, 2)
    await wait_for(lambda: numbers(client) == [1, 2], what="events 1 and 2")
    last_id = messages(bytes(client.received))[-1].id
    os.kill(old_pid, signal.SIGKILL)
    await wait_for(lambda: client.is_closed, what="the killed worker's subscriber to be cut")
    publish(service, 3)  # the daemon keeps it for the worker that is not there yet
    await wait_for(lambda: pool.workers[0] is not None and pool.workers[0].pid != old_pid and pool.workers[0].figures,
                   what="a new worker 0")
    assert pool.sink.counters["worker_restarts"] == 1
    assert any(e.get("log_level") is not None and e["log_level"].name == "warn" and f"pid {old_pid} ended" in e.get("why", "")
               for e in log_events), "the end of the worker is logged as a warning"
    again = await subscriber_on(0, port, log_events, headers=f"Last-Event-ID: {last_id}\r\n")
    await wait_for(lambda: numbers(again) == [3], what="the event published while worker 0 was down")
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_worker_that_stops_reading_is_killed_at_its_bound_and_replaced(daemon, log_events) -> None:
    """The daemon does not hold events without limit for a worker that does not read its pipe,
    and a burst alone (a full pipe that a reading worker would drain) kills nobody."""
    service = await daemon(CONFIG.replace('schema: "n int"', 'schema: "n int, pad string"')
                           .replace("history.size: 100", "history.size: 100, subscriber.queue.bytes: 262144"))
    pool = service.sinks["S"]
    stuck_pid = (await started(service))[1]
    stuck = pool.workers[1]
    pool.stall_seconds = 0.3
    os.kill(stuck_pid, signal.SIGSTOP)  # alive, but reads nothing
    try:
        pad = "x" * 16384
        for n in range(100):  # bounded: 1.6 MiB; the pipe buffers pause it after ~64 KiB, the bound is 256 KiB
            service.bus.publish("S", [Event({"n": n, "pad": pad})])
            pool.feed.flush()
            if stuck.behind > 262144:
                break
        assert stuck.paused and stuck.behind > 262144 and not stuck.ended.called, "a burst alone kills nobody"
        await wait_for(lambda: pool.clock.seconds() - stuck.paused_at > 0.3, what="the stall time to pass")
        for n in (100, 101, 102):  # the kill is sent at the first; those before its end neither kill nor log again
            service.bus.publish("S", [Event({"n": n, "pad": pad})])
            pool.feed.flush()
        await wait_for(lambda: stuck.ended.called, what="the stuck worker to be killed")
        assert pool.sink.counters["worker_kills_behind"] == 1
        assert len([e for e in log_events if "bytes behind: killed" in e.get("log_format", "")]) == 1
        await wait_for(lambda: pool.workers[1] is not None and pool.workers[1].figures, what="a new worker 1")
        assert pool.workers[1].pid != stuck_pid and pool.workers[0] is not None and pool.workers[0].pid != stuck_pid
    finally:
        if not stuck.ended.called:
            os.kill(stuck_pid, signal.SIGCONT)


@pytest_twisted.ensureDeferred
async def test_stopping_the_daemon_drains_and_ends_every_worker(daemon, log_events) -> None:
    service = await daemon(CONFIG)
    pool = service.sinks["S"]
    await started(service)
    client = await subscribe(service.port_of("S"))
    workers = list(pool.workers)
    assert pool.readiness() == "ok"
    await service.stopService()
    assert all(w.ended.called for w in workers) and not pool.sockets
    assert pool.readiness() == "0 of 2 worker processes serving"
    await wait_for(lambda: client.is_closed, what="the subscriber to be closed")
    assert b"retry:" in client.received.rpartition(b"stream open")[2], "closed by the drain, with a retry hint"
    assert pool.sink.counters["worker_restarts"] == 0, "a stop is not a crash"


@pytest.mark.reactor_free
@pytest.mark.parametrize(("extra", "ingest_port", "message"), [
    ("worker.count: 65", 9999, "expected an integer from 1 to 64"),
    ("worker.count: 2", 8000, "worker.count above 1 needs port 8000 to itself, and source 'In'"),
    ("worker.count: 2, server.endpoint: 'tcp:9998'", 9999, "serves plain TCP on server.host and server.port"),
])
def test_worker_count_config_errors(extra: str, ingest_port: int, message: str) -> None:
    text = (f"sources:\n  In: {{type: http, stream: S, schema: 'n int', receiver.url: 'http://127.0.0.1:{ingest_port}/publish'}}\n"
            f"sinks:\n  S: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 8000, {extra}}}\n")
    with pytest.raises(ConfigError) as raised:
        validate(load_yaml(text, "w.yaml"))
    assert message in str(raised.value)


@pytest.mark.reactor_free
def test_check_names_the_worker_processes() -> None:
    text = CONFIG.replace("server.port: 0, server.path", "server.port: 8000, server.path")
    assert "  S: sse-server on 127.0.0.1:8000/events <- stream S (2 worker processes)" in validate(load_yaml(text, "w.yaml")).summary()


@pytest_twisted.ensureDeferred
async def test_a_port_in_use_is_refused_even_with_so_reuseport(daemon) -> None:
    """SO_REUSEPORT would let the workers quietly share a port another process serves: refused first."""
    import socket

    from sse_daemon.edge.listener import BindError

    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    try:
        port = other.getsockname()[1]
        with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{port} for sink 'S': Address already in use"):
            await daemon(CONFIG.replace("server.port: 0", f"server.port: {port}"))
    finally:
        other.close()


@pytest.mark.reactor_free
def test_each_worker_gets_a_socket_of_its_own_on_one_port() -> None:
    from sse_daemon.workers.pool import listening_sockets

    sockets = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(sockets) == 3 and len(ports) == 1 and len({s.fileno() for s in sockets}) == 3
    finally:
        for s in sockets:
            s.close()


@pytest_twisted.ensureDeferred
async def test_password_checks_on_worker_processes(daemon, tmp_path) -> None:
    """Each worker checks passwords on threads of its own (passwords.py), off its reactor."""
    users = tmp_path / "users"
    users.write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    service = await daemon(CONFIG.replace("drain.window: 0.2}", f"drain.window: 0.2, auth.type: basic, auth.users.file: {users}}}"))
    await started(service)
    port = service.port_of("S")
    right = "Authorization: Basic " + base64.b64encode(b"alice:secret").decode() + "\r\n"
    wrong = "Authorization: Basic " + base64.b64encode(b"alice:nope").decode() + "\r\n"
    for _ in range(4):  # lands on either worker
        client = await subscribe(port, headers=right)
        await client.close()
        refused = await _request(port, wrong)
        assert refused.startswith(b"HTTP/1.1 401"), refused


async def _request(port: int, headers: str) -> bytes:
    client = await raw_request(port, f"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
    await deadline(client.closed)
    return bytes(client.received)


@pytest.mark.parametrize("change", ["deleted", "rewritten"])
@pytest_twisted.ensureDeferred
async def test_a_restarted_worker_checks_the_credentials_its_siblings_check(daemon, tmp_path, log_events, change) -> None:
    """A worker started again after the users file changed (a reload cannot change such a sink) checks what the
    daemon read at its start, as its siblings do: it serves, and lets in whom they let in."""
    users = tmp_path / "users"
    users.write_text(f"alice:{bcrypt.hashpw(b'secret', bcrypt.gensalt(rounds=4)).decode()}\n")
    service = await daemon(CONFIG.replace("drain.window: 0.2}", f"drain.window: 0.2, auth.type: basic, auth.users.file: {users}}}"))
    pool = service.sinks["S"]
    old_pid = (await started(service))[0]
    if change == "deleted":
        users.unlink()
    else:
        users.write_text(f"bob:{bcrypt.hashpw(b'other', bcrypt.gensalt(rounds=4)).decode()}\n")
    os.kill(old_pid, signal.SIGKILL)
    await wait_for(lambda: pool.workers[0] is not None and pool.workers[0].pid != old_pid and pool.workers[0].figures,
                   timeout=10, what="a new worker 0 serving")
    alice = "Authorization: Basic " + base64.b64encode(b"alice:secret").decode() + "\r\n"
    client = await subscriber_on(0, service.port_of("S"), log_events, headers=alice)
    assert bytes(client.received).startswith(b"HTTP/1.1 200"), bytes(client.received)[:200]
    await client.close()


@pytest.mark.reactor_free
def test_a_worker_that_cannot_follow_its_set_up_exits_to_be_started_again(log_events) -> None:
    """A set-up message it cannot handle leaves a worker that would never serve, while connections the kernel hands
    its socket wait unanswered: it ends (exit status 1), so the daemon starts it again and says so."""
    from twisted.internet.testing import MemoryReactorClock

    from sse_daemon.worker import Worker
    from sse_daemon.workers import channel

    reactor = MemoryReactorClock()
    worker = Worker(reactor)
    # as from a daemon of another version; the history that follows is not handled (one traceback, not one each)
    worker.dataReceived(channel._message(channel.SETUP + b"not a pickle") + channel.history("1", b"data: x\n\n", 0.0) * 3)
    assert reactor.hasStopped and worker.exit_status == 1
    assert len([e for e in log_events if "could not handle" in e.get("log_format", "")]) == 1


@pytest.mark.reactor_free
def test_live_events_a_worker_fails_to_handle_are_logged_sampled_and_it_goes_on(log_events) -> None:
    """A bug met by every live event must not write a traceback each (the first ten, then every thousandth)."""
    from sse_daemon.workers import channel

    class Failing(channel.MessageReceiver):
        handled: list[bytes] = []

        def event(self, id_text: str | None, frame: bytes) -> None:
            if frame == b"bad":
                raise ValueError("a bug")
            self.handled.append(frame)

    receiver = Failing()
    receiver.dataReceived(channel.event("1", b"bad") * 1000 + channel.event("2", b"good"))
    assert receiver.event_failures == 1000 and receiver.handled == [b"good"] and not receiver.broken
    assert len([e for e in log_events if "could not handle an event" in e.get("log_format", "")]) == 11
