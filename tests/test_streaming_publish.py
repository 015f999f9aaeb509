"""Streaming publish: NDJSON lines taken as they arrive, each accepted or refused on its own, with backpressure."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sse_daemon.bus.redis import BusUnavailable
from sse_daemon.connectors import ingeststream
from sse_daemon.connectors.ingeststream import NdjsonPublish
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable
from sse_daemon.edge.bodystream import BodyStream, wants_stream
from sse_daemon.edge.listener import body_stream
from sse_daemon.events.schema import Event, parse_schema
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.wire.ndjson import TOO_LONG, NdjsonLines

from .conftest import port_channel, raw_request, status, subscribe, wait_for, write_config

# --------------------------------------------------------------------------- the lines (pure)


@pytest.mark.reactor_free
def test_lines_are_cut_as_chunks_arrive_numbered_with_blank_ones_counted() -> None:
    lines = NdjsonLines(max_line=100)
    assert lines.feed(b'{"a": 1}\n{"a"') == [(1, b'{"a": 1}')]
    assert lines.feed(b': 2}\r\n\n  \n') == [(2, b'{"a": 2}')], "CRLF ends a line; blank lines are skipped but counted"
    assert lines.feed(b'{"a": 3}') == [] and lines.end() == [(5, b'{"a": 3}')], "the last line needs no newline"
    assert lines.end() == [] and lines.number == 5


@pytest.mark.reactor_free
def test_a_line_past_the_limit_is_never_held_whole() -> None:
    lines = NdjsonLines(max_line=10)
    assert lines.feed(b"x" * 8) == []
    assert lines.feed(b"y" * 1000) == [] and len(lines._partial) == 0, "dropped as it comes"
    assert lines.feed(b"z\nok\n") == [(1, TOO_LONG), (2, b"ok")]
    assert lines.feed(b"a" * 11) == [] and lines.end() == [(3, TOO_LONG)]
    assert NdjsonLines(10).feed(b"0123456789\n") == [(1, b"0123456789")], "exactly the limit is a line"


@pytest.mark.reactor_free
@pytest.mark.parametrize("seed", range(20))
def test_any_cut_of_a_body_into_chunks_gives_the_same_lines(seed: int) -> None:
    """Lines whole in one chunk are cut at once, lines across chunks pieced together: the same lines
    whatever the cut, as reading the body whole and line by line says they are."""
    import random

    draw = random.Random(seed)
    pieces = [b"", b"\r", b" ", b'{"a": 1}', b"x" * 9, b"y" * 10, b"z" * 11, b"w" * 30, b"ok\r"]
    body = b"\n".join(draw.choice(pieces) + draw.choice(pieces) for _ in range(draw.randint(1, 40)))
    expected = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if len(line) > 10:
            expected.append((number, TOO_LONG))
        elif line.strip():
            expected.append((number, line.removesuffix(b"\r")))
    cuts = sorted(draw.sample(range(len(body) + 1), draw.randint(0, min(len(body), 12))))
    for chunks in ([body], [body[i:i + 1] for i in range(len(body))],
                   [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]):
        lines = NdjsonLines(max_line=10)
        got = [line for chunk in chunks for line in lines.feed(chunk)] + lines.end()
        assert got == expected, chunks


@pytest.mark.reactor_free
@pytest.mark.parametrize(("method", "content_type", "streams"), [
    (b"POST", b"application/x-ndjson", True),
    (b"POST", b"Application/X-NDJSON; charset=utf-8", True),
    (b"GET", b"application/x-ndjson", False),
    (b"POST", b"application/json", False),
    (b"POST", None, False),
])
def test_which_requests_stream(method: bytes, content_type: bytes | None, streams: bool) -> None:
    assert wants_stream(method, content_type) is streams


# --------------------------------------------------------------------------- the consumer, on fakes


class Producer:
    """The socket side of a BodyStream: records what it was told."""

    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.paused = False
        self.calls.append("resume")


def consumer(publish, behind=None, max_line: int = 1000) -> tuple[NdjsonPublish, BodyStream, Producer, Clock, Counter]:
    producer, clock, rejected = Producer(), Clock(), Counter()
    body = BodyStream(producer)
    connector = validate(load_yaml('sources: {In: {type: http, schema: "n int", receiver.url: "http://127.0.0.1:0/in"}}')).sources[0]
    mapper = make_mapper(connector.options.mapping, parse_schema("n int"))
    publishing = NdjsonPublish("In", "S", body, mapper, publish, clock, max_line, 100, rejected, Counter(), behind=behind)
    body.attach(publishing)
    return publishing, body, producer, clock, rejected


def answer(publishing: NdjsonPublish) -> dict:
    assert publishing.done.called, "answered"
    got: list = []
    publishing.done.addCallback(got.append)
    return got[0]


@pytest.mark.reactor_free
def test_each_line_is_taken_or_refused_on_its_own_and_a_chunk_is_one_publish() -> None:
    batches: list[list[int]] = []
    publishing, body, _, _, rejected = consumer(lambda events: batches.append([e.values["n"] for e in events]) or succeed(None))
    body.chunk(b'{"n": 1}\n[{"n": 2}, {"n": 3}]\n{"n": "x"}\nnot json\n\xff\n')
    assert batches == [[1, 2, 3]], "the good lines of a chunk, in one publish, in order"
    body.chunk(b'{"n": 4}')
    assert not publishing.done.called
    body.end()
    assert batches == [[1, 2, 3], [4]]
    summary = answer(publishing)
    assert (summary["accepted"], summary["refused"], summary["lines"]) == (4, 3, 6)
    assert [(r["line"], r["reason"]) for r in summary["refusals"]] == [(3, "wrong-type"), (4, "invalid-json"), (5, "invalid-utf8")]
    assert rejected == Counter({"wrong-type": 1, "invalid-json": 1, "invalid-utf8": 1})


@pytest.mark.reactor_free
def test_unacknowledged_publishes_hold_the_reading_until_half_have_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingeststream, "MAX_UNSETTLED", 4)
    pending: list[Deferred] = []

    def publish(events: list[Event]) -> Deferred:
        pending.append(Deferred())
        return pending[-1]

    publishing, body, producer, _, _ = consumer(publish)
    body.chunk(b'{"n": 1}\n{"n": 2}\n{"n": 3}\n')
    assert not producer.paused
    body.chunk(b'{"n": 4}\n{"n": 5}\n')
    assert producer.paused, "5 waiting, more than 4: the socket is not read"
    pending[0].callback(None)  # 3 settle: 2 left, at most half: read again
    assert not producer.paused and producer.calls == ["pause", "resume"]
    body.end()
    assert not publishing.done.called, "the answer waits for every acknowledgement"
    pending[1].callback(None)
    assert answer(publishing)["accepted"] == 5


@pytest.mark.reactor_free
def test_a_publish_the_bus_refuses_refuses_its_lines_and_the_stream_goes_on() -> None:
    results = [fail(BusUnavailable("down")), fail(HistoryUnavailable("disk full")), succeed(None)]
    publishing, body, _, _, rejected = consumer(lambda events: results.pop(0))
    body.chunk(b'{"n": 1}\n[{"n": 2}, {"n": 3}]\n')
    body.chunk(b'{"n": 4}\n')
    body.chunk(b'{"n": 5}\n')
    body.end()
    summary = answer(publishing)
    assert summary["accepted"] == 1 and summary["refused"] == 3
    assert [(r["line"], r["reason"]) for r in summary["refusals"]] == [(1, "bus-unavailable"), (2, "bus-unavailable"),
                                                                      (3, "history-unavailable")]
    assert rejected["bus-unavailable"] == 2


@pytest.mark.reactor_free
def test_a_shared_bus_whose_fanout_is_behind_holds_the_stream_instead_of_refusing_it() -> None:
    lag: list[float | None] = [3.0]
    sent: list[int] = []
    publishing, body, producer, clock, _ = consumer(lambda events: sent.extend(e.values["n"] for e in events) or succeed(None),
                                                    behind=lambda incoming: lag[0])
    body.chunk(b'{"n": 1}\n')
    body.chunk(b'{"n": 2}\n')  # what was read meanwhile is held too, in order
    assert sent == [] and producer.paused
    clock.advance(ingeststream.BEHIND_RETRY)
    assert sent == [] and producer.paused, "still behind: looked at again later"
    lag[0] = None
    clock.advance(ingeststream.BEHIND_RETRY)
    assert sent == [1, 2] and not producer.paused
    body.end()
    assert answer(publishing)["accepted"] == 2 and not clock.getDelayedCalls()


@pytest.mark.reactor_free
def test_a_client_that_leaves_gets_no_answer_and_what_it_sent_stays_published() -> None:
    sent: list[int] = []
    publishing, body, _, clock, _ = consumer(lambda events: sent.extend(e.values["n"] for e in events) or succeed(None),
                                             behind=lambda incoming: None)
    body.chunk(b'{"n": 1}\n{"n": 2')
    body.lost(Failure(ConnectionError("gone")))
    body.chunk(b'}\n')
    assert sent == [1] and not publishing.done.called and not clock.getDelayedCalls()


@pytest.mark.reactor_free
def test_chunks_before_a_consumer_are_kept_and_reading_held_until_it_attaches() -> None:
    producer = Producer()
    body = BodyStream(producer)
    body.chunk(b"a")
    body.chunk(b"b")
    assert producer.paused, "a password being checked: one read kept, no more read meanwhile"
    got: list = []

    class Take:
        def chunk(self, data: bytes) -> None:
            got.append(data)

        def end(self, complete: bool) -> None:
            got.append("end")

        def lost(self, reason: Failure) -> None:
            got.append("lost")

    body.end()
    body.attach(Take())
    assert got == [b"a", b"b", "end"] and not producer.paused


class Holding(Resource):
    """Takes a streaming publish and holds its body (as a password check, or a daemon behind, does)."""

    isLeaf = True

    def render_POST(self, request: object) -> object:
        body = body_stream(request)  # type: ignore[arg-type]
        assert body is not None
        body.pause()
        return NOT_DONE_YET


@pytest.mark.reactor_free
def test_a_held_stream_stays_unread_when_the_transport_drains_earlier_answers() -> None:
    """twisted.web resumes reading when the transport has sent what it held (earlier answers on a kept-alive
    connection), unaware that the daemon holds a streaming publish: its body was then read on, into the lines
    waiting for a commit or a fan-out that was behind, without bound."""
    channel, transport, router, clock = port_channel(Holding())
    channel.pauseProducing()  # the transport's buffer is full of earlier answers the client has not read yet
    channel.dataReceived(HEAD + chunk(b'{"n": 1}\n'))
    assert transport.producerState == "paused"
    channel.resumeProducing()  # it read them
    assert transport.producerState == "paused", "the daemon still holds the stream: nothing more is read"
    channel.connectionLost(Failure(ConnectionDone()))


class CutTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Refusing(Resource):
    """Refuses a streaming publish at its head (as its guard does a wrong token)."""

    isLeaf = True

    def render_POST(self, request: object) -> bytes:
        request.setResponseCode(401)  # type: ignore[attr-defined]
        return b'{"reason": "bad-token"}\n'


@pytest.mark.reactor_free
def test_a_streaming_publish_refused_at_its_head_gets_no_408_after_its_answer() -> None:
    """Refused before its body ended, the connection closes after the answer; a client that reads nothing held it
    open until the body deadline, which wrote a 408 after the 401 (two answers to one request) and counted a
    body-timeout. The refusal ends the body's deadline; a peer that does not read is cut after CLOSE_GRACE."""
    from sse_daemon.edge.listener import CLOSE_GRACE

    channel, transport, router, clock = port_channel(Refusing(), transport_class=CutTransport)  # never drains: the client reads nothing
    channel.dataReceived(HEAD + chunk(b'{"n": 1}\n'))
    assert transport.value().startswith(b"HTTP/1.1 401 ")
    clock.advance(CLOSE_GRACE)
    assert transport.aborted, "a closing connection whose peer does not read is cut"
    clock.advance(20)
    assert transport.value().count(b"HTTP/1.1 ") == 1, transport.value()
    assert router.rejected.get("body-timeout", 0) == 0
    channel.connectionLost(Failure(ConnectionDone()))


