"""The Redis bus (issue 12, section 2): one bad publish hurts no one else, and resume never hangs.

Against a real redis-server: a payload Redis cannot take is its publisher's 400 and leaves the
connection up for everyone else; an entry that cannot be decoded (``1e400`` stored by an older
version) is skipped on replay and on live reads; a resuming client gets its head within
``BUS_REPLAY_TIMEOUT`` even when Redis does not answer, with a reset event.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.events.schema import Event

from .conftest import deadline, raw_request, sleep, subscribe, wait_for
from .redis_server import redis_server  # noqa: F401  (the fixture)
from .test_redisbus import instance, post_body
from .test_resume import head, parsed

CONFIG = """\
bus:
  type: redis
  url: {url}
  key.prefix: "{prefix}"
  reconnect.max.delay: 0.3
sources:
  In: {{type: http, schema: "n int, s string", stream: S, receiver.url: "http://127.0.0.1:0/in"}}
sinks:
  Out: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, retry.max: 0}}
"""


def config(redis_server) -> tuple[str, str]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return CONFIG.format(url=redis_server.url, prefix=prefix), prefix


def numbers(raw: bytes) -> list[int]:
    return [json.loads(m.data)["event"]["n"] for m in parsed(raw) if m.event == "message"]


@pytest_twisted.ensureDeferred
async def test_a_body_redis_cannot_take_is_its_publishers_400_and_no_one_elses_503(daemon, redis_server) -> None:
    """Seen: a lone surrogate made the Redis client refuse to encode; the bus took it for a dead
    connection and reconnected, and every other publisher got 503 meanwhile."""
    text, _ = config(redis_server)
    a = await instance(daemon, text)
    port = a.port_of("In")
    watcher = await subscribe(a.port_of("Out"), "/events")
    answers = []
    for n in range(10):
        answers.append(await post_body(port, b'{"n": %d, "s": "bad \\ud800"}' % n))
        answers.append(await post_body(port, b'{"n": %d, "s": "good"}' % n))
    bad, good = answers[0::2], answers[1::2]
    assert [code for code, _ in good] == [200] * 10, "honest publishers never see 503"
    assert {code for code, _ in bad} == {400} and {json.loads(body)["reason"] for _, body in bad} == {"invalid-unicode"}
    await wait_for(lambda: numbers(bytes(watcher.received)) == list(range(10)), what="the good events")
    assert a.bus.counters["reconnects"] == 0 and a.bus.state == "up"
    await watcher.close()


@pytest_twisted.ensureDeferred
async def test_the_bus_refuses_an_unencodable_batch_without_dropping_its_connection(daemon, redis_server) -> None:
    """Behind validation, the bus itself: an encoding problem is not a connection failure."""
    text, prefix = config(redis_server)
    a = await instance(daemon, text)
    watcher = await subscribe(a.port_of("Out"), "/events")
    bad = [Event({"n": 1, "s": "ok"}), Event({"n": 2, "s": "\udc00"})]
    refused = a.bus.publish("S", bad)
    honest = [a.bus.publish("S", [Event({"n": n, "s": "ok"})]) for n in (3, 4)]
    error = await deadline(refused.addCallbacks(lambda _: None, lambda f: f.value))
    assert type(error).__name__ == "InvalidValue" and error.reason == "invalid-unicode", repr(error)  # not BusUnavailable
    assert str(error).startswith("element 1: attribute 's'")
    results = await deadline(DeferredList(honest, consumeErrors=True))
    assert all(ok for ok, _ in results), results
    await wait_for(lambda: numbers(bytes(watcher.received)) == [3, 4], what="the honest events")
    assert a.bus.counters["reconnects"] == 0 and a.bus.state == "up"
    length = subprocess.run(["/usr/bin/redis-cli", "-p", str(redis_server.port), "XLEN", prefix + "S"],
                            check=True, capture_output=True, timeout=10).stdout.strip()
    assert length == b"2", "nothing of the refused batch reached Redis"
    await watcher.close()


async def add_raw_entry(bus, key: str, value: str) -> str:
    """An entry written around the daemon's checks, as an older version wrote ``1e400`` (``Infinity``)."""
    return str(await deadline(bus.command("XADD", key, "*", "v", value, "g", "0")))


