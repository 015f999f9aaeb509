"""The SSE sink (``type: sse-server``): every event of a stream to every subscriber.

Each event is mapped and encoded once (encoding.py); the same bytes go to every
subscriber (subscriber.py), at the end of the reactor turn with the others of
that turn (batching.py), and into a bounded history that subscribers resume
from with ``Last-Event-ID`` (history.py). Ids are the sink's own (ids.py) or,
on a shared bus, the bus's, with what this history does not cover asked of
the bus (replay.py). :class:`SseSink` ties these together and keeps the counters.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Collection, Protocol, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from sse_daemon.bus.interfaces import IEventIds
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import SseServerOptions
from sse_daemon.connectors.history import History, Resume, reset_payload  # bounded history and the honest-resume decision
from sse_daemon.connectors.interfaces import ISubscriberSink
from sse_daemon.connectors.sink.batching import TurnBatch, wire
from sse_daemon.connectors.sink.durable import DurableHistory, HistoryStore  # history.path: acknowledged means durable
from sse_daemon.connectors.sink.encoding import FrameEncoder
from sse_daemon.connectors.sink.filtering import EventValues, Filters, chosen, deliver_filtered  # subscriber.where
from sse_daemon.connectors.sink.http import last_event_id as _last_event_id, peer_of
from sse_daemon.connectors.sink.ids import EventIds
from sse_daemon.connectors.sink.replay import BusReplayer, BusResumes
from sse_daemon.connectors.sink.subscriber import Select, Subscriber
from sse_daemon.events.schema import Event, Schema
from sse_daemon.mapping.mappers import IMapper
from sse_daemon.policy.limits import LogRate, excerpt  # routine lines, bounded in a reconnect storm
from sse_daemon.policy.storms import retry_frame, retry_hint  # jittered retry: against reconnect storms
from sse_daemon.wire.eventstream import encode_comment, encode_event

#: connect and leave lines logged per sink at most, per window of seconds; the rest are counted
CONNECT_LOG_BURST = 50
CONNECT_LOG_WINDOW = 10.0

OPENING = encode_comment("sse-daemon stream open")

#: ``forward(id_text, frame)``: every encoded event, in order, with its id (None on a raw sink)
Forward = Callable[[str | None, bytes], None]
#: ``lag_observer(seconds)``: from an event's ingress to its hand-off to every subscriber's socket
LagObserver = Callable[[float], None]


class HubTap(Protocol):
    """A hub (hub.py) with connections that read this sink: it gets each turn's frames with their ids."""

    def turn(self, sink: "SseSink", frames: list[bytes], ids: list[Any]) -> None: ...

    def heartbeat(self, sink: "SseSink") -> None: ...

    def close_readers(self, sink: "SseSink", final: bytes) -> None: ...

    def readers(self, name: str) -> list[Any]: ...

    def close(self, connection: Any, final: bytes = b"") -> None: ...


def response_headers(connector: ConnectorDef[SseServerOptions], content_type: bytes) -> list[tuple[bytes, bytes]]:
    """The head of every response: the stream's type, no caching or proxy buffering, then ``headers``."""
    headers = [(b"Content-Type", content_type), (b"Cache-Control", b"no-cache"), (b"X-Accel-Buffering", b"no")]
    for name, value in connector.options.headers:
        headers = [h for h in headers if h[0].lower() != name.lower().encode()]
        headers.append((name.encode("latin-1"), value.encode("latin-1", "replace")))
    return headers


def own_history(options: SseServerOptions, clock: IReactorTime) -> History:
    """A history of the sink's own ids (ids.py): every id from now on is above its first floor."""
    return History(options.history_size, clock.seconds, int(clock.seconds() * 1_000_000),
                   options.history_max_age, options.history_max_bytes)


def bus_history(options: SseServerOptions, clock: IReactorTime, ids: IEventIds, floor: Any = None, newest: Any = None) -> History:
    """A history keyed by ``ids``, a bus's scheme (or LOCAL_IDS: the daemon's own, copied in a worker).

    ``floor`` None: what came before is the bus's to say (the floor goes just below the
    first event); a worker process gives the daemon's ``floor`` and ``newest``.
    """
    return History(options.history_size, clock.seconds, floor, options.history_max_age, options.history_max_bytes,
                   ids.key, ids.show, ids.below, newest=newest)


