"""The SSE sink over real sockets on 127.0.0.1, port 0."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.task import Clock

from sse_daemon.events.schema import Event
from sse_daemon.wire.eventstream import EventStreamParser, Message

from .conftest import deadline, raw_request, subscribe, wait_for

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int, text string"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    headers: "'X-Team:sse','Access-Control-Allow-Origin:*'"
    {extra}
"""


def config(**extra: object) -> str:
    return SINK.format(extra="\n    ".join(f"{k}: {v}" for k, v in extra.items()))


def publish(service, *numbers: int, text: str = "hi") -> None:
    service.bus.publish("Events", [Event({"n": n, "text": text}) for n in numbers])


def messages(raw: bytes) -> list[Message]:
    body = raw.partition(b"\r\n\r\n")[2]
    return [m for m in EventStreamParser().feed(_unchunk(body)) if isinstance(m, Message)]


def _unchunk(body: bytes) -> bytes:
    """Decode HTTP/1.1 chunked framing (the raw client sees it)."""
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        if not rest:
            break
        size = int(size_line, 16)
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


@pytest_twisted.ensureDeferred
async def test_exact_response_head_and_event_bytes(daemon) -> None:
    service = await daemon(config(**{"retry.min": 2000, "retry.max": 2000}))  # a fixed retry: hint
    port = service.port_of("Events")
    client = await subscribe(port)
    head = re.sub(rb"Date: [^\r]+", b"Date: <date>", bytes(client.received))
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Server: sse-daemon\r\n"  # not twisted.web's name and version
        b"Date: <date>\r\n"
        b"Content-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\n"
        b"X-Accel-Buffering: no\r\n"
        b"X-Team: sse\r\n"
        b"Access-Control-Allow-Origin: *\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
        b"27\r\n: sse-daemon stream open\n\nretry: 2000\n\n\r\n"
    )
    client.received.clear()
    publish(service, 1, text="two\nlines")
    await client.wait_for(b"\n\n\r\n")
    sink = service.sinks["Events"].sink
    (event_id, _), = sink.history._entries
    frame = (f"id: {event_id}\n" 'data: {"event":{"n":1,"text":"two\\nlines"}}\n\n').encode()
    assert bytes(client.received) == b"%x\r\n%s\r\n" % (len(frame), frame)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_flush_interval_sends_the_events_of_several_turns_in_one_write(daemon) -> None:
    """Past its burst, a stream faster than ``flush.interval`` gets one write per interval: ten events, each
    published in a turn of its own, reach the subscriber in at most BURST + 1 writes (one per turn without it)."""
    from sse_daemon.connectors.sink.batching import BURST

    service = await daemon(config(**{"flush.interval": 1}))  # the longest allowed: the window cannot close under load
    client = await subscribe(service.port_of("Events"))
    client.received.clear()
    started = time.monotonic()
    for n in range(10):
        publish(service, n)
        await deadline(threads.deferToThread(lambda: None))  # another reactor turn
    await wait_for(lambda: len(messages(b"\r\n\r\n" + bytes(client.received))) == 10, what="ten events")
    refilled = int(time.monotonic() - started)  # a write a second comes back (flush.interval 1): a slow machine's allowance
    chunks, rest = 0, bytes(client.received)
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        rest = rest[int(size, 16) + 2:]
        chunks += 1
    assert chunks <= BURST + 1 + refilled, f"{chunks} writes for ten events"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_many_subscribers_get_every_event_in_order(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("Events")
    clients = [await subscribe(port) for _ in range(20)]
    publish(service, *range(200))
    for client in clients:
        await wait_for(lambda: len(messages(bytes(client.received))) == 200, what="200 events")
        got = messages(bytes(client.received))
        assert [int(m.data.split('"n":')[1].split(",")[0]) for m in got] == list(range(200))
        ids = [int(m.id) for m in got]
        assert ids == sorted(set(ids)), "ids strictly increase"
    for client in clients:
        await client.close()
    sink = service.sinks["Events"].sink
    await wait_for(lambda: not sink.subscribers, what="subscribers to be cleaned up")
    assert sink.counters["connections_opened"] == sink.counters["connections_closed"] == 20


@pytest_twisted.ensureDeferred
async def test_disconnect_is_cleaned_up_and_others_continue(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    leaving, staying = await subscribe(port), await subscribe(port)
    await leaving.close()
    await wait_for(lambda: len(sink.subscribers) == 1, what="the sink to notice the disconnect")
    publish(service, 7)
    await staying.wait_for(b'"n":7')
    await staying.close()


@pytest_twisted.ensureDeferred
async def test_heartbeat_on_the_clock(daemon) -> None:
    clock = Clock()
    service = await daemon(config(**{"heartbeat.interval": 15}), clock=clock)
    client = await subscribe(service.port_of("Events"))
    clock.advance(14.9)
    publish(service, 1)
    await client.wait_for(b'"n":1')
    assert b"heartbeat" not in client.received
    clock.advance(0.1)
    await client.wait_for(b": heartbeat\n\n")
    assert client.received.count(b"heartbeat") == 1
    clock.pump([15, 15])
    await wait_for(lambda: client.received.count(b"heartbeat") == 3, what="two more heartbeats")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_resume_with_last_event_id_loses_and_repeats_nothing(daemon) -> None:
    service = await daemon(config(**{"history.size": 10}))
    port = service.port_of("Events")
    first = await subscribe(port)
    publish(service, 1, 2, 3)
    await wait_for(lambda: len(messages(bytes(first.received))) == 3, what="3 events")
    second_id = messages(bytes(first.received))[1].id
    await first.close()
    publish(service, 4)  # published while the client was away
    for how, expected in (("header", [3, 4]), ("query", [3, 4, 5])):
        if how == "header":
            again = await subscribe(port, headers=f"Last-Event-ID: {second_id}\r\n")
        else:
            again = await subscribe(port, path=f"/events?lastEventId={second_id}")
        await wait_for(lambda: len(messages(bytes(again.received))) == len(expected), what=f"the replay by {how}")
        live = 5 if how == "header" else 6
        publish(service, live)
        await wait_for(lambda: len(messages(bytes(again.received))) == len(expected) + 1, what="a live event")
        got = [m.data for m in messages(bytes(again.received))]
        assert got == [f'{{"event":{{"n":{n},"text":"hi"}}}}' for n in expected + [live]]
        await again.close()


@pytest_twisted.ensureDeferred
async def test_resume_from_unknown_id_gets_the_history(daemon) -> None:
    service = await daemon(config(**{"history.size": 2}))
    publish(service, 1, 2, 3)
    client = await subscribe(service.port_of("Events"), headers="Last-Event-ID: from-before\r\n")
    await wait_for(lambda: len(messages(bytes(client.received))) == 3, what="a reset event and the history")
    reset, *replayed = messages(bytes(client.received))
    assert reset.event == "reset", "an id that cannot be read: the client is told it may have missed events"
    assert ['"n":2' in m.data for m in replayed] == [True, False]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_subscriber_that_never_reads_is_dropped_with_bounded_memory(daemon) -> None:
    limit = 256 * 1024
    service = await daemon(config(**{"subscriber.queue.bytes": limit, "subscriber.queue.size": 100000}))
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    reader = await subscribe(port)
    stalled = await subscribe(port)
    stalled.transport.pauseProducing()  # this client never reads again
    slow = next(s for s in sink.subscribers if s.peer.endswith(str(stalled.transport.getHost().port)))
    payload = "x" * 16384
    peak = 0
    for n in range(4000):  # bounded: 64 MiB at most
        publish(service, n, text=payload)
        peak = max(peak, slow.queued_bytes)
        if sink.counters["dropped_slow"]:
            break
        # the reader keeps up: wait until it has this event before sending the next
        needle = b'"n":%d,' % n
        await wait_for(lambda: needle in reader.received, what=f"event {n} at the reader")
        reader.received.clear() if len(reader.received) > 1 << 20 else None
    assert sink.counters["dropped_slow"] == 1
    assert slow not in sink.subscribers
    assert peak <= limit + len(payload) + 200, "the queue never grows past its bound"
    publish(service, 99999)
    await reader.wait_for(b'"n":99999,')
    await reader.close()
    stalled.transport.resumeProducing()  # only a reading client can see the cut
    await wait_for(lambda: stalled.is_closed, what="the stalled client to be cut")


@pytest_twisted.ensureDeferred
async def test_methods_and_paths(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("Events")
    post = await raw_request(port, b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await deadline(post.closed)
    assert post.received.startswith(b"HTTP/1.1 405 ")
    missing = await raw_request(port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await deadline(missing.closed)
    assert missing.received.startswith(b"HTTP/1.1 404 ")
    assert b"nothing is served at /nope" in missing.received
    head = await raw_request(port, b"HEAD /events/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await deadline(head.closed)
    assert head.received.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: text/event-stream; charset=utf-8" in head.received
    assert not service.sinks["Events"].sink.subscribers
    router = next(iter(service.listeners.values())).router
    assert router.rejected == {"not-found": 1, "method-not-allowed": 1}


@pytest_twisted.ensureDeferred
async def test_stop_ends_every_stream(daemon) -> None:
    service = await daemon(config())
    client = await subscribe(service.port_of("Events"))
    await deadline(service.stopService())
    await deadline(client.closed)
    assert client.received.endswith(b"0\r\n\r\n"), "the stream ends cleanly with the last chunk"


@pytest_twisted.ensureDeferred
async def test_a_third_party_client_reads_events(daemon) -> None:
    """httpx-sse (written by others) reads our stream, in a thread so the reactor keeps serving."""
    import httpx
    from httpx_sse import connect_sse

    service = await daemon(config())
    url = f"http://127.0.0.1:{service.port_of('Events')}/events"
    sink = service.sinks["Events"].sink

    def read_three() -> list[tuple[str, str]]:
        with httpx.Client(timeout=30) as client, connect_sse(client, "GET", url) as source:
            got = []
            for sse in source.iter_sse():
                if sse.retry is not None and not sse.data:
                    continue  # the retry:-only block sent on connect (httpx-sse yields it; browsers do not)
                got.append((sse.id, sse.data))
                if len(got) == 3:
                    return got
        return got

    reading = threads.deferToThread(read_three)
    await wait_for(lambda: sink.subscribers, what="httpx-sse to subscribe")
    publish(service, 1, 2, 3)
    got = await deadline(reading)
    assert [data for _, data in got] == [f'{{"event":{{"n":{n},"text":"hi"}}}}' for n in (1, 2, 3)]
    assert [int(i) for i, _ in got] == sorted(int(i) for i, _ in got)
    await wait_for(lambda: not sink.subscribers, what="httpx-sse to leave")


@pytest_twisted.ensureDeferred
async def test_the_listen_backlog_holds_a_reconnect_burst(daemon) -> None:
    """Twisted's default backlog of 50 drops connections when a deploy sends subscribers back at once."""
    from sse_daemon.policy.connections import LISTEN_BACKLOG

    service = await daemon(config())
    listener = next(iter(service.listeners.values()))
    assert listener.listening.backlog == LISTEN_BACKLOG == 1024


@pytest_twisted.ensureDeferred
async def test_one_turns_events_reach_a_subscriber_as_one_chunk_sent_at_once(daemon) -> None:
    """The fast path: events published in one reactor turn are joined into one chunk and
    sent straight to the socket at the end of the turn (nothing left in Twisted's buffer)."""
    service = await daemon(config())
    client = await subscribe(service.port_of("Events"))
    sink = service.sinks["Events"].sink
    (subscriber,) = sink.subscribers
    before = len(client.received)
    publish(service, 1, 2, 3)
    assert sink.batch.scheduled, "written at the end of the turn, not per event"
    sink.flush()
    transport = subscriber.transport
    assert transport._tempDataLen == 0 and transport.dataBuffer == b"", "sent by send() at once, not buffered"
    assert sink.counters["events_out"] == 3
    await wait_for(lambda: len(messages(bytes(client.received))) == 3, what="the three events")
    body = bytes(client.received[before:])
    size, _, rest = body.partition(b"\r\n")
    assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\r\n"), "one chunk holds all three events"
    assert [m.data.count('"n":') for m in messages(bytes(client.received))] == [1, 1, 1]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_subscriber_sockets_have_nagle_off(daemon) -> None:
    import socket

    service = await daemon(config())
    client = await subscribe(service.port_of("Events"))
    (subscriber,) = service.sinks["Events"].sink.subscribers
    assert subscriber.transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await client.close()


@pytest.mark.reactor_free
def test_a_subscriber_that_joins_mid_turn_gets_each_event_once() -> None:
    """An event already published in the turn a subscriber arrives in reaches it once:
    from history (it resumes from before it), not again with the turn's batch."""
    from twisted.internet.testing import StringTransport
    from twisted.web.test.requesthelper import DummyRequest

    from sse_daemon.config.validate import validate
    from sse_daemon.config.yamlfile import load_yaml
    from sse_daemon.mapping.mappers import make_mapper
    from sse_daemon.connectors.sink import SseSink

    loaded = validate(load_yaml(config(**{"history.size": 10, "flush.interval": 0}), "sink.yaml"))
    (connector,) = loaded.sinks
    clock = Clock()
    sink = SseSink(connector, make_mapper(connector.options.mapping, loaded.streams["Events"].schema), clock)
    sink.publish([Event({"n": 1, "text": "hi"})])
    clock.advance(0)
    (first,) = messages(b"\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in sink.history.resume("0").frames))
    sink.publish([Event({"n": 2, "text": "hi"})])  # pending: this turn has not ended
    request = DummyRequest([b"events"])
    request.requestHeaders.setRawHeaders(b"last-event-id", [first.id.encode()])
    request.transport = StringTransport()  # the sink writes events to the transport itself
    request.channel = request.transport  # and closes the connection through the channel
    request.write = request.transport.write
    request.registerProducer = lambda producer, streaming: None  # DummyRequest pulls in a loop
    sink.subscribe(request)
    sink.publish([Event({"n": 3, "text": "hi"})])
    clock.advance(0)  # the end of the turn
    body = request.transport.value()
    assert [n for n in (1, 2, 3) if b'"n":%d,' % n in body] == [2, 3]
    assert body.count(b'"n":2,') == 1
    sink.close_all()


@pytest.mark.reactor_free
def test_a_publish_is_taken_whole_and_an_event_that_cannot_be_written_leaves_the_others_be() -> None:
    """The sink takes a publish's events in one call (ids, frames, history, the turn's write at once);
    an event its encoder refuses (a bug: values are checked on entry) is counted and left out, alone."""
    from twisted.internet.testing import StringTransport
    from twisted.web.test.requesthelper import DummyRequest

    from sse_daemon.config.validate import validate
    from sse_daemon.config.yamlfile import load_yaml
    from sse_daemon.mapping.mappers import make_mapper
    from sse_daemon.connectors.sink import SseSink

    loaded = validate(load_yaml(config(**{"history.size": 10}), "sink.yaml"))
    (connector,) = loaded.sinks
    clock = Clock()
    mapper = make_mapper(connector.options.mapping, loaded.streams["Events"].schema)
    sink = SseSink(connector, mapper, clock)
    request = DummyRequest([b"events"])
    request.transport = request.channel = StringTransport()
    request.write = request.transport.write
    request.registerProducer = lambda producer, streaming: None
    sink.subscribe(request)
    encode = mapper.encode

    def refusing_two(event: Event) -> str:
        if event.values["n"] == 2:
            raise RuntimeError("an encoder bug")
        return encode(event)

    mapper.encode = refusing_two  # type: ignore[method-assign]
    sink.publish([Event({"n": n, "text": "hi"}) for n in (1, 2, 3)])
    sink.publish([Event({"n": 4, "text": "hi"})])
    clock.advance(0)
    got = [m for m in EventStreamParser().feed(request.transport.value()) if isinstance(m, Message)]
    assert [json.loads(m.data)["event"]["n"] for m in got] == [1, 3, 4]
    ids = [int(m.id) for m in got]
    assert ids == sorted(set(ids)), "ids increase"
    assert [event_id for event_id, _, _ in sink.history.entries()] == ids, "history holds what was written, by the same ids"
    assert sink.counters["events_unmapped"] == 1 and sink.counters["events_in"] == 3
    sink.close_all()


@pytest.mark.reactor_free
def test_the_sinks_ids_for_a_publish_follow_each_other_and_never_go_back() -> None:
    from sse_daemon.connectors.sink.ids import EventIds

    clock = Clock()
    clock.advance(10.0)
    ids = EventIds(clock)
    first = ids.take(3)
    assert first == 10_000_000 and ids.take(2) == first + 3, "the same microsecond: on from the last"
    assert ids.next() == first + 5
    clock.advance(1.0)
    assert ids.take(4) == 11_000_000, "the clock moved on: its reading"
    assert ids.take(0) == 11_000_004 and ids.next() == 11_000_004, "none taken: none spent"
    clock.advance(-5.0)
    assert ids.next() == 11_000_005, "a clock gone back: still above the last"


@pytest_twisted.ensureDeferred
async def test_connect_and_leave_lines_are_bounded_in_a_storm(daemon, log_events) -> None:
    from sse_daemon.policy.limits import LogRate

    clock = Clock()
    service = await daemon(config(), clock=clock)
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    sink.routine_lines = LogRate(clock.seconds, burst=2, window=10)

    def connects() -> list[dict]:
        return [e for e in log_events if "connected to sink" in e.get("log_format", "")]

    clients = [await subscribe(port) for _ in range(5)]  # bounded
    assert len(connects()) == 2 and sink.counters["connections_opened"] == 5
    clock.advance(10)
    clients.append(await subscribe(port))
    assert len(connects()) == 3 and "3 more connects and leaves before this one were not logged" in connects()[-1]["held_back"]
    for client in clients:
        await client.close()
    await wait_for(lambda: sink.counters["connections_closed"] == 6, what="every leave counted")


@pytest.mark.reactor_free
def test_log_rate_lets_a_burst_through_per_window_and_tells_what_it_held() -> None:
    from sse_daemon.policy.limits import LogRate

    clock = Clock()
    rate = LogRate(clock.seconds, burst=3, window=10)
    assert [rate.allow() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    clock.advance(9.9)
    assert rate.allow() == (False, 0)
    clock.advance(0.1)
    assert rate.allow() == (True, 3) and rate.allow() == (True, 0)


def raw_sink(**options: object) -> tuple[Any, Clock]:
    """A raw-format SseSink of ``config(**options)`` on a Clock, outside any daemon."""
    from sse_daemon.config.validate import validate
    from sse_daemon.config.yamlfile import load_yaml
    from sse_daemon.connectors.sink import SseSink
    from sse_daemon.mapping.mappers import make_mapper

    loaded = validate(load_yaml(config(**{"sse.format": "raw", "flush.interval": 0, **options}), "sink.yaml"))
    (connector,) = loaded.sinks
    clock = Clock()
    return SseSink(connector, make_mapper(connector.options.mapping, loaded.streams["Events"].schema), clock), clock


def subscribe_stub(sink: Any) -> None:
    """Subscribe a request whose writes go to a StringTransport (no socket)."""
    from twisted.internet.testing import StringTransport
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"events"])
    request.transport = StringTransport()
    request.write = request.transport.write
    request.registerProducer = lambda producer, streaming: None
    sink.subscribe(request)


@pytest.mark.reactor_free
def test_a_raw_subscriber_cut_in_a_large_turn_is_cut_counted_and_logged_once(log_events) -> None:
    """A raw sink holds a slow subscriber's events one by one: past the bound in the middle of a turn it is cut,
    and the rest of the turn is not held for it again (each further bound crossed counted and logged another cut)."""
    sink, clock = raw_sink(**{"subscriber.queue.size": 10})
    subscribe_stub(sink)
    (subscriber,) = sink.subscribers
    subscriber.pauseProducing()  # its socket is full
    sink.publish([Event({"n": n, "text": "hi"}) for n in range(45)])
    clock.advance(0)
    assert sink.counters["dropped_slow"] == 1 and not sink.subscribers
    assert not subscriber.backlog, "nothing is held for a subscriber that was cut"
    assert sum("too slow" in str(event.get("log_format")) for event in log_events) == 1


@pytest.mark.reactor_free
def test_a_mass_cut_of_slow_subscribers_logs_a_bounded_number_of_lines(log_events) -> None:
    """A network blip can make thousands of subscribers slow at once: each cut is counted, but the log gets at most
    CONNECT_LOG_BURST lines a window, and the next line let through says how many were held back."""
    from twisted.logger import formatEvent

    from sse_daemon.connectors.sink.core import CONNECT_LOG_BURST, CONNECT_LOG_WINDOW

    sink, clock = raw_sink(**{"subscriber.queue.size": 1})
    for _ in range(CONNECT_LOG_BURST + 30):
        subscribe_stub(sink)
    for subscriber in sink.subscribers:
        subscriber.pauseProducing()  # every socket full at once
    sink.publish([Event({"n": n, "text": "hi"}) for n in range(3)])
    clock.advance(0)
    cuts = [event for event in log_events if "too slow" in str(event.get("log_format"))]
    assert sink.counters["dropped_slow"] == CONNECT_LOG_BURST + 30 and not sink.subscribers
    assert len(cuts) == CONNECT_LOG_BURST
    clock.advance(CONNECT_LOG_WINDOW)
    subscribe_stub(sink)
    (late,) = sink.subscribers
    late.pauseProducing()
    sink.publish([Event({"n": n, "text": "hi"}) for n in range(3)])
    clock.advance(0)
    told = [event for event in log_events if "too slow" in str(event.get("log_format"))][-1]
    assert "30 more slow subscribers cut before this one were not logged" in formatEvent(told)
