"""The bus on Redis Streams: the pure parts, the ``bus:`` section, and daemons sharing a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from sse_daemon.bus.memory import IBus, MemoryBus
from sse_daemon.config.errors import ConfigError
from sse_daemon.config.options import BUS_OPTIONS
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.bus.redis import (
    BusReplay,
    RedisBus,
    backoff,
    entry_key,
    event_fields,
    event_from_entry,
    exec_ids,
    key_below,
    replay_verdict,
    show_key,
)
from sse_daemon.events.schema import Event

from .conftest import deadline, raw_request, subscribe, wait_for
from .redis_server import redis_server  # noqa: F401  (the fixture)
from .test_resume import head, parsed

# --------------------------------------------------------------------------- pure parts


@pytest.mark.reactor_free
def test_entry_ids_order_like_redis_and_round_trip() -> None:
    ids = ["5-0", "5-1", "5-10", "6-0", "1700000000000-2"]
    assert sorted(ids, key=entry_key) == ids
    assert [show_key(entry_key(i)) for i in ids] == ids
    assert entry_key("7") == (7, 0)
    assert key_below((5, 1)) == (5, 0) and key_below((5, 0)) == (4, 2**64 - 1)
    for bad in ("", "x", "1-", "-1", "1-2-3", "1.5"):
        with pytest.raises(ValueError):
            entry_key(bad)


@pytest.mark.reactor_free
def test_event_fields_round_trip() -> None:
    event = Event({"n": 1, "s": "é", "o": {"a": [1, None]}}, id="up-7", type="tick", ingress=12.5)
    back = event_from_entry("9-0", event_fields(event))
    assert (back, back.bus_id, back.ingress) == (event, "9-0", 12.5)
    with pytest.raises(ValueError):
        event_from_entry("9-1", ["other", "field"])


@pytest.mark.reactor_free
def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(a, 1.0) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff(10_000, 5.0) == 5.0


@pytest.mark.reactor_free
def test_exec_ids_take_the_xadd_replies_or_refuse() -> None:
    assert exec_ids(["1-0", "1-1", 0], 2) == ["1-0", "1-1"]
    for bad in (None, ["1-0"], ["1-0", ValueError("WRONGTYPE")]):
        with pytest.raises(ValueError):
            exec_ids(bad, 2)


def _entry(entry_id: str, n: int) -> list:
    return [entry_id, event_fields(Event({"n": n}))]


INFO = ["length", 3, "last-generated-id", "10-2", "max-deleted-entry-id", "10-0", "first-entry", ["10-1", []]]


@pytest.mark.reactor_free
def test_replay_verdict_exact_trimmed_unknown_and_unparseable() -> None:
    newest_first = [_entry("10-2", 2), _entry("10-1", 1)]
    exact = replay_verdict("10-0", newest_first, 10, INFO)
    assert ([e.bus_id for e in exact.events], exact.reset, exact.after, exact.oldest) == (["10-1", "10-2"], None, "10-0", "10-1")
    too_old = replay_verdict("9-5", newest_first, 10, INFO)  # 10-0 was trimmed after the client's id
    assert (too_old.reset, too_old.after) == ("too-old", "10-0")
    truncated = replay_verdict("10-0", newest_first, 1, INFO)  # more than the limit follows
    assert ([e.bus_id for e in truncated.events], truncated.reset, truncated.after) == (["10-2"], "too-old", "10-1")
    unknown = replay_verdict("11-0", [], 10, INFO)
    assert (unknown.events, unknown.reset, unknown.after) == ((), "unknown", "10-2")
    assert replay_verdict(None, newest_first, 10, INFO).reset == "unparseable"
    assert replay_verdict("0-0", [], 10, None) == BusReplay((), None, "0-0", None)


# --------------------------------------------------------------------------- the bus: section

BASE = """\
sources:
  In: {type: http, schema: "n int", stream: S, receiver.url: "http://127.0.0.1:0/in"}
sinks:
  Out: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events}
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(load_yaml(textwrap.dedent(text), "conf.yaml"))
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.reactor_free
def test_bus_section_defaults_and_values() -> None:
    assert validate(load_yaml(BASE)).bus.type == "memory"
    config = validate(load_yaml(BASE + "bus: {type: redis, url: 'redis://:pw@10.0.0.1:7000/3', key.prefix: 'x:', history.size: 50, history.max.age: 60}\n"))
    url = config.bus.options.url
    assert (config.bus.type, url.host, url.port, url.db, url.password) == ("redis", "10.0.0.1", 7000, 3, "pw")
    assert (config.bus.options.key_prefix, config.bus.options.history_size, config.bus.options.history_max_age) == ("x:", 50, 60.0)
    assert "pw" not in str(url) and "pw" not in repr(url) and "bus: redis redis://10.0.0.1:7000/3" in config.summary()
    assert {o.name for o in BUS_OPTIONS} == {"type", "url", "key.prefix", "history.size", "history.max.age", "reconnect.max.delay", "fanout.max.lag", "source.lease.ttl"}
    assert config.bus.options.fanout_max_lag == 2.0, "bounded by default"


