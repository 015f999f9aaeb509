"""Accepted means deliverable (issue 12, section 1 and the large-body item of section 3).

Over real sockets: a body no sink could write is refused whole with a 400 naming element,
attribute and reason, and nothing of it is published; a 200 reaches every subscriber; a sink
or subscriber that still fails (a bug) is counted and logged sampled; an SSE source counts a
bad upstream event and goes on; a large body of tiny events cannot freeze other streams.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock, LoopingCall
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from sse_daemon.bus.memory import MemoryBus
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.connectors.ingest import PUBLISH_SLICE, IngestResource
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.events.schema import parse_schema

from .conftest import TwistdProcess, deadline, raw_request, subscribe, wait_for, write_config
from .test_admin import Http, scrape, value
from .test_resume import parsed
from .test_source import harness, payload, values  # noqa: F401  (harness is a fixture)

CONFIG = """\
streams:
  S: "param1 string, o object, d double"
sources:
  In:
    type: http
    stream: S
    receiver.url: http://127.0.0.1:0/in
    map.fail.on.missing.attribute: false
sinks:
  Json:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: json
  Text:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: text
    map.type: text
    map.payload: "{{param1}} {{o}} {{d}}"
  Logged:
    type: log
    stream: S
    prefix: "got "
admin:
  port: 0