# --------------------------------------------------------------------------- over real sockets

INGEST = """\
sources:
  In: {{type: http, schema: "n int", stream: S, receiver.url: "http://127.0.0.1:0/in"{extra}}}
sinks:
  Out: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, retry.max: 0,
         heartbeat.interval: 0{sink_extra}}}
"""


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = (b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\n\r\n")


def numbers(raw: bytes) -> list[int]:
    return [json.loads(line[6:])["event"]["n"] for line in raw.split(b"\n") if line.startswith(b"data: ")]


@pytest_twisted.ensureDeferred
async def test_a_streaming_publish_delivers_each_line_before_the_body_ends_and_answers_with_the_count(daemon) -> None:
    service = await daemon(INGEST.format(extra="", sink_extra=""))
    port = service.port_of("In")
    live = await subscribe(service.port_of("Out"), "/events")
    publisher = await raw_request(port, HEAD + chunk(b'{"n": 1}\n{"n"'))
    await live.wait_for(b'"n":1')  # delivered while the body is still open
    assert publisher.received == b"" and not publisher.is_closed
    publisher.transport.write(chunk(b': 2}\nnope\n' + b'{"n": 3}\n' * 3) + chunk(b'[{"n": 4}, {"n": 5}]') + b"0\r\n\r\n")
    await wait_for(lambda: publisher.is_closed, what="the answer, then the close")
    raw = bytes(publisher.received)
    assert status(raw) == 200 and b"Connection: close" in raw
    answer = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["refused"], answer["lines"]) == (7, 1, 7)
    assert answer["refusals"] == [{"line": 3, "reason": "invalid-json", "error": answer["refusals"][0]["error"]}]
    await live.wait_for(b'"n":5')
    assert numbers(bytes(live.received)) == [1, 2, 3, 3, 3, 4, 5]
    assert service.sources["In"].counters["events_in"] == 7 and service.sources["In"].rejected["invalid-json"] == 1
    await live.close()