@pytest.mark.reactor_free
def test_bus_section_errors_name_file_line_and_option() -> None:
    errors = _errors(BASE + "bus:\n  type: redis\n  url: http://x\n  histroy.size: 5\n")
    assert any(e.startswith("conf.yaml:7: bus: option 'url': expected a URL such as redis://") for e in errors), errors
    assert any(e.startswith("conf.yaml:8: bus: ") and "did you mean 'history.size'" in e for e in errors), errors
    errors = _errors(BASE + "bus: {url: 'redis://h'}\n")
    assert any("'url' applies only with 'type: redis'" in e for e in errors), errors
    errors = _errors(BASE + "bus: {type: kafka}\n")
    assert any("expected one of memory, redis" in e for e in errors), errors


@pytest.mark.reactor_free
def test_redis_bus_refuses_what_would_duplicate_events() -> None:
    errors = _errors(BASE + """\
  Narrow: {type: sse-server, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: narrow}
routes:
  - {from: S, to: Narrow}
bus: {type: redis}
""")
    assert any("routes cannot run with 'bus: {type: redis}' yet" in e for e in errors), errors
    leased = validate(load_yaml("""\
sources:
  Up: {type: sse, schema: "n int", stream: S, receiver.url: "http://127.0.0.1:9/up"}
sinks:
  Out: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0}
bus: {type: redis, source.lease.ttl: 3}
"""))
    assert leased.bus.options.source_lease_ttl == 3.0  # SSE sources run under a lease (test_lease.py)


@pytest.mark.reactor_free
def test_without_a_bus_section_nothing_needs_redis(tmp_path) -> None:
    """The memory bus is the default and does not import a Redis client (a fresh interpreter checks)."""
    (tmp_path / "c.yaml").write_text(BASE)
    code = textwrap.dedent(f"""
        import sys
        from sse_daemon.config.load import load_files
        from sse_daemon.daemon.service import build_service
        from sse_daemon.bus.memory import MemoryBus
        service = build_service(load_files([{str(tmp_path / 'c.yaml')!r}]))
        assert type(service.bus) is MemoryBus, service.bus
        assert "txredisapi" not in sys.modules and "sse_daemon.bus.redis" not in sys.modules
        print("memory")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "memory", result.stderr


@pytest.mark.reactor_free
def test_redis_bus_provides_ibus() -> None:
    config = validate(load_yaml(BASE + "bus: {type: redis}\n"))
    verifyObject(IBus, RedisBus(config.bus, reactor))
    verifyObject(IBus, MemoryBus())


@pytest.mark.reactor_free
def test_the_ingest_is_held_back_by_time_or_by_what_redis_would_trim_unread() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    bus = RedisBus(validate(load_yaml(BASE + "bus: {type: redis, history.size: 1000, fanout.max.lag: 2}\n")).bus, clock)
    bus.lags.accepted("S", entry_key("5-0"), clock.seconds(), 600)
    assert bus.behind("S", 400) is None, "600 waiting and 400 coming: what the stream keeps, at once: within both bounds"
    assert bus.behind("S", 401) == 0.0, "one more would be trimmed before it was read back, however young"
    clock.advance(0.1)  # a mark of its own
    bus.lags.accepted("S", entry_key("6-0"), clock.seconds(), 200)
    bus.lags.delivered("S", entry_key("5-0"))
    assert bus.behind("S", 800) is None and bus.behind("S", 801) == pytest.approx(0.0)
    clock.advance(2.5)
    assert bus.behind("S") == pytest.approx(2.5), "200 waiting for 2.5 s: past fanout.max.lag"
    off = RedisBus(validate(load_yaml(BASE + "bus: {type: redis, fanout.max.lag: 0}\n")).bus, clock)
    off.lags.accepted("S", entry_key("5-0"), clock.seconds(), 10_000)
    clock.advance(60)
    assert off.behind("S", 10_000) is None, "0 turns both bounds off"


def test_read_gaps_count_what_was_added_but_never_read_once_the_reader_has_caught_up() -> None:
    from sse_daemon.bus.readgaps import ReadGaps

    gaps = ReadGaps()
    gaps.read("S", 5)
    assert gaps.check("S", "9-0", "10-0", 40) == 0 and not gaps.knows("S"), "behind: nothing can be told yet"
    assert gaps.check("S", "10-0", "10-0", None) == 0 and not gaps.knows("S"), "a Redis without entries-added: never"
    assert gaps.check("S", "10-0", "10-0", 40) == 0 and gaps.knows("S"), "caught up: from here on"
    gaps.read("S", 3)
    assert gaps.check("S", "12-0", "12-0", 43) == 0, "all three added were read"
    gaps.read("S", 100)
    assert gaps.check("S", "15-0", "20-0", 1043) == 0, "behind again: told later"
    gaps.read("S", 10)
    assert gaps.check("S", "20-0", "20-0", 1043) == 1043 - 43 - 110, "890 added that this reader never got"
    assert gaps.check("S", "20-0", "20-0", 1043) == 0, "each loss counted once"
    gaps.forget("S")
    gaps.read("S", 7)
    assert gaps.check("S", "30-0", "30-0", 2000) == 0, "not read meanwhile: nobody's loss"


# --------------------------------------------------------------------------- daemons sharing a real Redis

SHARED = """\
bus:
  type: redis
  url: {url}
  key.prefix: "{prefix}"
  reconnect.max.delay: 0.3
sources:
  In: {{type: http, schema: "n int", stream: S, receiver.url: "http://127.0.0.1:0/in"}}
sinks:
  Out: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, retry.max: 0, heartbeat.interval: {heartbeat}}}