@implementer(ISubscriberSink)
class SseSink:
    """The sink's state: subscribers, history, ids and counters. Driven by the bus and the resource.

    Its collaborators come in here: ``turns`` schedules the end-of-turn write (the real reactor
    even when ``clock`` is a test's Clock), ``forward`` gets every encoded event (worker processes
    serve the sink), ``lag_observer`` every event's lag (the admin's histogram). ``history`` is keyed
    by the id scheme the sink sends (:func:`own_history` by default: the sink numbers its events;
    :func:`bus_history` on a shared bus); ``bus_replay``, on a shared bus, asks it what follows an
    id this history does not cover, and makes the sink send the bus's ids (service.sink_for_bus).
    ``history_store``: the sink's history file (``history.path``, durable.py): its history starts
    from it, its ids go on above it, and each event's publish waits for the turn's commit.
    """

    log = Logger()

    def __init__(
        self, connector: ConnectorDef[SseServerOptions], mapper: IMapper, clock: IReactorTime,
        jitter: Callable[[], float] = random.random, turns: IReactorTime | None = None,
        forward: Forward | None = None, lag_observer: LagObserver | None = None,
        history: History | None = None, bus_replay: BusReplayer | None = None,
        history_store: HistoryStore | None = None, schema: Schema | None = None,
    ) -> None:
        self.connector = connector
        self.name = connector.name
        self.mapper = mapper
        self.clock = clock
        self.counters: Counter[str] = Counter()
        #: the history file's writer (history.path), or None: the history lives in memory only
        self.durable = (DurableHistory(history_store, connector.name, self.counters, self._committed)
                        if history_store is not None else None)
        if history is None:
            history = self.durable.start_history(connector.options, clock) if self.durable is not None else own_history(connector.options, clock)
        self.history = history
        self.ids = EventIds(clock, history.newest if self.durable is not None else None)
        self.reset_event: str = connector.options.resume_reset_event
        #: reconnect-storm control: each subscriber's own retry: hint (ms), drawn with ``jitter``
        self.retry_min: int = connector.options.retry_min
        self.retry_max: int = connector.options.retry_max
        self.jitter = jitter
        self.queue_size: int = connector.options.subscriber_queue_size
        self.queue_bytes: int = connector.options.subscriber_queue_bytes
        #: sse.format raw: bare payloads with the mapper's Content-Type, no framing,
        #: opening comment, ids, resume or heartbeat, as the original sink wrote them
        self.raw = connector.options.sse_format == "raw"
        self.headers = response_headers(connector, mapper.content_type.encode() if self.raw else b"text/event-stream; charset=utf-8")
        self.subscribers: set[Subscriber] = set()
        #: requests refused before they became subscribers, by reason (counted by the guard)
        self.rejected: Counter[str] = Counter()
        self.lag_observer = lag_observer
        self.forward = forward
        self.encoder = FrameEncoder(self.name, mapper, self.counters, self.log)
        #: on a shared bus: ``replay(after, limit)`` -> Deferred of what follows an id there
        self.bus_replay = bus_replay
        #: subscribers waiting for a bus replay, with the live frames that arrived meanwhile
        self.resumes = BusResumes(self.name, clock, self.counters, self.log, self.encode)
        #: this turn's frames, written by ``flush`` at its end
        self.batch = TurnBatch(turns if turns is not None else clock, self.flush, connector.options.flush_interval)
        #: connect and leave lines: at most CONNECT_LOG_BURST per CONNECT_LOG_WINDOW (a reconnect storm)
        self.routine_lines = LogRate(clock.seconds, CONNECT_LOG_BURST, CONNECT_LOG_WINDOW)
        #: slow-subscriber cuts, bounded alike: a network blip can cut thousands at once (dropped_slow counts them all)
        self.slow_lines = LogRate(clock.seconds, CONNECT_LOG_BURST, CONNECT_LOG_WINDOW)
        #: subscriber.where: filters by text, and the values of held events (None: the sink takes no filters)
        self.filters = (Filters(schema, connector.stream, self.counters)
                        if connector.options.subscriber_where and schema is not None and not self.raw else None)
        self.values = EventValues()
        #: subscribers with a filter now (0: every subscriber takes the turn's shared bytes, the plain loop)
        self.filtered = 0
        #: (subscriber, its filter) for the filtered loop, kept while no subscriber comes or goes
        self._targets: list[tuple[Subscriber, Select | None]] | None = None
        #: the ids of this turn's frames, kept only when filters or a hub need them
        self.tracking = self.filters is not None or (connector.options.hub_path is not None and not self.raw)
        self.turn_ids: list[Any] = []
        #: the id of the newest frame written to subscribers: a hub connection's position in this stream
        self.sent: Any = self.history.newest
        #: hubs with connections that read this sink now (hub.py)
        self.hubs: set[HubTap] = set()

    # -- the history file
    def start_writing(self) -> None:
        """Become the history file's writer (on start); keep what a predecessor kept meanwhile (a reload)."""
        if self.durable is not None:
            for event_id, frame, at in self.durable.take_over():
                self.history.append(event_id, frame, at)
                self.ids.above(event_id)

    def stop_writing(self) -> Deferred:
        """Commit what is held and let go of the history file (closed by its last user once every commit is done)."""
        self.flush()
        if self.durable is None:
            return succeed(None)
        store = self.durable.store
        return self.durable.settled().addCallback(lambda _: store.release())

    # -- from the bus
    def publish(self, events: Sequence[Event]) -> Deferred | None:
        """Take the events of one publish, in order (the bus's subscriber). With a history file: a Deferred
        that fires once they are committed (fails with HistoryUnavailable when the commit failed: the bus
        fails the publish with it).

        A batch goes through each step at once (ids, frames, history, the turn's write): the steps are a
        call each, and a body of 100 events paid them 100 times (bench/RESULTS.md, B1)."""
        if self.raw:
            frames, kept = self.encoder.encode_all(events, None)
            if kept is not None:
                events = [events[i] for i in kept]
            self._keep(None, frames, None, self._ingress(events))
            return None
        if self.bus_replay is None:
            first = self.ids.take(len(events))  # one spent on an event that is dropped leaves a gap, which ids may have
            keys: list[Any] = list(range(first, first + len(events)))
            texts = list(map(str, keys))
        else:  # the bus's ids: the same on every instance
            keys, texts = [], []
            for event in events:
                if event.bus_id is not None:
                    keys.append(self.history.key(event.bus_id))
                    texts.append(event.bus_id)
                else:
                    keys.append(self.ids.next())
                    texts.append(str(keys[-1]))
        frames, kept = self.encoder.encode_all(events, texts)
        if kept is not None:  # an event that cannot be written was left out (counted and logged by the encoder)
            events, keys = [events[i] for i in kept], [keys[i] for i in kept]
        if self.filters is not None:
            for key, event in zip(keys, events):
                self.values.add(key, event.values)
        if self.durable is not None and self.durable.writing:  # kept and sent once committed
            now = self.clock.seconds()
            commit = None
            for key, frame, event in zip(keys, frames, events):
                commit = self.durable.add(key, frame, now, event.ingress)  # the same Deferred for the turn's events
            return commit
        self._keep(keys, frames, None, self._ingress(events))
        return None

    def _ingress(self, events: Sequence[Event]) -> list[float | None]:
        """When the events entered the daemon, for the lag histogram: none kept without one (no admin)."""
        return [event.ingress for event in events] if self.lag_observer is not None else []

    def encode(self, event: Event, id_text: str | None) -> bytes | None:
        """The event's bytes, or None when it cannot be written (counted and logged: encoding.py)."""
        return self.encoder.encode(event, id_text)

    def deliver(self, event_id: Any, frame: bytes, ingress: float | None = None) -> None:
        """Keep one encoded event (a worker's copy of the daemon's: it has no history file) in history and send it
        to every subscriber at the end of this reactor turn, together with the others of the turn."""
        self._keep(None if event_id is None else [event_id], [frame], None, [ingress])

    def _committed(self, entries: list[tuple[int, float, bytes, float | None]]) -> None:
        """A batch is in the history file: now it is kept and sent, in order."""
        for event_id, at, frame, ingress in entries:
            self._keep([event_id], [frame], at, [ingress])

    def _keep(self, keys: list[Any] | None, frames: list[bytes], at: float | None, ingress: list[float | None]) -> None:
        """Keep ``frames`` (with their history ``keys``; None on a raw sink) and write them at the end of the turn."""
        if keys is not None:
            self.history.extend(keys, frames, at)
            if self.resumes.waiting:
                for key, frame in zip(keys, frames):
                    self.resumes.live(key, frame)
            if self.tracking:
                self.turn_ids.extend(keys)
                if self.filters is not None:
                    self.values.prune(self.history.floor)
        if self.forward is not None:
            show = self.history.show
            for key, frame in zip(keys or [None] * len(frames), frames):
                self.forward(None if key is None else show(key), frame)
        self.counters["events_in"] += len(frames)
        self.batch.extend(frames, ingress)

    def wire(self, frames: list[bytes]) -> bytes:
        """Frames as HTTP chunks (batching.py)."""
        return wire(frames, self.raw)

    def flush(self) -> None:
        """Write this turn's events: encoded and chunk-framed once, the same bytes to everyone."""
        frames, ingress = self.batch.take()
        ids: list[Any] = []
        if self.tracking:
            ids, self.turn_ids = self.turn_ids, []
        if frames and self.subscribers:  # no subscribers: a sink whose workers serve it, or an idle one
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            chunked = self.wire(frames)
            if self.filtered:
                self._deliver_filtered(frames, data, chunked, ids)
            else:
                written = 0
                for subscriber in tuple(self.subscribers):
                    written += subscriber.deliver(frames, data, chunked)
                self.counters["events_out"] += written * len(frames)
                self.counters["bytes_written"] += written * len(data)
        if self.tracking and frames:
            for hub in tuple(self.hubs):
                hub.turn(self, frames, ids)
            self.sent = ids[-1]
        if self.lag_observer is not None:
            now = self.clock.seconds()
            for at in ingress:
                self.lag_observer(now - at)

    def _deliver_filtered(self, frames: list[bytes], data: bytes, chunked: bytes, ids: list[Any]) -> None:
        """A turn with filtered subscribers: each filter picks from the shared frames (nothing is encoded again)."""
        values = [self.values.get(event_id) for event_id in ids]
        if self._targets is None:  # built again only after a subscriber came or went
            self._targets = [(subscriber, subscriber.select) for subscriber in self.subscribers]
        events, size, filtered = deliver_filtered(self._targets, frames, data, chunked, values, self.wire)
        self.counters["events_out"] += events
        self.counters["bytes_written"] += size
        self.counters["events_filtered"] += filtered

    def heartbeat(self) -> None:
        for subscriber in tuple(self.subscribers):
            subscriber.heartbeat()
        for hub in tuple(self.hubs):
            hub.heartbeat(self)

    # -- from the resource
    def subscribe(self, request: Request, select: Select | None = None) -> None:
        """Serve ``request`` the stream: every event, or those ``select`` (the subscriber's filter) passes."""
        subscriber = Subscriber(self, request, peer_of(request), select)
        subscriber.attach(self.headers)
        request.notifyFinish().addBoth(self._finished, subscriber)
        last_event_id = None if self.raw else _last_event_id(request)
        if last_event_id is not None and self.bus_replay is not None and not self.history.covers(last_event_id):
            self.resumes.ask(self.bus_replay, self.history, subscriber, last_event_id).addCallback(
                lambda resume: None if resume is None else self._start(request, subscriber, resume, last_event_id),
            ).addErrback(lambda f: self.log.failure("resuming subscriber {peer} of sink {sink} failed", f,
                                                    peer=subscriber.peer, sink=self.name))
            return
        resume = self.history.resume(last_event_id) if last_event_id is not None else None
        self._start(request, subscriber, resume, last_event_id)

    def _start(self, request: Request, subscriber: Subscriber, resume: Resume | None, last_event_id: str | None) -> None:
        """Write the head, replay ``resume``, then deliver live events."""
        show = self.history.show
        if resume is not None and resume.after is not None:  # honest resume: say where replay continues (docs/sink.md, "Resume, honestly")
            request.setHeader(b"SSE-Replay-From", show(resume.after).encode())
        self.flush()  # this turn's events went to the others; this one gets them from history
        # the head at once, then this subscriber's own retry: hint
        subscriber.open(b"" if self.raw else OPENING + retry_frame(retry_hint(self.retry_min, self.retry_max, self.jitter)))
        if resume is not None:
            if resume.reset is not None:
                self.counters["resume_reset_" + resume.reset.replace("-", "_")] += 1
                subscriber.hold(encode_event(reset_payload(resume, show), event=self.reset_event,
                                             id=None if resume.after is None else show(resume.after)), 1, live=False)
            else:
                self.counters["resume_exact"] += 1
            frames = list(resume.frames)
            if subscriber.select is not None:  # the history through the same filter
                frames = chosen(frames, [self.values.get(event_id) for event_id in resume.keys], subscriber.select)
                self.counters["events_filtered"] += len(resume.frames) - len(frames)
            for frame in frames:
                subscriber.hold(frame, 1, live=False)
            self.counters["events_replayed"] += len(frames)
            subscriber.pump()
        self.subscribers.add(subscriber)
        self._targets = None
        if subscriber.select is not None:
            self.filtered += 1
        self.counters["connections_opened"] += 1
        log, held = self.routine_lines.allow()
        if log:
            self.log.info(
                "subscriber {peer} connected to sink {sink} (last event id {last_event_id!r}, {count} connected){held_back}",
                peer=subscriber.peer, sink=self.name, last_event_id=excerpt(last_event_id), count=len(self.subscribers),
                held_back=_held_back(held),
            )

    def drop_slow(self, subscriber: Subscriber) -> None:
        self.counters["dropped_slow"] += 1
        log, held = self.slow_lines.allow()
        if log:
            self.log.warn(
                "subscriber {peer} of sink {sink} is too slow ({queued} events, {queued_bytes} bytes queued): disconnected{hint}{held_back}",
                peer=subscriber.peer, sink=self.name, queued=subscriber.queued_events, queued_bytes=subscriber.queued_bytes,
                hint="" if self.raw else "; it may resume with Last-Event-ID", held_back=held_cuts(held),
            )
        subscriber.stopProducing()
        self._discard(subscriber)
        subscriber.transport.abortConnection()

    def _finished(self, result: object, subscriber: Subscriber) -> None:
        self.resumes.forget(subscriber)
        subscriber.stopProducing()
        self._discard(subscriber)
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
        for subscriber in (*self.subscribers, *self.resumes.waiting):  # and those waiting for a bus replay
            self.close(subscriber)
        self.close_hub_readers()

    @property
    def hub_readers(self) -> int:
        """Hub connections that read this sink now (hub.path)."""
        return sum(len(hub.readers(self.name)) for hub in self.hubs)

    def stream_requests(self) -> list[Any]:
        """The request of every stream that reads this sink now: its subscribers (those waiting for a bus
        replay too) and the hub connections that read it. What its guard checks again (Guard.renew)."""
        own = [subscriber.request for subscriber in (*self.subscribers, *self.resumes.waiting)]
        return own + [connection.subscriber.request for hub in self.hubs for connection in hub.readers(self.name)]

    def end_streams(self, requests: Collection[Any], final: bytes) -> int:
        """End, after ``final``, the streams of ``requests`` that read this sink (a hub connection whole);
        how many ended."""
        ending = {id(request) for request in requests}
        own = [subscriber for subscriber in (*self.subscribers, *self.resumes.waiting) if id(subscriber.request) in ending]
        for subscriber in own:
            self.close(subscriber, final)
        ended = len(own)
        for hub in tuple(self.hubs):
            for connection in hub.readers(self.name):
                if id(connection.subscriber.request) in ending:
                    hub.close(connection, final)
                    ended += 1
        return ended

    def close_hub_readers(self, final: bytes = b"") -> None:
        """End the hub connections that read this sink (they resume the others on reconnect)."""
        for hub in tuple(self.hubs):
            hub.close_readers(self, final)

    def close(self, subscriber: Subscriber, final: bytes = b"") -> None:
        """End one stream cleanly, after ``final`` (a last comment or ``retry:``; not in raw format)."""
        self.flush()  # what was published before the close reaches it
        self._discard(subscriber)
        self.resumes.forget(subscriber)
        subscriber.end(final)

    def _discard(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            self._targets = None
            if subscriber.select is not None:
                self.filtered -= 1


def held_cuts(count: int) -> str:
    """What a slow-subscriber cut line adds when cuts before it were held back (slow_lines)."""
    return f" ({count} more slow subscribers cut before this one were not logged: more than {CONNECT_LOG_BURST} in {CONNECT_LOG_WINDOW:g}s)" if count else ""


def _held_back(count: int) -> str:
    return f" ({count} more connects and leaves before this one were not logged: more than {CONNECT_LOG_BURST} in {CONNECT_LOG_WINDOW:g}s)" if count else ""
