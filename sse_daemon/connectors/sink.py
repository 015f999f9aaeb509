"""The SSE sink (``type: sse-server``): every event of a stream to every subscriber.

Each event is mapped and encoded once; the same bytes go to every subscriber
and into a bounded history that subscribers resume from with
``Last-Event-ID``. Every subscriber is an ``IPushProducer`` with a bounded
queue, so one that stops reading is disconnected instead of growing memory
(``request.write`` alone would buffer without limit).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any, Callable
from urllib.parse import parse_qs

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from sse_daemon.bus.memory import IBus, ISubscription
from sse_daemon.config.model import ConnectorDef
from sse_daemon.daemon.drain import drain_sink  # staged close on shutdown
from sse_daemon.policy.limits import LogRate, should_log  # routine lines, bounded in a reconnect storm; sampled drops
from sse_daemon.connectors.history import History, Resume, reset_payload  # bounded history and the honest-resume decision
from sse_daemon.mapping.mappers import IMapper, MappingError
from sse_daemon.events.schema import Event
from sse_daemon.connectors.fanout import PUMP_BYTES, chunk, direct_socket, write_now  # one send() per subscriber per turn
from sse_daemon.wire.eventstream import encode_comment, encode_event
from sse_daemon.policy.storms import retry_frame, retry_hint  # jittered retry: against reconnect storms

#: seconds a shared bus has to say what follows a client's Last-Event-ID; then the client gets its
#: head from local history (with a reset event): a resuming client never waits longer for its head
BUS_REPLAY_TIMEOUT = 5.0

#: connect and leave lines logged per sink at most, per window of seconds; the rest are counted
CONNECT_LOG_BURST = 50
CONNECT_LOG_WINDOW = 10.0

OPENING = encode_comment("sse-daemon stream open")
HEARTBEAT = encode_comment("heartbeat")


class EventIds:
    """Opaque, strictly increasing ids that are not reused after a restart.

    An id is the wall-clock time in microseconds, bumped by one when two
    events fall in the same microsecond; a restarted daemon therefore starts
    above every id it gave out before (unless the clock went backwards).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, int(self._clock.seconds() * 1_000_000))
        return self._last


@implementer(IPushProducer)
class Subscriber:
    """One connected client: written to at once while its socket keeps up, and
    given a bounded backlog while it does not (``request.write`` alone would
    buffer without limit)."""

    def __init__(self, sink: "SseSink", request: IRequest, peer: str) -> None:
        self.sink = sink
        self.request = request
        self.transport = request.transport
        self.socket = direct_socket(self.transport)  # None: every write goes through Twisted (TLS)
        self.peer = peer
        self.paused = False
        self.gone = False
        #: the response uses chunked transfer encoding (known once its head is written)
        self.chunked = False
        #: bytes not yet handed to the transport: (data, events, live); replayed history is
        #: not live and does not count against the bound (history bounds it already)
        self.backlog: deque[tuple[bytes, int, bool]] = deque()
        self.queued_events = 0
        self.queued_bytes = 0
        self.events_sent = 0
        self.connected_at = sink.clock.seconds()

    def deliver(self, frames: list[bytes], data: bytes, chunked: bytes) -> bool:
        """The live events of one reactor turn: ``data`` is their frames joined, ``chunked``
        the same as HTTP chunks, both shared by every subscriber. False when held instead."""
        if self.gone:
            return False
        if self.paused or self.backlog:
            if self.sink.raw:  # each raw event keeps its own chunk: nothing else separates them
                for frame in frames:
                    self.hold(frame, 1, live=True)
            else:
                self.hold(data, len(frames), live=True)
            return False
        write_now(self.transport, self.socket, chunked if self.chunked else data)
        self.events_sent += len(frames)
        return True

    def hold(self, data: bytes, events: int, live: bool) -> None:
        self.backlog.append((data, events, live))
        if live:
            self.queued_events += events
            self.queued_bytes += len(data)
            if self.queued_events > self.sink.queue_size or self.queued_bytes > self.sink.queue_bytes:
                self.sink.drop_slow(self)

    def pump(self) -> None:
        """Write the backlog, up to ``PUMP_BYTES`` at a time, until the transport pauses us."""
        while self.backlog and not self.paused and not self.gone:
            parts: list[bytes] = []
            size = events = live_events = live_bytes = 0
            while self.backlog and size < PUMP_BYTES:
                data, count, live = self.backlog.popleft()
                parts.append(data)
                size += len(data)
                events += count
                if live:
                    live_events += count
                    live_bytes += len(data)
            self.queued_events -= live_events
            self.queued_bytes -= live_bytes
            write_now(self.transport, self.socket, self.sink.wire(parts) if self.chunked else b"".join(parts))
            self.events_sent += events
            self.sink.counters["events_out"] += events
            self.sink.counters["bytes_written"] += size

    def heartbeat(self) -> None:
        # A paused or backlogged subscriber has bytes in flight already.
        if not self.gone and not self.paused and not self.backlog:
            self.request.write(HEARTBEAT)

    # IPushProducer: the transport tells us when its buffers are full or drained.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self.gone = True
        self.backlog.clear()
        self.queued_events = self.queued_bytes = 0