"""


def shared_config(redis_server, heartbeat: float = 15.0) -> str:
    return SHARED.format(url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", heartbeat=heartbeat)


async def instance(daemon, text: str):
    """A daemon on the shared bus, once it reads every stream: from then on it misses nothing."""
    service = await daemon(text)
    await wait_for(lambda: service.bus.placed, what="the bus connected and placed")
    return service


async def two_daemons(daemon, redis_server, heartbeat: float = 15.0):
    text = shared_config(redis_server, heartbeat)
    return await instance(daemon, text), await instance(daemon, text)


async def post(port: int, n: int) -> tuple[int, bytes]:
    return await post_body(port, b'{"n": %d}' % n)


async def post_body(port: int, data: bytes) -> tuple[int, bytes]:
    client = await raw_request(port, b"POST /in HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    await deadline(client.closed)
    raw = bytes(client.received)
    return int(raw.split(b" ", 2)[1]), raw.partition(b"\r\n\r\n")[2]


def ids_and_numbers(raw: bytes) -> list[tuple[str, int]]:
    return [(m.id, json.loads(m.data)["event"]["n"]) for m in parsed(raw) if m.event == "message"]


@pytest_twisted.ensureDeferred
async def test_an_event_published_on_one_instance_reaches_the_other_with_the_same_id(daemon, redis_server) -> None:
    a, b = await two_daemons(daemon, redis_server)
    on_a = await subscribe(a.port_of("Out"), "/events")
    on_b = await subscribe(b.port_of("Out"), "/events")
    assert (await post(a.port_of("In"), 1))[0] == 200
    assert (await post(b.port_of("In"), 2))[0] == 200
    await on_a.wait_for(b'"n":2')
    await on_b.wait_for(b'"n":2')
    seen_a, seen_b = ids_and_numbers(on_a.received), ids_and_numbers(on_b.received)
    assert seen_a == seen_b and [n for _, n in seen_a] == [1, 2]
    assert all(entry_key(i) for i, _ in seen_a), "the SSE id is the Redis entry id"
    await on_a.close()
    await on_b.close()


@pytest_twisted.ensureDeferred
async def test_a_body_of_several_events_is_one_transaction_in_order(daemon, redis_server) -> None:
    a, b = await two_daemons(daemon, redis_server)
    on_b = await subscribe(b.port_of("Out"), "/events")
    code, body = await post_body(a.port_of("In"), b'[{"n": 1}, {"n": 2}, {"n": 3}]')
    assert (code, json.loads(body)) == (200, {"accepted": 3})
    await on_b.wait_for(b'"n":3')
    seen = ids_and_numbers(on_b.received)
    assert [n for _, n in seen] == [1, 2, 3] and [entry_key(i) for i, _ in seen] == sorted(entry_key(i) for i, _ in seen)
    await on_b.close()


@pytest_twisted.ensureDeferred
async def test_a_subscriber_resumes_on_the_other_instance_without_loss_or_repeat(daemon, redis_server) -> None:
    text = shared_config(redis_server)
    a = await instance(daemon, text)
    on_a = await subscribe(a.port_of("Out"), "/events")
    for n in (1, 2, 3):
        assert (await post(a.port_of("In"), n))[0] == 200
    await on_a.wait_for(b'"n":3')
    seen = ids_and_numbers(on_a.received)
    await on_a.close()
    for n in (4, 5):  # missed while away
        assert (await post(a.port_of("In"), n))[0] == 200
    b = await instance(daemon, text)  # started after all that: its own history holds none of it
    again = await subscribe(b.port_of("Out"), "/events", f"Last-Event-ID: {seen[0][0]}\r\n")
    assert (await post(a.port_of("In"), 6))[0] == 200
    await again.wait_for(b'"n":6')
    assert [n for _, n in ids_and_numbers(again.received)] == [2, 3, 4, 5, 6]
    assert ids_and_numbers(again.received)[:2] == seen[1:], "the same ids on both instances"
    assert head(bytes(again.received))["sse-replay-from"] == seen[0][0]
    assert b.sinks["Out"].sink.counters["bus_replays"] == 1
    await again.close()


@pytest_twisted.ensureDeferred
async def test_live_events_during_the_bus_replay_are_delivered_once(daemon, redis_server) -> None:
    text = shared_config(redis_server)
    a = await instance(daemon, text)
    assert (await post(a.port_of("In"), 1))[0] == 200
    b = await instance(daemon, text)
    sink = b.sinks["Out"].sink
    real_replay = sink.bus_replay
    asked: list = []

    def slow_replay(after, limit):
        """Answer only once event 2 has reached the sink live, so both carry it."""
        asked.append(after)

        async def later():
            await wait_for(lambda: sink.counters["events_in"] >= 1, what="event 2 live on b")
            return await real_replay(after, limit)

        return Deferred.fromCoroutine(later())

    sink.bus_replay = slow_replay
    first = a.sinks["Out"].sink.history.newest
    client = await raw_request(b.port_of("Out"), f"GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {show_key(key_below(first))}\r\n\r\n".encode())
    await wait_for(lambda: asked, what="the replay request")
    assert (await post(a.port_of("In"), 2))[0] == 200
    await client.wait_for(b'"n":2')
    assert (await post(a.port_of("In"), 3))[0] == 200
    await client.wait_for(b'"n":3')
    assert [n for _, n in ids_and_numbers(client.received)] == [1, 2, 3]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_redis_restart_loses_nothing_acknowledged(daemon, redis_server) -> None:
    a, b = await two_daemons(daemon, redis_server, heartbeat=0.2)
    on_b = await subscribe(b.port_of("Out"), "/events")
    acknowledged, refused = [], []
    n = 0

    async def publish_some(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            code, body = await post(a.port_of("In"), n)
            if code == 200:
                acknowledged.append(n)
            else:
                assert code == 503 and json.loads(body)["reason"] == "bus-unavailable", body
                refused.append(n)

    await publish_some(5)
    redis_server.restart(keep=True)  # SAVE, kill, start on the same port: like a persistent Redis
    await publish_some(3)  # some of these may meet the bus while it is down: 503, never 200-and-dropped
    await wait_for(lambda: a.bus.state == "up" and b.bus.state == "up", what="both buses back")
    await publish_some(3)
    await on_b.wait_for(b'"n":%d}' % acknowledged[-1])  # delivered: this outage has no persistence to rely on
    redis_server.stop()
    await wait_for(lambda: a.bus.state != "up", what="bus a to notice Redis is gone")
    assert a.bus.readiness() != "ok"
    heartbeats = on_b.received.count(b": heartbeat")
    await publish_some(2)
    assert refused[-2:] == [n - 1, n], "with Redis down, ingest answers 503"
    await wait_for(lambda: on_b.received.count(b": heartbeat") > heartbeats, what="heartbeats while Redis is down")
    redis_server.start()
    await wait_for(lambda: a.bus.state == "up" and b.bus.state == "up", what="both buses back again")
    await publish_some(2)
    await on_b.wait_for(b'"n":%d}' % acknowledged[-1])
    assert [m for _, m in ids_and_numbers(on_b.received)] == acknowledged
    assert not on_b.is_closed
    await on_b.close()


async def get_json(port: int, path: str) -> tuple[int, dict]:
    client = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await deadline(client.closed)
    raw = bytes(client.received)
    body = raw.partition(b"\r\n\r\n")[2]
    if b"transfer-encoding: chunked" in raw.partition(b"\r\n\r\n")[0].lower():
        from .test_sink import _unchunk

        body = _unchunk(body)
    return int(raw.split(b" ", 2)[1]), json.loads(body)


@pytest_twisted.ensureDeferred
async def test_readyz_shows_the_bus_and_ingest_answers_503_while_redis_is_away(daemon, redis_server) -> None:
    a = await instance(daemon, shared_config(redis_server) + "admin: {port: 0}\n")
    admin = a.admin.port
    assert await get_json(admin, "/readyz") == (200, {"status": "ready", "ready": True, "not_ready": [],
                                                      "checks": {**a.admin.readiness(reactor.seconds())["checks"], "bus": "ok"}})
    redis_server.stop()
    await wait_for(lambda: a.bus.state != "up", what="the bus to notice")
    code, body = await get_json(admin, "/readyz")
    assert code == 503 and body["checks"]["bus"].startswith(f"redis redis://127.0.0.1:{redis_server.port}/0 "), body
    code, answer = await post(a.port_of("In"), 1)
    assert code == 503 and json.loads(answer)["reason"] == "bus-unavailable"
    assert a.sources["In"].counters["events_in"] == 0
    metrics = await raw_request(admin, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await deadline(metrics.closed)
    assert b"\nsse_daemon_bus_up 0.0\n" in metrics.received and b"\nsse_daemon_bus_events_refused_total 1.0\n" in metrics.received
    redis_server.start()
    await wait_for(lambda: a.bus.placed, what="the bus back")
    assert (await get_json(admin, "/readyz"))[0] == 200
    assert (await post(a.port_of("In"), 2))[0] == 200


@pytest_twisted.ensureDeferred
async def test_ingest_refuses_while_the_fanout_is_behind_and_takes_again_once_it_caught_up(daemon, redis_server) -> None:
    """Redis acknowledges faster than one process fans out: past ``fanout.max.lag`` of waiting, the
    instance's ingest answers 503 fanout-behind (Retry-After) instead of letting latency grow, and
    takes events again once its fan-out has caught up. The slow fan-out is a local subscriber that
    takes 0.2 ms of the reactor per event (a CPU-bound fan-out, as under overload)."""
    import time

    text = shared_config(redis_server).replace(  # history.size: Redis keeps every entry until it is read back
        "  reconnect.max.delay: 0.3\n", "  reconnect.max.delay: 0.3\n  fanout.max.lag: 0.2\n  history.size: 20000\n")
    a = await instance(daemon, text + "admin: {port: 0}\n")
    a.bus.subscribe("S", lambda events: time.sleep(0.0002 * len(events)))
    for _ in range(10):  # 10,000 events acknowledged at once: about 2 s of fan-out, read 1,000 at a time
        await deadline(a.bus.publish("S", [Event({"n": i}) for i in range(1000)]))
    await wait_for(lambda: a.bus.counters["events_delivered"] >= 1000, what="the first thousand read back")
    code, answer = await post(a.port_of("In"), 1)
    assert code == 503 and json.loads(answer)["reason"] == "fanout-behind", answer
    assert b"is " in answer and b"s behind" in answer
    assert a.sources["In"].rejected["fanout-behind"] == 1 and a.sources["In"].counters["events_in"] == 0
    metrics = await raw_request(a.admin.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await deadline(metrics.closed)
    assert b'sse_daemon_bus_fanout_lag_seconds{stream="S"}' in metrics.received
    assert b'sse_daemon_source_events_rejected_total{reason="fanout-behind",source="In"} 1.0' in metrics.received
    await wait_for(lambda: a.bus.fanout_lag("S") == 0.0, timeout=60, what="the fan-out to catch up")
    assert a.bus.counters["events_delivered"] >= 10000
    assert (await post(a.port_of("In"), 2))[0] == 200


@pytest_twisted.ensureDeferred
async def test_publishes_a_restarted_redis_lost_do_not_hold_the_ingest_back_for_good(daemon, redis_server) -> None:
    """Seen: Redis restarted without the entries this instance had published and not yet read back
    (no persistence, or the last second of appendfsync everysec). Their marks waited for entries that
    would never come, so once older than fanout.max.lag the ingest answered 503 fanout-behind for good:
    nothing it refused could reach Redis and move the reader past them. The slow fan-out is a local
    subscriber that takes 0.2 ms of the reactor per event, as in the test above."""
    import time

    text = shared_config(redis_server).replace(
        "  reconnect.max.delay: 0.3\n", "  reconnect.max.delay: 0.3\n  fanout.max.lag: 0.2\n  history.size: 20000\n")
    a = await instance(daemon, text)
    a.bus.subscribe("S", lambda events: time.sleep(0.0002 * len(events)))
    for _ in range(10):
        await deadline(a.bus.publish("S", [Event({"n": i}) for i in range(1000)]))
    await wait_for(lambda: a.bus.counters["events_delivered"] >= 1000, what="the first thousand read back")
    redis_server.restart(keep=False)  # the unread entries are gone with it
    await wait_for(lambda: a.bus.counters["reconnects"] > 0, what="the bus to notice")
    await wait_for(lambda: a.bus.placed, what="the bus back")
    assert a.bus.fanout_lag("S") == 0.0, "nothing this instance can still read back waits"
    code, answer = await post(a.port_of("In"), 1)
    assert code == 200, answer


@pytest_twisted.ensureDeferred
async def test_entries_redis_trimmed_before_an_instance_read_them_are_counted_and_logged(daemon, redis_server, log_events,
                                                                                        monkeypatch) -> None:
    """An instance that falls more than history.size behind loses what Redis trims before it reads it:
    XREAD says nothing, so the bus counts it from XINFO's entries-added once the reader has caught up
    (bus_entries_lost) and logs it. Here one transaction adds 1,000 entries to a stream kept at about 10."""
    from sse_daemon.bus import redis as redis_module

    monkeypatch.setattr(redis_module, "GAP_CHECK_INTERVAL", 0.05)
    text = shared_config(redis_server).replace("  reconnect.max.delay: 0.3\n", "  reconnect.max.delay: 0.3\n  history.size: 10\n")
    a = await instance(daemon, text + "admin: {port: 0}\n")
    await deadline(a.bus.publish("S", [Event({"n": 0})]))
    await wait_for(lambda: a.bus.gaps.knows("S"), what="the reader caught up and counting")
    delivered = a.bus.counters["events_delivered"]
    await deadline(a.bus.publish("S", [Event({"n": i}) for i in range(1, 1001)]))
    await wait_for(lambda: a.bus.counters["entries_lost"] > 0, what="the loss found")
    read = a.bus.counters["events_delivered"] - delivered
    assert 0 < read < 1000 and a.bus.counters["entries_lost"] == 1000 - read, (read, a.bus.counters["entries_lost"])
    assert any("Redis trimmed" in (e.get("log_format") or "") and e.get("lost") == 1000 - read for e in log_events)
    metrics = await raw_request(a.admin.port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await deadline(metrics.closed)
    assert b"sse_daemon_bus_entries_lost_total %d.0" % (1000 - read) in metrics.received
    await deadline(a.bus.publish("S", [Event({"n": 1001})]))
    await wait_for(lambda: a.bus.counters["events_delivered"] - delivered == read + 1, what="the next event")
    read_at = reactor.seconds()
    await wait_for(lambda: a.bus._gaps_checked > read_at, what="a check after it")
    started = a.bus._gaps_checked
    await wait_for(lambda: a.bus._gaps_checked > started, what="that check done (the next one started)")
    assert a.bus.counters["entries_lost"] == 1000 - read, "an event read is no loss"


@pytest_twisted.ensureDeferred
async def test_a_body_larger_than_what_a_stream_keeps_is_413_and_one_that_fits_reaches_everyone(daemon, redis_server) -> None:
    """Redis trims a stream to about history.size entries as the body's own XADDs go in: a larger body
    would lose its first events before anyone read them. It is refused whole (413, too-many-events);
    one of history.size events is taken and every event reaches the subscriber."""
    text = shared_config(redis_server).replace("  reconnect.max.delay: 0.3\n", "  reconnect.max.delay: 0.3\n  history.size: 50\n")
    a = await instance(daemon, text)
    live = await subscribe(a.port_of("Out"), "/events")
    code, answer = await post_body(a.port_of("In"), json.dumps([{"n": i} for i in range(51)]).encode())
    assert code == 413 and json.loads(answer)["reason"] == "too-many-events", answer
    code, answer = await post_body(a.port_of("In"), json.dumps([{"n": i} for i in range(50)]).encode())
    assert (code, json.loads(answer)) == (200, {"accepted": 50})
    await live.wait_for(b'"n":49')
    assert [n for _, n in ids_and_numbers(bytes(live.received))] == list(range(50))
    await live.close()


@pytest_twisted.ensureDeferred
async def test_a_redis_that_stops_answering_gives_503_then_recovers(daemon, redis_server, monkeypatch) -> None:
    """A hung Redis (socket open, no answers) must not hang ingest: a timeout, 503, reconnect."""
    import sse_daemon.bus.redis as redisbus

    monkeypatch.setattr(redisbus, "COMMAND_TIMEOUT", 0.3)
    a, b = await two_daemons(daemon, redis_server)
    on_b = await subscribe(b.port_of("Out"), "/events")
    assert (await post(a.port_of("In"), 1))[0] == 200
    subprocess.run(["/usr/bin/redis-cli", "-p", str(redis_server.port), "CLIENT", "PAUSE", "1500", "ALL"], check=True, capture_output=True, timeout=10)
    code, body = await post(a.port_of("In"), 2)
    assert code == 503 and json.loads(body)["reason"] == "bus-unavailable", body
    assert "may or may not have been published" in json.loads(body)["error"], "honest: Redis may have taken it"
    await wait_for(lambda: a.bus.placed, what="the bus back after the pause")
    assert (await post(a.port_of("In"), 3))[0] == 200
    await on_b.wait_for(b'"n":3}')
    seen = [n for _, n in ids_and_numbers(on_b.received)]
    assert seen in ([1, 3], [1, 2, 3]), seen  # 2 was refused; Redis may still have applied it (see docs/scaling.md)
    await on_b.close()


LEASED = """\
bus: {{type: redis, url: "{url}", key.prefix: "{prefix}", reconnect.max.delay: 0.3, source.lease.ttl: 0.6}}
sources:
  Up: {{type: sse, schema: "n int", stream: S, receiver.url: "{upstream}", reconnect.initial.delay: 0.05}}