"""


async def post(port: int, body: bytes, path: str = "/in") -> tuple[int, dict]:
    client = await raw_request(port, b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                               % (path.encode(), len(body), body))
    await deadline(client.closed)
    raw = bytes(client.received)
    content = raw.partition(b"\r\n\r\n")[2]
    try:
        answer = json.loads(content)
    except ValueError:
        answer = {"raw": content[:200].decode("latin-1")}
    return int(raw.split(b" ", 2)[1]), answer


def data_lines(raw: bytes) -> list[str]:
    return [m.data for m in parsed(raw)]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


# What was answered 200 (or 500) and then reached no subscriber: (body, reason, what the 400 names)
SEEN = [
    (b'{"param1":"x\\ud800"}', "invalid-unicode", "attribute 'param1'"),
    (b'{"o":{"a":1e400}}', "non-finite-number", "attribute 'o' at .a"),
    (b'{"o":-1e400}', "non-finite-number", "attribute 'o'"),
    (b'{"o":{"\\ud800":1}}', "invalid-unicode", "attribute 'o' at"),
    (b'{"o":' + nested(956) + b"}", "too-deep", "nests 957"),
    (b'{"o":' + nested(33) + b"}", "too-deep", "attribute 'o' at"),  # validate.MAX_DEPTH is 32
    (b'{"o":' + nested(100_000) + b"}", "too-deep", "100001"),
    (b'{"d":1' + b"0" * 400 + b"}", "number-out-of-range", "attribute 'd'"),
    (b'{"d":1' + b"0" * 400 + b".5}", "non-finite-number", "attribute 'd'"),
    (b'[{"param1":"a"},{"param1":"b\\udc00"},{"param1":"c"}]', "invalid-unicode", "element 1: attribute 'param1'"),
    (b'[{"param1":"a"},{"param1":"b"},{"param1":"c"},{"o":[1,2,1e400]}]', "non-finite-number", "element 3: attribute 'o' at [2]"),
]


@pytest_twisted.ensureDeferred
async def test_a_body_no_sink_could_write_is_refused_whole_and_nothing_of_it_is_published(daemon, log_events) -> None:
    service = await daemon(CONFIG)
    port = service.port_of("In")
    as_json = await subscribe(port, "/json")
    as_text = await subscribe(port, "/text")
    for body, reason, names in SEEN:
        code, answer = await post(port, body)
        assert (code, answer.get("reason")) == (400, reason), (body[:60], code, answer)
        assert names in answer["error"], (body[:60], answer)
    assert dict(service.sources["In"].rejected) == {
        reason: sum(1 for _, r, _ in SEEN if r == reason) for _, reason, _ in SEEN
    }, "counted by reason: the labels of /metrics"
    code, answer = await post(port, b'[{"param1":"ok","o":{"deep":[[1]]},"d":1.5},{"param1":"too"}]')
    assert (code, answer) == (200, {"accepted": 2})
    await as_json.wait_for(b'"param1":"too"')
    await as_text.wait_for(b"too null null")
    assert data_lines(as_json.received) == ['{"event":{"param1":"ok","o":{"deep":[[1]]},"d":1.5}}',
                                            '{"event":{"param1":"too","o":null,"d":null}}'], "a 200 reaches them all, a 400 nothing"
    assert data_lines(as_text.received) == ['ok {"deep":[[1]]} 1.5', "too null null"]
    assert [e["payload"] for e in log_events if e.get("sink") == "Logged" and "payload" in e] == [
        '{"event":{"param1":"ok","o":{"deep":[[1]]},"d":1.5}}', '{"event":{"param1":"too","o":null,"d":null}}']
    assert not [e for e in log_events if e.get("log_failure") is not None], "no traceback for anything a client sent"
    assert service.sinks["Json"].sink.counters["events_unmapped"] == service.sinks["Text"].sink.counters["events_unmapped"] == 0
    assert service.sinks["Logged"].counters["events_unmapped"] == 0
    await as_json.close()
    await as_text.close()


@pytest_twisted.ensureDeferred
async def test_a_sink_that_still_fails_is_counted_and_logged_sampled_not_per_event(daemon, log_events, monkeypatch) -> None:
    """A bug (an encoder raising on every event) must cost a counter and a few tracebacks, not one per event per sink."""
    service = await daemon(CONFIG)
    port = service.port_of("In")

    def broken(event):
        raise RuntimeError("an encoder bug")

    monkeypatch.setattr(service.sinks["Json"].sink.mapper, "encode", broken)
    monkeypatch.setattr(service.sinks["Logged"].mapper, "encode", broken)
    seen: list = []

    def failing_subscriber(events) -> None:
        seen.extend(events)
        raise RuntimeError("a subscriber bug")

    service.bus.subscribe("S", failing_subscriber)
    text = await subscribe(port, "/text")
    count = 3000
    code, answer = await post(port, json.dumps([{"param1": str(i)} for i in range(count)]).encode())
    assert (code, answer) == (200, {"accepted": count})
    await text.wait_for(b"\ndata: 2999 null null\n")
    assert len(data_lines(text.received)) == count, "the healthy sink got every event"
    assert service.sinks["Json"].sink.counters["events_unmapped"] == count
    assert service.sinks["Logged"].counters["events_unmapped"] == count
    slices = count // PUBLISH_SLICE  # a subscriber is called once a publish: the body went in slices
    assert len(seen) == count and service.bus.failures["S"] == slices
    tracebacks = [e for e in log_events if e.get("log_failure") is not None]
    # should_log: the first ten, then every thousandth, for each of the two failing sinks; each slice's failure
    assert 2 * 10 + slices <= len(tracebacks) <= 2 * (10 + count // 1000) + slices, len(tracebacks)
    samples = await scrape(Http(), service.admin.port)
    assert value(samples, "sse_daemon_sink_events_unmapped_total", sink="Json") == count
    assert value(samples, "sse_daemon_sink_events_unmapped_total", sink="Logged") == count
    assert value(samples, "sse_daemon_sink_events_unmapped_total", sink="Text") == 0
    assert value(samples, "sse_daemon_stream_subscriber_failures_total", stream="S") == slices
    await text.close()


def one_turn(clock: Clock) -> None:
    """Run what is due now, as one reactor iteration does: calls scheduled meanwhile wait for the next."""
    due, clock.calls[:] = list(clock.calls), []
    for call in due:
        call.called = 1
        call.func(*call.args, **call.kw)


@pytest.mark.reactor_free
def test_a_large_body_is_published_in_slices_one_per_reactor_turn_and_answered_after_the_last() -> None:
    connector = validate(load_yaml('sources: {In: {type: http, schema: "n int", receiver.url: "http://127.0.0.1:0/in"}}')).sources[0]
    bus = MemoryBus()
    got: list = []
    bus.subscribe("In", lambda events: got.extend(event.values["n"] for event in events))
    turns = Clock()
    ingest = IngestResource(connector, make_mapper(connector.options.mapping, parse_schema("n int")), bus, turns, turns=turns, slice_size=500)
    request = DummyRequest([b"in"])
    request.method = b"POST"
    request.content = io.BytesIO(json.dumps([{"n": i} for i in range(1234)]).encode())
    ingest.render(request)
    assert got == list(range(500)) and not request.finished, "the first slice at once, no answer yet"
    one_turn(turns)
    assert got == list(range(1000)) and not request.finished
    one_turn(turns)
    assert got == list(range(1234)) and request.finished, "in order, then the 200"
    assert not turns.calls
    assert request.responseCode in (None, 200) and json.loads(b"".join(request.written)) == {"accepted": 1234}


@pytest.mark.reactor_free
def test_a_body_of_many_values_is_mapped_and_checked_over_several_reactor_turns() -> None:
    """A body's walk is spread over turns, not only its publish: one attribute holding 3,000 empty objects (a
    megabyte of them held the reactor about 0.3 s) is checked ``decode_budget`` items a turn; nothing is published
    or answered before the last step, and a bad value at its end is still the whole body's 400."""
    connector = validate(load_yaml('sources: {In: {type: http, schema: "o object", receiver.url: "http://127.0.0.1:0/in"}}')).sources[0]
    bus = MemoryBus()
    got: list = []
    bus.subscribe("In", lambda events: got.extend(len(event.values["o"]) for event in events))
    turns = Clock()
    ingest = IngestResource(connector, make_mapper(connector.options.mapping, parse_schema("o object")), bus, turns,
                            turns=turns, decode_budget=500)

    def post(body: str) -> tuple[DummyRequest, int]:
        request = DummyRequest([b"in"])
        request.method = b"POST"
        request.content = io.BytesIO(body.encode())
        assert ingest.render(request) == NOT_DONE_YET and not request.written, "not mapped in one go"
        steps = 0
        while not request.finished:
            assert turns.calls and got == [], "nothing published before the last step"
            one_turn(turns)
            steps += 1
        return request, steps

    request, steps = post(json.dumps([{"o": [{}] * 3000}]))
    assert got == [3000] and json.loads(b"".join(request.written)) == {"accepted": 1}
    assert steps >= 3000 // 500, f"{steps} turns for 3,000 objects at 500 a turn"
    got.clear()
    request, _ = post(json.dumps([{"o": [{}] * 3000 + [2**70]}]))
    answer = json.loads(b"".join(request.written))
    assert request.responseCode == 400 and answer["reason"] == "number-out-of-range" and "[3000]" in answer["error"], answer
    assert got == [] and not turns.calls