class SseSink:
    """The sink's state: subscribers, history, ids and counters. Driven by the bus and the resource."""

    log = Logger()

    def __init__(
        self, connector: ConnectorDef, mapper: IMapper, clock: IReactorTime,
        jitter: Callable[[], float] = random.random, turns: IReactorTime | None = None,
        lag_observer: Callable[[float], None] | None = None, forward: Callable[[str | None, bytes], None] | None = None,
    ) -> None:
        self.connector = connector
        self.name = connector.name
        self.mapper = mapper
        self.clock = clock
        self.ids = EventIds(clock)
        self.history = History(
            connector["history.size"], clock.seconds, int(clock.seconds() * 1_000_000),
            connector["history.max.age"], connector["history.max.bytes"],
        )
        self.reset_event: str = connector["resume.reset.event"]
        #: reconnect-storm control: each subscriber's own retry: hint (ms), drawn with ``jitter``
        self.retry_min: int = connector["retry.min"]
        self.retry_max: int = connector["retry.max"]
        self.jitter = jitter
        self.queue_size: int = connector["subscriber.queue.size"]
        self.queue_bytes: int = connector["subscriber.queue.bytes"]
        #: sse.format raw: bare payloads with the mapper's Content-Type, no framing,
        #: opening comment, ids, resume or heartbeat, as the original sink wrote them
        self.raw = connector.options.get("sse.format") == "raw"
        content_type = mapper.content_type.encode() if self.raw else b"text/event-stream; charset=utf-8"
        self.headers = [(b"Content-Type", content_type),
                        (b"Cache-Control", b"no-cache"),
                        (b"X-Accel-Buffering", b"no")]
        for name, value in connector["headers"]:
            self.headers = [h for h in self.headers if h[0].lower() != name.lower().encode()]
            self.headers.append((name.encode("latin-1"), value.encode("latin-1", "replace")))
        self.subscribers: set[Subscriber] = set()
        self.counters: Counter[str] = Counter()
        #: requests refused before they became subscribers, by reason (counted by the guard)
        self.rejected: Counter[str] = Counter()
        #: the admin's lag histogram: called once per event with the seconds from
        #: the event's ingress to its hand-off to every subscriber's socket
        self.lag_observer = lag_observer
        #: set by use_bus_ids on a shared bus: ``replay(after, limit)`` -> Deferred of what follows an id there
        self.bus_replay: Callable[[str | None, int], Deferred] | None = None
        #: subscribers waiting for a bus replay, with the live frames that arrived meanwhile
        self._replaying: dict[Subscriber, list[tuple[Any, bytes]]] = {}
        #: what schedules the end-of-turn write: the real reactor even when ``clock`` is a test's Clock
        self.turns = turns if turns is not None else clock
        #: this turn's frames (and ingress times), written by ``flush``
        self._turn: list[bytes] = []
        self._turn_ingress: list[float] = []
        self._flush_call: Any = None
        #: connect and leave lines: at most CONNECT_LOG_BURST per CONNECT_LOG_WINDOW (a reconnect storm)
        self.routine_lines = LogRate(clock.seconds, CONNECT_LOG_BURST, CONNECT_LOG_WINDOW)
        #: when worker processes serve this sink (workers/pool.py): gets every encoded event and its id
        self.forward = forward

    def use_bus_ids(self, replay: Callable[[str | None, int], Deferred], key: Callable[[str], Any],
                    show: Callable[[Any], str], below: Callable[[Any], Any]) -> None:
        """On a shared bus, send the bus's ids (the same on every instance) instead of our own,
        and resume from the bus an id this history does not cover (another instance's, or older)."""
        self.bus_replay = replay
        self.history = History(
            self.connector["history.size"], self.clock.seconds, None,
            self.connector["history.max.age"], self.connector["history.max.bytes"], key, show, below,
        )

    # -- from the bus
    def publish(self, event: Event) -> None:
        if self.raw:
            data = self.encode(event, None)
            if data is not None:
                self.deliver(None, data, event.ingress)
            return
        if self.bus_replay is not None and event.bus_id is not None:
            event_id, id_text = self.history.key(event.bus_id), event.bus_id
        else:
            event_id = self.ids.next()  # one spent on an event that is dropped leaves a gap, which ids may have
            id_text = str(event_id)
        frame = self.encode(event, id_text)
        if frame is not None:
            self.deliver(event_id, frame, event.ingress)

    def encode(self, event: Event, id_text: str | None) -> bytes | None:
        """The event's bytes (an SSE frame with ``id_text``, or the bare payload for None), or None when
        it cannot be written: counted in ``events_unmapped`` and logged sampled, never raised.

        Events are checked where they enter (validate.py), so only ``map.validate.json`` refusing a
        template's output should get here; anything else is a bug, logged with its traceback.
        """
        try:
            payload = self.mapper.encode(event)
            return payload.encode("utf-8") if id_text is None else encode_event(payload, id=id_text)
        except MappingError as e:  # map.validate.json refused the output
            self.counters["events_unmapped"] += 1
            if should_log(self.counters["events_unmapped"]):
                self.log.warn("sink {sink} dropped an event: {reason} ({count} so far)", sink=self.name, reason=str(e),
                              count=self.counters["events_unmapped"])
        except Exception:
            self.counters["events_unmapped"] += 1
            if should_log(self.counters["events_unmapped"]):
                self.log.failure("sink {sink} could not encode an event ({count} so far); it is dropped", sink=self.name,
                                 count=self.counters["events_unmapped"])
        return None

    def deliver(self, event_id: Any, frame: bytes, ingress: float | None = None) -> None:
        """Keep an encoded event in history and send it to every subscriber at the end of
        this reactor turn, together with the others of the turn (one write per subscriber)."""
        if event_id is not None:
            self.history.append(event_id, frame)
            for live in self._replaying.values():
                live.append((event_id, frame))
        if self.forward is not None:
            self.forward(None if event_id is None else self.history.show(event_id), frame)
        self.counters["events_in"] += 1
        self._turn.append(frame)
        if ingress:
            self._turn_ingress.append(ingress)
        if self._flush_call is None:
            self._flush_call = self.turns.callLater(0, self.flush)

    def wire(self, frames: list[bytes]) -> bytes:
        """Frames as HTTP chunks: one chunk for all, or one per event on a raw sink
        (a client of bare payloads may tell them apart by the chunks alone)."""
        if self.raw:
            return b"".join(map(chunk, frames))
        return chunk(frames[0] if len(frames) == 1 else b"".join(frames))

    def flush(self) -> None:
        """Write this turn's events: encoded and chunk-framed once, the same bytes to everyone."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        frames, self._turn = self._turn, []
        ingress, self._turn_ingress = self._turn_ingress, []
        if frames and self.subscribers:  # no subscribers: a sink whose workers serve it, or an idle one
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            chunked = self.wire(frames)
            written = 0
            for subscriber in tuple(self.subscribers):
                written += subscriber.deliver(frames, data, chunked)
            self.counters["events_out"] += written * len(frames)
            self.counters["bytes_written"] += written * len(data)
        if self.lag_observer is not None:
            now = self.clock.seconds()
            for at in ingress:
                self.lag_observer(now - at)

    def heartbeat(self) -> None:
        for subscriber in tuple(self.subscribers):
            subscriber.heartbeat()

    # -- from the resource
    def subscribe(self, request: IRequest) -> None:
        peer = _peer(request)
        subscriber = Subscriber(self, request, peer)
        request.setResponseCode(200)
        for name, value in self.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        transport = getattr(request, "transport", None)
        if hasattr(transport, "setTcpKeepAlive"):
            transport.setTcpKeepAlive(True)
        request.registerProducer(subscriber, True)
        request.notifyFinish().addBoth(self._finished, subscriber)
        last_event_id = None if self.raw else _last_event_id(request)
        if last_event_id is not None and self.bus_replay is not None and not self.history.covers(last_event_id):
            self._resume_from_bus(request, subscriber, last_event_id)
            return
        resume = self.history.resume(last_event_id) if last_event_id is not None else None
        self._start(request, subscriber, resume, last_event_id)

    def _start(self, request: IRequest, subscriber: Subscriber, resume: Resume | None, last_event_id: str | None) -> None:
        """Write the head, replay ``resume``, then deliver live events."""
        show = self.history.show
        if resume is not None and resume.after is not None:  # honest resume: say where replay continues (docs/sink.md, "Resume, honestly")
            request.setHeader(b"SSE-Replay-From", show(resume.after).encode())
        self.flush()  # this turn's events went to the others; this one gets them from history
        # the head at once (proxies flush on the comment), then this subscriber's own retry: hint
        request.write(b"" if self.raw else OPENING + retry_frame(retry_hint(self.retry_min, self.retry_max, self.jitter)))
        subscriber.chunked = bool(getattr(request, "chunked", False))
        if hasattr(subscriber.transport, "setTcpNoDelay"):
            subscriber.transport.setTcpNoDelay(True)  # writes are whole turns already: no Nagle delay
        if resume is not None:
            if resume.reset is not None:
                self.counters["resume_reset_" + resume.reset.replace("-", "_")] += 1
                subscriber.hold(encode_event(reset_payload(resume, show), event=self.reset_event,
                                             id=None if resume.after is None else show(resume.after)), 1, live=False)
            else:
                self.counters["resume_exact"] += 1
            for frame in resume.frames:
                subscriber.hold(frame, 1, live=False)
            self.counters["events_replayed"] += len(resume.frames)
            subscriber.pump()
        self.subscribers.add(subscriber)
        self.counters["connections_opened"] += 1
        log, held = self.routine_lines.allow()
        if log:
            self.log.info(
                "subscriber {peer} connected to sink {sink} (last event id {last_event_id!r}, {count} connected){held_back}",
                peer=subscriber.peer, sink=self.name, last_event_id=last_event_id, count=len(self.subscribers),
                held_back=_held_back(held),
            )

    def _resume_from_bus(self, request: IRequest, subscriber: Subscriber, last_event_id: str) -> None:
        """Ask the bus what follows an id this history does not cover; live events wait meanwhile.

        The head is written once the answer is in, so it can carry SSE-Replay-From. The bus has
        :data:`BUS_REPLAY_TIMEOUT` seconds: after that, or if the replay fails, the client is
        answered from local history (with a reset event, since that does not cover its id).
        """
        try:
            self.history.key(last_event_id)
            after: str | None = last_event_id
        except ValueError:
            after = None
        self._replaying[subscriber] = []
        self.counters["bus_replays"] += 1
        d = _within(self.bus_replay(after, max(self.history.size, 1)), BUS_REPLAY_TIMEOUT, self.clock)  # type: ignore[misc]
        d.addCallback(self._bus_resume, subscriber, last_event_id)
        d.addErrback(self._bus_replay_failed, subscriber, last_event_id)
        d.addCallback(lambda resume: None if resume is None else self._start(request, subscriber, resume, last_event_id))
        d.addErrback(lambda f: self.log.failure("resuming subscriber {peer} of sink {sink} failed", f,
                                                peer=subscriber.peer, sink=self.name))

    def _bus_resume(self, replay: Any, subscriber: Subscriber, last_event_id: str) -> Resume | None:
        """What to send a subscriber from the bus's answer (None: it left meanwhile)."""
        live = self._replaying.pop(subscriber, [])
        if subscriber.gone:
            return None
        key = self.history.key
        frames: list[bytes] = []
        newest = key(replay.after) if replay.after else None
        for event in replay.events:
            newest = key(event.bus_id)
            frame = self.encode(event, event.bus_id)
            if frame is not None:
                frames.append(frame)
        # live events that arrived while the bus answered, minus those the answer had already
        frames += [frame for event_id, frame in live if newest is None or event_id > newest]
        after = key(replay.after) if replay.after else None
        oldest = key(replay.oldest) if replay.oldest else None
        return Resume(tuple(frames), after, replay.reset, last_event_id, oldest)

    def _bus_replay_failed(self, failure: Any, subscriber: Subscriber, last_event_id: str) -> Resume | None:
        self._replaying.pop(subscriber, None)
        if subscriber.gone:
            return None
        self.counters["bus_replays_failed"] += 1
        reason = failure.getErrorMessage() or failure.type.__name__
        if should_log(self.counters["bus_replays_failed"]):
            self.log.warn("sink {sink} could not ask the bus what follows {last_event_id!r} ({reason}); resuming from local history",
                          sink=self.name, last_event_id=last_event_id, reason=reason)
        return self.history.resume(last_event_id)

    def drop_slow(self, subscriber: Subscriber) -> None:
        self.counters["dropped_slow"] += 1
        self.log.warn(
            "subscriber {peer} of sink {sink} is too slow ({queued} events, {queued_bytes} bytes queued): disconnected{hint}",
            peer=subscriber.peer, sink=self.name, queued=subscriber.queued_events, queued_bytes=subscriber.queued_bytes,
            hint="" if self.raw else "; it may resume with Last-Event-ID",
        )
        subscriber.stopProducing()
        self.subscribers.discard(subscriber)
        subscriber.request.transport.abortConnection()

    def _finished(self, result: object, subscriber: Subscriber) -> None:
        self._replaying.pop(subscriber, None)
        subscriber.stopProducing()
        self.subscribers.discard(subscriber)
        self.counters["connections_closed"] += 1
        log, held = self.routine_lines.allow()
        if log:
            self.log.info(
                "subscriber {peer} left sink {sink} after {seconds:.1f}s and {events} events{held_back}",
                peer=subscriber.peer, sink=self.name, events=subscriber.events_sent,
                seconds=self.clock.seconds() - subscriber.connected_at, held_back=_held_back(held),
            )

    def close_all(self) -> None:
        """End every stream cleanly (used on stop; ``stopListening`` alone would leave them open)."""
        self.flush()
        for subscriber in (*self.subscribers, *self._replaying):  # and those waiting for a bus replay
            self.close(subscriber)

    def close(self, subscriber: Subscriber, final: bytes = b"") -> None:
        """End one stream cleanly, after ``final`` (a last comment or ``retry:``; not in raw format)."""
        self.flush()  # what was published before the close reaches it
        self.subscribers.discard(subscriber)
        self._replaying.pop(subscriber, None)
        if not subscriber.gone:
            subscriber.gone = True
            if final and not self.raw and not subscriber.paused and not subscriber.backlog:
                subscriber.request.write(final)
            subscriber.request.unregisterProducer()
            subscriber.request.finish()
            # finish() alone would keep the connection alive for another request
            subscriber.request.transport.loseConnection()