@pytest_twisted.ensureDeferred
async def test_an_entry_that_cannot_be_decoded_is_skipped_and_a_resuming_client_gets_its_head(daemon, redis_server, log_events) -> None:
    """Seen: ``1e400`` in an object stored in Redis; a client resuming from before it never got a response head."""
    text, prefix = config(redis_server)
    text += "admin:\n  port: 0\n"
    a = await instance(daemon, text)
    live = await subscribe(a.port_of("Out"), "/events")
    assert (await post_body(a.port_of("In"), b'{"n": 1, "s": "x"}'))[0] == 200
    await wait_for(lambda: numbers(bytes(live.received)) == [1], what="event 1")
    first = parsed(bytes(live.received))[-1].id
    # what older versions stored for 1e400 (json.dumps writes Infinity), a literal 1e400, a lone surrogate
    for value in ('{"n":2,"s":Infinity}', '{"n":3,"s":1e400}', '{"n":4,"s":"\\ud800"}'):
        await add_raw_entry(a.bus, prefix + "S", value)
    assert (await post_body(a.port_of("In"), b'{"n": 5, "s": "y"}'))[0] == 200
    await wait_for(lambda: numbers(bytes(live.received)) == [1, 5], what="event 5, past the bad entries")
    b = await instance(daemon, text)  # its history holds none of it: it asks Redis
    started = reactor.seconds()
    client = await raw_request(b.port_of("Out"), f"GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {first}\r\n\r\n".encode())
    await client.wait_for(b"\r\n\r\n", timeout=10)
    assert reactor.seconds() - started < 5, "the head within the bus replay deadline"
    await wait_for(lambda: numbers(bytes(client.received)) == [5], what="the replay, past the bad entries")
    assert head(bytes(client.received))["sse-replay-from"] == first, "nothing deliverable was lost: an exact resume"
    assert a.bus.counters["entries_skipped"] == 3, "skipped on the live read, counted"
    assert b.bus.counters["entries_skipped"] == 3 and b.sinks["Out"].sink.counters["resume_exact"] == 1
    metrics = generate_latest(b.admin.registry).decode()
    assert "sse_daemon_bus_entries_skipped_total 3.0" in metrics and "sse_daemon_bus_events_invalid_total 0.0" in metrics
    assert not [e for e in log_events if e.get("log_failure") is not None]
    await client.close()
    await live.close()


@pytest.mark.reactor_free
def test_a_replay_skips_each_entry_it_cannot_decode_and_the_verdict_stands() -> None:
    from sse_daemon.bus.redis import event_fields, replay_verdict

    good = lambda n: event_fields(Event({"n": n, "s": "x"}))  # noqa: E731
    junk = [("10-2", ["v", '{"n":2,"s":Infinity}', "g", "0"]), ("10-3", ["v", "[" * 5000 + "]" * 5000]),
            ("10-4", ["v", "not json"]), ("10-5", ["other", "x"]), ("10-6", ["v", b"\xff"]), ("10-7", "no fields")]
    newest_first = [("10-8", good(8)), *reversed(junk), ("10-1", good(1))]
    info = ["last-generated-id", "10-8", "max-deleted-entry-id", "0-0", "first-entry", ["10-1", []]]
    replay = replay_verdict("10-0", newest_first, 100, info)
    assert [e.values["n"] for e in replay.events] == [1, 8] and replay.reset is None and replay.after == "10-0"
    assert [entry_id for entry_id, _ in replay.skipped] == ["10-2", "10-3", "10-4", "10-5", "10-6", "10-7"]
    truncated = replay_verdict("10-0", newest_first, 3, info)  # the three newest are all skipped or kept: 10-6, 10-7, 10-8
    assert [e.values["n"] for e in truncated.events] == [8] and (truncated.reset, truncated.after) == ("too-old", "10-5")


@pytest_twisted.ensureDeferred
async def test_a_resume_redis_does_not_answer_gets_its_head_in_time_with_a_reset(daemon, redis_server, monkeypatch) -> None:
    """Whatever Redis does, a resuming client gets its head within BUS_REPLAY_TIMEOUT: from local
    history, with a reset event (that history does not cover its id)."""
    import sse_daemon.connectors.sink.replay as sink_module

    monkeypatch.setattr(sink_module, "BUS_REPLAY_TIMEOUT", 0.3, raising=False)
    text, _ = config(redis_server)
    a = await instance(daemon, text)
    live = await subscribe(a.port_of("Out"), "/events")
    for n in (1, 2):
        assert (await post_body(a.port_of("In"), b'{"n": %d, "s": "x"}' % n))[0] == 200
    await wait_for(lambda: numbers(bytes(live.received)) == [1, 2], what="events 1 and 2")
    first = parsed(bytes(live.received))[0].id
    b = await instance(daemon, text)
    subprocess.run(["/usr/bin/redis-cli", "-p", str(redis_server.port), "CLIENT", "PAUSE", "2000", "ALL"],
                   check=True, capture_output=True, timeout=10)
    started = reactor.seconds()
    client = await raw_request(b.port_of("Out"), f"GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {first}\r\n\r\n".encode())
    await client.wait_for(b"\nevent: reset\n", timeout=10)
    waited = reactor.seconds() - started
    assert waited < 1.5, f"the head came after {waited:.2f}s, while Redis was paused for 2 s"
    await wait_for(lambda: any(m.event == "reset" for m in parsed(bytes(client.received))), what="the whole reset event")
    reset = next(m for m in parsed(bytes(client.received)) if m.event == "reset")
    assert json.loads(reset.data)["reason"] == "unknown" and json.loads(reset.data)["requested"] == first
    assert b.sinks["Out"].sink.counters["bus_replays_failed"] == 1
    assert (await post_body(b.port_of("In"), b'{"n": 3, "s": "x"}'))[0] == 200, "the bus answers again once Redis does"
    await client.wait_for(b'"n":3', timeout=10)
    await client.close()
    await live.close()