sinks:
  Out: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, retry.max: 0}}
admin: {{port: 0, ready.grace: 0.1}}
"""


@pytest_twisted.ensureDeferred
async def test_one_instance_reads_an_upstream_and_another_takes_over_from_its_cursor(daemon, redis_server) -> None:
    from .sse_servers import ScriptedServer

    upstream = ScriptedServer()
    upstream.start()
    try:
        text = LEASED.format(url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", upstream=upstream.url())
        instances = [await instance(daemon, text), await instance(daemon, text)]
        leases = [i.getServiceNamed("source:Up") for i in instances]
        await wait_for(lambda: any(lease.holding for lease in leases) and upstream.streams, what="one instance reading")
        holder, other = (0, 1) if leases[0].holding else (1, 0)
        on_other = await subscribe(instances[other].port_of("Out"), "/events")
        upstream.publish('{"n": 1}')
        upstream.publish('{"n": 2}')
        await on_other.wait_for(b'"n":2}')
        assert len(upstream.seen) == 1 and not leases[other].holding, "one reader per upstream"
        end = reactor.seconds() + 0.3  # past ready.grace
        await wait_for(lambda: reactor.seconds() > end, what="ready.grace to pass")
        verdict = instances[other].admin.readiness(reactor.seconds())
        assert verdict["ready"] and verdict["checks"]["source 'Up'"] == "ok", "waiting for the lease is not being down"
        await wait_for(lambda: instances[holder].bus.counters["events_published"] == 2, what="both events acknowledged")
        stopped_at = reactor.seconds()
        await deadline(instances[holder].stopService())  # releases the lease
        upstream.publish('{"n": 3}')  # nobody reads it now; the next reader asks for it
        await wait_for(lambda: len(upstream.seen) == 2, timeout=5, what="the other instance to connect")
        assert reactor.seconds() - stopped_at < 0.6 + 1.0, "taken over within the lease ttl"
        assert leases[holder].released, "a clean stop gives the lease back"
        assert upstream.seen[1].last_event_id == "2", "resumed from the cursor the first reader saved"
        await on_other.wait_for(b'"n":3}')
        assert [n for _, n in ids_and_numbers(on_other.received)] == [1, 2, 3]
        await on_other.close()
    finally:
        await upstream.stop()


@pytest_twisted.ensureDeferred
async def test_a_leased_source_loses_nothing_while_redis_is_away(daemon, redis_server) -> None:
    from .sse_servers import ScriptedServer

    upstream = ScriptedServer()
    upstream.start()
    try:
        a = await instance(daemon, LEASED.format(url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", upstream=upstream.url()))
        lease = a.getServiceNamed("source:Up")
        await wait_for(lambda: lease.holding and upstream.streams, what="the source reading")
        sub = await subscribe(a.port_of("Out"), "/events")
        upstream.publish('{"n": 1}')
        upstream.publish('{"n": 2}')
        await sub.wait_for(b'"n":2}')
        await wait_for(lambda: lease.inner.bus.acknowledged == "2", what="the cursor saved")
        subprocess.run(["/usr/bin/redis-cli", "-p", str(redis_server.port), "SAVE"], check=True, capture_output=True, timeout=10)
        redis_server.stop()  # a persistent Redis restarting
        await wait_for(lambda: a.bus.state != "up", what="the bus to notice")
        upstream.publish('{"n": 3}')  # read, but cannot be published: the source stops and will read it again
        await wait_for(lambda: not lease.inner.running, timeout=5, what="the source to stop")
        redis_server.start()
        await wait_for(lambda: lease.holding and len(upstream.streams) == 1 and len(upstream.seen) >= 2, timeout=10, what="the source back")
        assert upstream.seen[-1].last_event_id == "2"
        upstream.publish('{"n": 4}')
        await sub.wait_for(b'"n":4}')
        assert [n for _, n in ids_and_numbers(sub.received)] == [1, 2, 3, 4]
        assert not sub.is_closed
        await sub.close()
    finally:
        await upstream.stop()


@pytest_twisted.ensureDeferred
async def test_a_reload_restarts_a_leased_source_under_its_lease(daemon, redis_server, tmp_path) -> None:
    from sse_daemon.daemon.reload import Reloader

    from .conftest import write_config
    from .sse_servers import ScriptedServer

    upstream = ScriptedServer()
    upstream.start()
    try:
        text = LEASED.format(url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", upstream=upstream.url())
        a = await instance(daemon, text)
        lease = a.getServiceNamed("source:Up")
        await wait_for(lambda: lease.holding and upstream.streams, what="the source reading")
        sub = await subscribe(a.port_of("Out"), "/events")
        upstream.publish('{"n": 1}')
        await sub.wait_for(b'"n":1}')
        await wait_for(lambda: lease.inner.bus.acknowledged == "1", what="the cursor saved")
        write_config(tmp_path, text.replace("reconnect.initial.delay: 0.05", "reconnect.initial.delay: 0.06"))
        assert await deadline(Reloader(a, [str(tmp_path / "sse.yaml")]).reload()) is True
        new = a.getServiceNamed("source:Up")
        assert new is not lease and not lease.running and a.sources["Up"] is new
        await wait_for(lambda: new.holding and len(upstream.seen) == 2 and upstream.streams, what="the new source reading")
        assert upstream.seen[1].last_event_id == "1" and len(upstream.streams) == 1
        upstream.publish('{"n": 2}')
        await sub.wait_for(b'"n":2}')
        assert [n for _, n in ids_and_numbers(sub.received)] == [1, 2]
        await sub.close()
    finally:
        await upstream.stop()


@pytest_twisted.ensureDeferred
async def test_a_sink_with_workers_sends_the_bus_ids_and_resumes_another_instances_id(daemon, redis_server) -> None:
    """worker.count on a shared bus: the workers' ids are Redis's, the same as another instance's."""
    text = shared_config(redis_server)
    plain = await instance(daemon, text)
    pooled = await instance(daemon, text.replace("retry.max: 0,", "retry.max: 0, worker.count: 2,"))
    pool = pooled.sinks["Out"]
    await wait_for(lambda: all(w is not None and w.figures for w in pool.workers), what="both workers serving")
    here, there = await subscribe(plain.port_of("Out")), await subscribe(pooled.port_of("Out"))
    for n in (1, 2):
        assert (await post(plain.port_of("In"), n))[0] == 200
    for client in (here, there):
        await wait_for(lambda client=client: len(parsed(bytes(client.received))) == 2, what="two events")
    ids = [m.id for m in parsed(bytes(here.received))]
    assert [m.id for m in parsed(bytes(there.received))] == ids and all(entry_key(i) for i in ids), "Redis entry ids on both"
    await there.close()
    assert (await post(plain.port_of("In"), 3))[0] == 200
    await wait_for(lambda: len(parsed(bytes(here.received))) == 3, what="event 3")
    again = await subscribe(pooled.port_of("Out"), headers=f"Last-Event-ID: {ids[0]}\r\n")  # an id from the other instance
    await wait_for(lambda: len(parsed(bytes(again.received))) == 2, what="the replay on a worker")
    assert [m.id for m in parsed(bytes(again.received))] == [m.id for m in parsed(bytes(here.received))][1:], "events 2 and 3, exactly"
    for client in (here, again):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_an_instance_that_reads_no_stream_reconnects_after_redis_restarts(redis_server) -> None:
    """Seen: an instance that only publishes (an ingest whose sinks run elsewhere) never noticed that its
    connection was gone: the reader loop, with no stream to read, only slept, so the bus stayed "up" and
    every publish failed ("Not connected") until the daemon was restarted."""
    from .test_lease import started_bus

    bus = await started_bus(redis_server.url)
    try:
        await deadline(bus.publish("S", [Event({"n": 1})]))
        redis_server.restart(keep=False)
        await wait_for(lambda: bus.counters["reconnects"] > 0, what="the bus to notice Redis went away")
        await wait_for(lambda: bus.state == "up", what="the bus back")
        assert len(await deadline(bus.publish("S", [Event({"n": 2})]))) == 1
    finally:
        await deadline(bus.stopService())