@pytest_twisted.ensureDeferred
async def test_a_streaming_publish_without_credentials_is_refused_at_its_headers(daemon, tmp_path) -> None:
    tokens = write_config(tmp_path, "s3cret-token-0123456789abcdef\n", "tokens")
    service = await daemon(INGEST.format(extra=f", auth.type: bearer, auth.tokens.file: {tokens}", sink_extra=""))
    publisher = await raw_request(service.port_of("In"), HEAD + chunk(b'{"n": 1}\n'))
    await wait_for(lambda: publisher.is_closed, what="the refusal, then the close, with the body still open")
    assert status(bytes(publisher.received)) == 401
    assert service.sources["In"].counters["events_in"] == 0


@pytest_twisted.ensureDeferred
async def test_a_stalled_streaming_publish_gets_408_after_the_body_timeout_and_keeps_what_it_sent(daemon) -> None:
    service = await daemon(INGEST.format(extra=", server.body.timeout: 0.5", sink_extra=", server.body.timeout: 0.5"))
    live = await subscribe(service.port_of("Out"), "/events")
    publisher = await raw_request(service.port_of("In"), HEAD + chunk(b'{"n": 1}\n'))
    await live.wait_for(b'"n":1')
    assert service.sources["In"].counters["events_in"] == 1, "counted as published, with no answer yet"
    publisher.transport.write(chunk(b'{"n": 2}\n'))  # a chunk restarts the deadline: the pause between chunks is bounded
    await live.wait_for(b'"n":2')
    await wait_for(lambda: publisher.is_closed, timeout=10, what="the deadline between chunks")
    assert status(bytes(publisher.received)) == 408 and b"request body" in publisher.received
    await live.close()