async def until_taken(bus, command, timeout: float = 10.0) -> object:
    """Send ``command()`` again until Redis takes it; fails the test after ``timeout``."""
    end = reactor.seconds() + timeout
    while True:
        try:
            return await deadline(command())
        except Exception as e:
            if reactor.seconds() > end:
                raise AssertionError(f"still refused after {timeout}s: {e}") from None
        await sleep(0.05)


def fail_over(address, old, new) -> None:
    """The address leads to ``new`` from now on, and ``old`` becomes its replica (what Sentinel does)."""
    address.port = new.port
    subprocess.run(["/usr/bin/redis-cli", "-p", str(new.port), "REPLICAOF", "NO", "ONE"], check=True, capture_output=True, timeout=10)
    subprocess.run(["/usr/bin/redis-cli", "-p", str(old.port), "REPLICAOF", "127.0.0.1", str(new.port)],
                   check=True, capture_output=True, timeout=10)


@pytest_twisted.ensureDeferred
async def test_a_primary_turned_replica_behind_one_address_is_left_for_the_new_primary(redis_server, tmp_path) -> None:
    """Seen: after a fail-over behind one address (Sentinel, a proxy, a DNS name) the old primary, now a
    replica, answered every write READONLY on the connection the bus kept: the bus stayed up, every
    publish and lease command was refused for good, and /readyz said ok. Here a proxy is the address."""
    from twisted.protocols.portforward import ProxyFactory

    from .redis_server import RedisServer
    from .test_lease import started_bus

    (tmp_path / "new").mkdir()
    new = RedisServer(tmp_path / "new")
    new.start()
    address = ProxyFactory("127.0.0.1", redis_server.port)
    proxy = reactor.listenTCP(0, address, interface="127.0.0.1")
    bus = await started_bus(f"redis://127.0.0.1:{proxy.getHost().port}/0")
    try:
        await deadline(bus.publish("S", [Event({"n": 1})]))
        fail_over(address, redis_server, new)
        refused = await deadline(bus.publish("S", [Event({"n": 2})]).addCallbacks(lambda _: None, lambda f: f.value))
        assert "READONLY" in str(refused), repr(refused)
        await until_taken(bus, lambda: bus.publish("S", [Event({"n": 3})]))
        assert bus.counters["reconnects"] == 1
        fail_over(address, new, redis_server)  # and back: this time only a lease's command meets the replica
        await until_taken(bus, lambda: bus.command("SET", "lease-like", "x"))
        assert bus.counters["reconnects"] == 2
    finally:
        await deadline(bus.stopService())
        await proxy.stopListening()
        new.stop()


@pytest_twisted.ensureDeferred
async def test_an_address_that_leads_to_a_replica_is_not_up_until_it_leads_to_a_primary(redis_server, tmp_path) -> None:
    """Pointed at a replica, the bus was up and refused every publish READONLY, reconnecting after each with a
    down and an up line: it now stays down saying why, backing off, and is up once the server is a primary."""
    from sse_daemon.bus.redis import RedisBus

    from .redis_server import RedisServer

    (tmp_path / "replica").mkdir()
    replica = RedisServer(tmp_path / "replica")
    replica.start()
    try:
        subprocess.run(["/usr/bin/redis-cli", "-p", str(replica.port), "REPLICAOF", "127.0.0.1", str(redis_server.port)],
                       check=True, capture_output=True, timeout=10)
        config = validate(load_yaml(f"""\
sinks:
  Out: {{type: log, schema: "n int"}}
bus: {{type: redis, url: "redis://127.0.0.1:{replica.port}/0", reconnect.max.delay: 0.3}}
"""))
        bus = RedisBus(config.bus, reactor)
        bus.startService()
        try:
            await wait_for(lambda: bus.counters["reconnects"] >= 3, what="attempts at the replica")
            assert bus.state != "up" and "leads to a replica" in bus.reason, (bus.state, bus.reason)
            refused = await deadline(bus.publish("S", [Event({"n": 1})]).addCallbacks(lambda _: None, lambda f: f.value))
            assert refused is not None and "leads to a replica" in str(refused), "refused at once, saying why"
            subprocess.run(["/usr/bin/redis-cli", "-p", str(replica.port), "REPLICAOF", "NO", "ONE"],
                           check=True, capture_output=True, timeout=10)
            await wait_for(lambda: bus.state == "up", what="the bus up once the server is a primary")
            await deadline(bus.publish("S", [Event({"n": 2})]))
        finally:
            await deadline(bus.stopService())
    finally:
        replica.stop()