@pytest.mark.reactor_free
def test_ingest_refuses_the_whole_body_with_503_while_the_shared_bus_fanout_is_behind() -> None:
    """``behind`` (a shared bus's ISharedBus.behind) says the instance's own fan-out trails what it accepted by more
    than ``fanout.max.lag``: nothing of the body is published, 503 fanout-behind with Retry-After; a bad body is still
    the publisher's 400 first; once the fan-out caught up the same body is taken."""
    connector = validate(load_yaml('sources: {In: {type: http, schema: "n int", receiver.url: "http://127.0.0.1:0/in"}}')).sources[0]
    bus = MemoryBus()
    got: list = []
    bus.subscribe("In", lambda events: got.extend(event.values["n"] for event in events))
    lag: list[float | None] = [3.4]
    clock = Clock()
    ingest = IngestResource(connector, make_mapper(connector.options.mapping, parse_schema("n int")), bus, clock,
                            behind=lambda stream, incoming: lag[0] if stream == "In" else None)

    def post(body: bytes) -> DummyRequest:
        request = DummyRequest([b"in"])
        request.method = b"POST"
        request.content = io.BytesIO(body)
        written = ingest.render(request)
        if isinstance(written, bytes):
            request.write(written)
        return request

    refused = post(b'[{"n": 1}, {"n": 2}]')
    answer = json.loads(b"".join(refused.written))
    assert refused.responseCode == 503 and answer["reason"] == "fanout-behind" and "waited 3.4 s" in answer["error"], answer
    assert refused.responseHeaders.getRawHeaders(b"Retry-After") == [b"1"]
    assert got == [] and ingest.rejected["fanout-behind"] == 1
    assert post(b'{"n": "x"}').responseCode == 400, "a bad body is the publisher's error whatever the lag"
    lag[0] = None
    accepted = post(b'[{"n": 1}, {"n": 2}]')
    assert accepted.responseCode in (None, 200) and got == [1, 2]


@pytest_twisted.ensureDeferred
async def test_an_sse_source_counts_a_bad_upstream_event_and_goes_on(harness, log_events) -> None:  # noqa: F811
    server = harness.server()
    source, events = harness.source(server.url())
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    server.publish(payload("a"))
    server.publish('{"param1": "x\\ud800"}')
    server.publish('{"param1": 1e400}')
    server.publish('{"param1": ' + "[" * 100_000 + "]" * 100_000 + "}")
    server.publish('{"param1": ' + "7" * 400 + "}")
    server.publish("[" + ",".join([payload("z")] * 10_001) + "]")  # past max.events.per.message: none of it is mapped
    for _ in range(40):  # a bad upstream in a loop: counted in full, logged in part
        server.publish('{"param1": "\\udfff"}')
    server.publish(payload("b"))
    await wait_for(lambda: len(events) == 2, what="the good events")
    assert values(events) == ["a", "b"] and source.connected
    assert dict(source.mapping_errors) == {"invalid-unicode": 41, "non-finite-number": 1, "too-deep": 1, "number-out-of-range": 1,
                                    "too-many-events": 1}
    warned = [e for e in log_events if e.get("source") == source.source_name and e.get("reason") in source.mapping_errors]
    assert len(warned) == 10, "the first ten, then every thousandth"
    assert not [e for e in log_events if e.get("log_failure") is not None]