@pytest_twisted.ensureDeferred
async def test_a_fast_streaming_publisher_is_held_by_unacknowledged_commits_and_loses_nothing(
        daemon, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a history file every publish waits for its commit on another thread: past MAX_UNSETTLED the
    stream's socket is not read (TCP slows the client), and every line is published once."""
    monkeypatch.setattr(ingeststream, "MAX_UNSETTLED", 50)
    pauses: list[int] = []
    real_pause = BodyStream.pause

    def counting_pause(self: BodyStream) -> None:
        pauses.append(1)
        real_pause(self)

    monkeypatch.setattr(BodyStream, "pause", counting_pause)
    service = await daemon(INGEST.format(extra="", sink_extra=f", history.path: '{tmp_path / 'h.db'}'"))
    live = await subscribe(service.port_of("Out"), "/events")
    lines = b"".join(b'{"n": %d}\n' % i for i in range(3000))
    publisher = await raw_request(service.port_of("In"), HEAD + b"".join(chunk(lines[i:i + 4000]) for i in range(0, len(lines), 4000))
                                  + b"0\r\n\r\n")
    await wait_for(lambda: publisher.is_closed, timeout=30, what="the answer")
    answer = json.loads(bytes(publisher.received).partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["refused"]) == (3000, 0)
    assert pauses, "the stream was held while commits were under way"
    await live.wait_for(b'"n":2999')
    assert numbers(bytes(live.received)) == list(range(3000)), "each once, in order"
    await live.close()


@pytest_twisted.ensureDeferred
async def test_a_line_longer_than_max_body_size_is_refused_alone(daemon) -> None:
    service = await daemon(INGEST.format(extra=", max.body.size: 100", sink_extra=""))
    body = b'{"n": 1}\n' + b'{"n": 2, "pad": "' + b"x" * 100_000 + b'"}\n{"n": 3}\n'
    publisher = await raw_request(service.port_of("In"), HEAD + chunk(body) + b"0\r\n\r\n")
    await wait_for(lambda: publisher.is_closed, what="the answer")
    answer = json.loads(bytes(publisher.received).partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["refused"]) == (2, 1) and answer["refusals"][0]["reason"] == "too-large"


@pytest_twisted.ensureDeferred
async def test_at_shutdown_an_open_stream_ends_and_its_answer_says_how_many_lines_were_read(daemon) -> None:
    service = await daemon(INGEST.format(extra="", sink_extra=""))
    publisher = await raw_request(service.port_of("In"), HEAD + chunk(b'{"n": 1}\n{"n": 2}\n{"n": 3'))
    await wait_for(lambda: service.sources["In"].counters["events_in"] == 2, what="two lines published")
    service.stopping.begin()  # what the drain does first
    publisher.transport.write(chunk(b'}\n{"n": 4}\n'))
    await wait_for(lambda: publisher.is_closed, what="the answer")
    answer = json.loads(bytes(publisher.received).partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["refused"], answer["lines"]) == (2, 0, 2), \
        "the third line, half read when the stream was cut, was not taken: the publisher resends from line 3"
    assert service.sources["In"].counters["events_in"] == 2


@pytest_twisted.ensureDeferred
async def test_a_streaming_publish_with_a_content_length_is_taken_as_it_arrives_too(daemon) -> None:
    service = await daemon(INGEST.format(extra="", sink_extra=""))
    live = await subscribe(service.port_of("Out"), "/events")
    first, rest = b'{"n": 1}\n', b'{"n": 2}\n{"n": 3}'
    publisher = await raw_request(service.port_of("In"), b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                                  b"Content-Length: %d\r\n\r\n%s" % (len(first) + len(rest), first))
    await live.wait_for(b'"n":1')  # before the rest of the body was sent
    assert publisher.received == b""
    publisher.transport.write(rest)
    await wait_for(lambda: publisher.is_closed, what="the answer")
    answer = json.loads(bytes(publisher.received).partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["refused"], answer["lines"]) == (3, 0, 3)
    await live.wait_for(b'"n":3')
    await live.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_the_daemon_holds_longer_than_the_body_timeout_is_not_cut(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body deadline bounds the client's pauses, not the daemon's: while publishes wait for their
    acknowledgement the stream is not read, and its deadline stops meanwhile."""
    from twisted.internet import reactor

    monkeypatch.setattr(ingeststream, "MAX_UNSETTLED", 1)
    service = await daemon(INGEST.format(extra=", server.body.timeout: 0.3", sink_extra=", server.body.timeout: 0.3"))
    ingest = service.sources["In"]
    real_publish = ingest.bus.publish
    waiting: list[Deferred] = []

    def slow_publish(stream: str, events: list) -> Deferred:  # an acknowledgement that takes a second (a slow disk)
        done: Deferred = Deferred()
        waiting.append(done)
        reactor.callLater(1.0, lambda: real_publish(stream, events).chainDeferred(done))
        return done

    monkeypatch.setattr(ingest.bus, "publish", slow_publish)
    publisher = await raw_request(service.port_of("In"), HEAD + chunk(b'{"n": 1}\n{"n": 2}\n'))
    await wait_for(lambda: waiting, what="the first publish")
    publisher.transport.write(chunk(b'{"n": 3}\n') + b"0\r\n\r\n")  # sent while the stream is held
    await wait_for(lambda: publisher.is_closed, timeout=10, what="the answer")
    raw = bytes(publisher.received)
    assert status(raw) == 200, raw
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["accepted"] == 3


@pytest.mark.reactor_free
def test_an_ndjson_body_that_came_whole_is_taken_a_tcp_reads_worth_a_turn() -> None:
    """Over HTTP/2 an NDJSON body comes whole: it is taken WHOLE_PIECE bytes a reactor turn, as a streamed one
    arrives, not all at once (a megabyte of short lines held the reactor about 0.3 s); answered after the last."""
    import io

    from twisted.web.test.requesthelper import DummyRequest

    from sse_daemon.bus.memory import MemoryBus
    from sse_daemon.connectors import ingest as ingest_module
    from sse_daemon.connectors.ingest import IngestResource

    from .test_accepted import one_turn

    connector = validate(load_yaml('sources: {In: {type: http, schema: "n int", receiver.url: "http://127.0.0.1:0/in"}}')).sources[0]
    bus = MemoryBus()
    got: list[int] = []
    bus.subscribe("In", lambda events: got.extend(event.values["n"] for event in events))
    turns = Clock()
    ingest = IngestResource(connector, make_mapper(connector.options.mapping, parse_schema("n int")), bus, turns, turns=turns)
    line = b'{"n": 1}\n'
    per_piece = ingest_module.WHOLE_PIECE // len(line)
    request = DummyRequest([b"in"])
    request.method = b"POST"
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/x-ndjson"])
    request.content = io.BytesIO(line * (3 * per_piece))
    assert ingest.render(request) == NOT_DONE_YET
    turns_taken = 0
    while not request.finished:
        assert len(got) <= (turns_taken + 1) * (per_piece + 1), "no more than a piece's lines a turn"
        assert turns.calls, "the rest waits for the next turn"
        one_turn(turns)
        turns_taken += 1
    assert turns_taken >= 2 and len(got) == 3 * per_piece
    assert json.loads(b"".join(request.written))["accepted"] == 3 * per_piece