@pytest_twisted.ensureDeferred
async def test_a_peer_that_accepts_and_never_answers_the_handshake_is_left_and_tried_again(daemon, monkeypatch) -> None:
    """AUTH and SELECT go out as the connection is made, before any command of ours has a timeout: a peer that
    accepts and never answers (a stopped Redis, a proxy in front of a dead one) kept the bus connecting for good.
    The handshake has the command timeout too; the bus says why and tries again."""
    from twisted.internet import protocol

    import sse_daemon.bus.redis as redisbus

    monkeypatch.setattr(redisbus, "COMMAND_TIMEOUT", 0.3)
    connections: list[protocol.Protocol] = []

    class Silent(protocol.Protocol):
        def connectionMade(self) -> None:
            connections.append(self)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        service = await daemon(SHARED.format(url=f"redis://:a-password@127.0.0.1:{port.getHost().port}/2", prefix="t:",
                                             heartbeat=15.0))
        await wait_for(lambda: len(connections) >= 2, what="a second attempt after the first handshake timed out")
        assert service.bus.state in ("connecting", "down") and "could not auth" in service.bus.reason, service.bus.reason
        assert "a-password" not in service.bus.reason
        await wait_for(lambda: not connections[0].transport.connected, what="the first attempt's connection closed")
    finally:
        await port.stopListening()