# --------------------------------------------------------------------------- one large body of tiny events

BIG = """\
sources:
  InA: {type: http, schema: "n int", stream: A, receiver.url: "http://127.0.0.1:0/a"}
  InB: {type: http, schema: "t double", stream: B, receiver.url: "http://127.0.0.1:0/b"}
sinks:
  A1: {type: sse-server, stream: A, server.host: 127.0.0.1, server.port: 0, server.path: a1, subscriber.queue.size: 20000}
  A2: {type: sse-server, stream: A, server.host: 127.0.0.1, server.port: 0, server.path: a2}
  A3: {type: sse-server, stream: A, server.host: 127.0.0.1, server.port: 0, server.path: a3, map.type: text, map.payload: "n={{n}}"}
  B: {type: sse-server, stream: B, server.host: 127.0.0.1, server.port: 0, server.path: b-events, retry.max: 0}
"""


def tiny_events(count: int) -> bytes:
    """``[{"n":0},{"n":1},...]``: eight bytes an event."""
    return b"[" + b",".join(b'{"n":%d}' % (i % 10) for i in range(count)) + b"]"


class Ticker:
    """Posts ``{"t": <now>}`` to stream B every 20 ms and records how late each reaches a B subscriber."""

    def __init__(self, port: int, subscriber) -> None:
        self.port = port
        self.subscriber = subscriber
        self.delays: list[float] = []
        self.posts: list[Deferred] = []
        self.loop = LoopingCall(self.tick)

    def tick(self) -> None:
        self.posts.append(Deferred.fromCoroutine(post(self.port, json.dumps({"t": reactor.seconds()}).encode(), "/b")))
        self.read()

    def read(self) -> None:
        now = reactor.seconds()
        messages = parsed(bytes(self.subscriber.received))
        self.delays += [now - json.loads(m.data)["event"]["t"] for m in messages[len(self.delays):]]

    async def around(self, action, settle: float = 0.4):
        """Run ``action`` with the ticker going, and for ``settle`` seconds after; the worst delay of B meanwhile."""
        self.loop.start(0.02)
        try:
            await wait_for(lambda: len(self.delays) >= 5, what="B flowing before the big body")
            before = len(self.delays)
            result = await action()
            after = len(self.delays)
            await wait_for(lambda: len(self.delays) >= after + int(settle / 0.02 / 2), what="B flowing after the big body")
            return result, max(self.delays[before:])
        finally:
            self.loop.stop()
            await deadline(DeferredList(self.posts))


@pytest_twisted.ensureDeferred
async def test_one_mib_of_tiny_events_does_not_freeze_other_streams(tmp_path: Path) -> None:
    """Seen: a 1 MiB body of tiny events held the reactor 3 s (every stream froze). Now it is refused
    (max.events.per.request) after a parse, and an accepted 10,000-event body is published in slices."""
    process, port = await TwistdProcess.start(write_config(tmp_path, BIG), tmp_path)
    try:
        b = await subscribe(port, "/b-events")
        a1 = await subscribe(port, "/a1")
        ticker = Ticker(port, b)
        big = tiny_events((1 << 20) // 8 - 1)
        assert (1 << 20) - 8 < len(big) <= 1 << 20, "one MiB, the default max.body.size"
        (code, answer), worst = await ticker.around(lambda: post(port, big, "/a"))
        assert worst < 1.0, f"B waited {worst:.3f}s while a 1 MiB body was handled (3 s before the fix)"
        assert (code, answer.get("reason")) == (413, "too-many-events"), (code, answer)
        body = tiny_events(10_000)  # the default max.events.per.request
        (code, answer), worst = await ticker.around(lambda: post(port, body, "/a"))
        assert (code, answer) == (200, {"accepted": 10_000})
        assert worst < 1.0, f"B waited {worst:.3f}s while 10,000 events were published"
        await wait_for(lambda: a1.received.count(b"\ndata: ") >= 10_000, timeout=10, what="every accepted event at A1")
        got = [json.loads(d)["event"]["n"] for d in data_lines(a1.received)]
        assert got == [i % 10 for i in range(10_000)], "every event of the 200, in order"
        await a1.close()
        await b.close()
    finally:
        await process.kill()