def _within(answer: Deferred, seconds: float, clock: IReactorTime) -> Deferred:
    """``answer``'s result, or a TimeoutError after ``seconds``, whichever comes first. Unlike
    ``addTimeout`` this does not wait for ``answer`` to honour its cancellation: a bus that
    swallows a cancel cannot hold a client's response head."""
    out: Deferred = Deferred()

    def settle(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)  # a Failure goes down the errbacks

    def expire() -> None:
        out.errback(defer.TimeoutError(f"no answer within {seconds:g}s"))
        answer.cancel()

    timer = clock.callLater(seconds, expire)
    answer.addBoth(settle)
    return out


def _held_back(count: int) -> str:
    return f" ({count} more connects and leaves before this one were not logged: more than {CONNECT_LOG_BURST} in {CONNECT_LOG_WINDOW:g}s)" if count else ""


def _peer(request: IRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{address.port}" if host is not None else str(address)


def _last_event_id(request: IRequest) -> str | None:
    """The id a client resumes from: the header, else a ``lastEventId`` or ``last_event_id``
    query parameter (for clients that cannot set headers); empty means none."""
    header = request.getHeader("last-event-id")
    if header is not None:
        return header.strip() or None
    query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
    values = query.get("lastEventId") or query.get("last_event_id")
    return (values[-1].strip() or None) if values else None


class SseSinkResource(Resource):
    """GET subscribes; HEAD answers the head only; other methods get 405."""

    isLeaf = True

    def __init__(self, sink: SseSink) -> None:
        super().__init__()
        self.sink = sink

    def render_GET(self, request: IRequest) -> object:
        self.sink.subscribe(request)
        return server.NOT_DONE_YET

    def render_HEAD(self, request: IRequest) -> bytes:
        for name, value in self.sink.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        return b""


def adopt_bus_ids(sink: SseSink, bus: IBus, stream: str) -> None:
    """On a shared bus, let ``sink`` send the bus's ids and resume from the bus (see use_bus_ids)."""
    replay = getattr(bus, "replay", None)
    if getattr(bus, "provides_ids", False) and replay is not None and not sink.raw:
        from sse_daemon.bus.redis import entry_key, key_below, show_key  # a shared bus's ids (no Redis client needed)

        sink.use_bus_ids(lambda after, limit: replay(stream, after, limit), entry_key, show_key, key_below)


class SseSinkService(Service):
    """Connects a sink to the bus and drives its heartbeat; on stop, ends every stream."""

    def __init__(self, sink: SseSink, bus: IBus, stream: str, clock: IReactorTime) -> None:
        self.sink = sink
        self.bus = bus
        self.stream = stream
        self.clock = clock
        self.setName(f"sink:{sink.name}")
        self._subscription: ISubscription | None = None
        self._heartbeat: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        adopt_bus_ids(self.sink, self.bus, self.stream)
        self._subscription = self.bus.subscribe(self.stream, self.sink.publish)
        interval = self.sink.connector["heartbeat.interval"]
        if interval > 0 and not self.sink.raw:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(interval, now=False)

    def drain(self, io: IReactorTime | None = None) -> Deferred:
        """Close subscribers in stages over ``drain.window`` (drain.py); the bus keeps feeding the others."""
        return drain_sink(self.sink, self.sink.connector["drain.window"], self.sink.connector["drain.batch.min"],
                          self.clock, self.sink.jitter, io)

    def _beat(self) -> None:
        # A LoopingCall stops for good on the first exception; a heartbeat must not.
        with self.sink.log.failuresHandled("heartbeat of sink {sink} failed", sink=self.sink.name):
            self.sink.heartbeat()

    def stopService(self) -> None:
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self.sink.close_all()
