"""Several streams on one connection: a port's hub (``hub.path``), ``GET /hub?stream=A&stream=B``.

The sinks of a port that name the same ``hub.path`` take part. One request names
the streams (sink names) it wants; it passes the guard of each (auth, CORS and
limits of that sink: a refusal names the stream), then gets every event of each
stream on one response. Each event says its stream in the SSE ``event:`` field
(``addEventListener('A', ...)`` in a browser), and its ``id:`` carries the
position of *every* stream of the connection (``A:17,B:42``), so the
``Last-Event-ID`` a browser sends by itself on reconnect resumes all of them
exactly, or, for a stream whose history no longer covers it, says so in one
reset event that names those streams.

Frames are not encoded again: a sink's frame loses its ``id:`` line and gains
``event:``, once per turn, and the ids are written once per turn for all the
connections that read the same streams; a filter (``where.A=...``) only picks
from those shared frames. While a connection is live, its position in every
stream is that stream's newest written event (``SseSink.sent``), the same for
every connection of the same streams: which is what lets them share the bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from sse_daemon.config.filters import FilterError
from sse_daemon.connectors.history import reset_payload
from sse_daemon.connectors.sink.batching import wire
from sse_daemon.connectors.sink.core import OPENING, SseSink, held_cuts
from sse_daemon.connectors.sink.filtering import bad_filter, chosen, deliver_filtered, query_values
from sse_daemon.connectors.sink.http import last_event_id, peer_of
from sse_daemon.connectors.sink.subscriber import Select, Subscriber
from sse_daemon.edge.guard import EXPIRED, Guard, Passage
from sse_daemon.policy.storms import retry_frame, retry_hint
from sse_daemon.wire.eventstream import encode_event

__all__ = ["MAX_HUB_STREAMS", "Hub", "HubResource", "hub_id", "hub_positions"]

#: the most streams one hub request may name
MAX_HUB_STREAMS = 32


def hub_id(streams: tuple[str, ...], positions: Mapping[str, str | None]) -> str:
    """The id of a hub frame: every stream's position, ``A:17,B:42`` (a stream with none yet is left out)."""
    return ",".join(f"{name}:{positions[name]}" for name in streams if positions.get(name) is not None)


def hub_positions(text: str) -> dict[str, str] | None:
    """The positions in a hub id, by stream; None when ``text`` is not one. Each part is cut at its last
    colon: a stream's name may hold one, a position never does (the sink's numbers, Redis's ``ms-seq``)."""
    positions: dict[str, str] = {}
    for part in text.split(","):
        name, colon, position = part.rpartition(":")
        if not colon or not name or not position:
            return None
        positions[name] = position
    return positions


def hub_body(event: bytes, frame: bytes) -> bytes:
    """A sink's frame as a hub frame without its id: ``event: NAME`` first, the id line and end left off."""
    if frame.startswith(b"id:"):
        frame = frame[frame.index(b"\n") + 1:]
    return b"event: " + event + b"\n" + frame[:-1]


class HubConnection:
    """One hub subscriber: its streams, filters, and the Subscriber that writes to its socket."""

    raw = False

    def __init__(self, hub: "Hub", request: server.Request, streams: tuple[str, ...], selects: dict[str, Select]) -> None:
        self.hub = hub
        self.streams = streams
        self.selects = selects
        sinks = [hub.sinks[name] for name in streams]
        self.clock: IReactorTime = hub.clock
        #: each sink's limits apply: the tightest queue bounds of its streams
        self.queue_size = min(sink.queue_size for sink in sinks)
        self.queue_bytes = min(sink.queue_bytes for sink in sinks)
        #: what the Subscriber counts while it writes a backlog
        self.counters: Counter[str] = Counter()
        self.subscriber = Subscriber(self, request, peer_of(request))

    def wire(self, frames: list[bytes]) -> bytes:
        return wire(frames, False)

    def drop_slow(self, subscriber: Subscriber) -> None:
        self.hub.drop_slow(self)


class Hub:
    """The connections of one hub path, grouped by the streams they read (their frames are shared)."""

    log = Logger()

    def __init__(self, path: str, members: Mapping[str, tuple[SseSink, Guard]], clock: IReactorTime) -> None:
        self.path = path
        self.sinks = {name: sink for name, (sink, _) in members.items()}
        self.guards = {name: guard for name, (_, guard) in members.items()}
        self.clock = clock
        self.groups: dict[tuple[str, ...], set[HubConnection]] = {}

    # -- from the sinks (core.HubTap)
    def turn(self, sink: SseSink, frames: list[bytes], ids: list[Any]) -> None:
        """A turn of ``sink``'s frames to every connection that reads it: built once per group of streams."""
        name = sink.name
        bodies: list[bytes] | None = None
        values: list[Mapping[str, Any] | None] | None = None
        for streams, connections in tuple(self.groups.items()):
            if name not in streams:
                continue
            if bodies is None:
                bodies = [hub_body(name.encode(), frame) for frame in frames]
            positions = {other: self._show(other, self.sinks[other].sent) for other in streams}
            hub_frames = []
            for body, event_id in zip(bodies, ids):
                positions[name] = sink.history.show(event_id)
                hub_frames.append(body + b"id: " + hub_id(streams, positions).encode() + b"\n\n")
            if values is None:
                values = [sink.values.get(event_id) for event_id in ids] if sink.filters is not None else [None] * len(ids)
            targets = [(connection.subscriber, connection.selects.get(name)) for connection in connections]
            events, size, filtered = deliver_filtered(targets, hub_frames, b"".join(hub_frames), self._wire(hub_frames), values, self._wire)
            sink.counters["events_out"] += events
            sink.counters["bytes_written"] += size
            sink.counters["events_filtered"] += filtered

    def heartbeat(self, sink: SseSink) -> None:
        """Each connection gets the heartbeat of its first stream only."""
        for streams, connections in tuple(self.groups.items()):
            if streams[0] == sink.name:
                for connection in tuple(connections):
                    connection.subscriber.heartbeat()

    def close_readers(self, sink: SseSink, final: bytes) -> None:
        for connection in self.readers(sink.name):
            self.close(connection, final)

    def readers(self, name: str) -> list[HubConnection]:
        """The connections that read stream ``name`` now."""
        return [connection for streams, connections in self.groups.items() if name in streams for connection in connections]

    # -- connections
    def start(self, request: server.Request, streams: tuple[str, ...], wheres: Mapping[str, str]) -> Any:
        """After every stream's guard let ``request`` through: its filters, the head, the replay, then live."""
        selects: dict[str, Select] = {}
        for name, text in wheres.items():
            filters = self.sinks[name].filters
            if filters is None:
                return bad_filter(request, FilterError(f"sink {name} takes no filters (its subscriber.where option is off)", text), name)
            try:
                selects[name] = filters.compile(text)
            except FilterError as e:
                self.sinks[name].rejected["bad-filter"] += 1
                return bad_filter(request, e, name)
        connection = HubConnection(self, request, streams, selects)
        subscriber = connection.subscriber
        first = self.sinks[streams[0]]
        subscriber.attach([header for name in streams for header in self.sinks[name].headers])
        request.notifyFinish().addBoth(self._finished, connection)
        for name in streams:
            self.sinks[name].flush()  # this turn's events went to the others; this one gets them from history
        subscriber.open(OPENING + retry_frame(retry_hint(first.retry_min, first.retry_max, first.jitter)))
        self._replay(connection, last_event_id(request))
        self.groups.setdefault(streams, set()).add(connection)
        for name in streams:
            sink = self.sinks[name]
            sink.hubs.add(self)
            sink.counters["connections_opened"] += 1
            sink.counters["hub_subscribers"] += 1
        self.log.debug("hub subscriber {peer} connected to {path} for {streams}", peer=subscriber.peer, path=self.path,
                       streams=", ".join(streams))
        return server.NOT_DONE_YET

    def _replay(self, connection: HubConnection, last_id: str | None) -> None:
        """What a reconnect missed, stream by stream; one reset event first naming the streams history could not cover."""
        streams = connection.streams
        positions = {name: self._show(name, self.sinks[name].sent) for name in streams}
        if last_id is None:
            return
        asked = hub_positions(last_id)
        plans = []
        resets: dict[str, Any] = {}
        for name in streams:
            sink = self.sinks[name]
            if asked is not None and name not in asked:
                continue  # a stream new to this connection: from now on
            resume = sink.history.resume(asked[name] if asked is not None else "")
            if resume.reset is not None:
                sink.counters["resume_reset_" + resume.reset.replace("-", "_")] += 1
                resets[name] = json.loads(reset_payload(resume, sink.history.show))
            else:
                sink.counters["resume_exact"] += 1
            positions[name] = None if resume.after is None else sink.history.show(resume.after)
            plans.append((name, sink, resume))
        subscriber = connection.subscriber
        if resets:
            reset_event = self.sinks[streams[0]].reset_event
            subscriber.hold(encode_event(json.dumps({"streams": resets}, separators=(",", ":")), event=reset_event,
                                         id=hub_id(streams, positions) or None), 1, live=False)
        for name, sink, resume in plans:
            event = name.encode()
            select = connection.selects.get(name)
            replayed = 0
            for event_id, frame in zip(resume.keys, resume.frames):
                positions[name] = sink.history.show(event_id)
                if select is not None and not chosen((frame,), (sink.values.get(event_id),), select):
                    sink.counters["events_filtered"] += 1
                    continue
                subscriber.hold(hub_body(event, frame) + b"id: " + hub_id(streams, positions).encode() + b"\n\n", 1, live=False)
                replayed += 1
            sink.counters["events_replayed"] += replayed
        subscriber.pump()

    def close(self, connection: HubConnection, final: bytes = b"") -> None:
        self._forget(connection)
        connection.subscriber.end(final)

    def drop_slow(self, connection: HubConnection) -> None:
        subscriber = connection.subscriber
        for name in connection.streams:
            self.sinks[name].counters["dropped_slow"] += 1
        log, held = self.sinks[connection.streams[0]].slow_lines.allow()  # bounded with that sink's own cuts
        if log:
            self.log.warn("hub subscriber {peer} of {streams} is too slow ({queued} events, {queued_bytes} bytes queued): "
                          "disconnected; it may resume with Last-Event-ID{held_back}", peer=subscriber.peer,
                          streams=", ".join(connection.streams), queued=subscriber.queued_events,
                          queued_bytes=subscriber.queued_bytes, held_back=held_cuts(held))
        subscriber.stopProducing()
        self._forget(connection)
        subscriber.transport.abortConnection()

    def expired(self, name: str, request: IRequest) -> None:
        """The token stream ``name`` let it in with expired: the connection ends (it reconnects with a new one),
        counted by that stream's sink as one ended at its token's expiry (sse_daemon_sink_streams_ended_total)."""
        for connections in tuple(self.groups.values()):
            for connection in tuple(connections):
                if connection.subscriber.request is request:
                    log, _ = self.sinks[name].routine_lines.allow()  # bounded as a sink's expiries are
                    if log:
                        self.log.info("closing hub subscriber {peer}: an access token expired", peer=connection.subscriber.peer)
                    self.sinks[name].counters["closed_token_expired"] += 1
                    self.close(connection, EXPIRED)

    def _finished(self, result: object, connection: HubConnection) -> None:
        connection.subscriber.stopProducing()
        self._forget(connection)

    def _forget(self, connection: HubConnection) -> bool:
        """Once per connection, however it ends (the client, a slow drop, an expiry, a revocation, a drain): counted closed."""
        group = self.groups.get(connection.streams)
        if group is None or connection not in group:
            return False
        group.discard(connection)
        if not group:
            del self.groups[connection.streams]
        for name in connection.streams:
            self.sinks[name].counters["hub_subscribers"] -= 1
            self.sinks[name].counters["connections_closed"] += 1
            if not self.readers(name):
                self.sinks[name].hubs.discard(self)
        return True

    def _show(self, name: str, key: Any) -> str | None:
        return None if key is None else self.sinks[name].history.show(key)

    @staticmethod
    def _wire(frames: list[bytes]) -> bytes:
        return wire(frames, False)


class HubResource(Resource):
    """``GET <hub.path>?stream=A&stream=B``: checks the request, then each stream's guard, then the hub."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: server.Request) -> Any:
        return self._through_guards(request, self.hub.start)

    def render_HEAD(self, request: server.Request) -> Any:
        """The head a GET would get (after the same checks), without opening a stream."""

        def head(request: server.Request, streams: tuple[str, ...], wheres: Mapping[str, str]) -> bytes:
            for name in streams:
                for header, value in self.hub.sinks[name].headers:
                    request.responseHeaders.setRawHeaders(header, [value])
            return b""

        return self._through_guards(request, head)

    def _through_guards(self, request: server.Request, answer: Callable[[server.Request, tuple[str, ...], Mapping[str, str]], Any]) -> Any:
        streams = tuple(dict.fromkeys(name.strip() for value in query_values(request, "stream") for name in value.split(",") if name.strip()))
        known = self.hub.sinks
        if not streams:
            return refuse(request, 400, "name the streams to read: ?stream=A&stream=B (served here: " + ", ".join(sorted(known)) + ")", "no-stream")
        if len(streams) > MAX_HUB_STREAMS:
            return refuse(request, 400, f"a hub request may name at most {MAX_HUB_STREAMS} streams", "too-many-streams")
        for name in streams:
            if name not in known:
                return refuse(request, 404, f"stream {name[:100]} is not served at this hub (served here: {', '.join(sorted(known))})",
                              "unknown-stream", name[:100])
        if query_values(request, "where"):
            return refuse(request, 400, "on a hub a filter names its stream: where.A=price > 100", "bad-filter")
        wheres = {name: values[-1] for name in streams if (values := query_values(request, "where." + name))}
        guards = self.hub.guards
        passed: dict[str, int] = {}  # each stream's guard's renewals when it let the request through

        def through(index: int) -> Any:
            def proceed(request: server.Request) -> Any:
                if index:
                    passed[streams[index - 1]] = guards[streams[index - 1]].renewals
                if index == len(streams):
                    answered = answer(request, streams, wheres)
                    for name, renewals in passed.items():  # a later guard's password check may have outlasted a renewal
                        guards[name].recheck_since(renewals, request)
                    return answered
                name = streams[index]
                return guards[name].pass_through(request, Passage(through(index + 1), name, partial(self.hub.expired, name)))
            return proceed

        return through(0)(request)


def refuse(request: IRequest, code: int, message: str, reason: str, stream: str | None = None) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    body: dict[str, Any] = {"error": message, "reason": reason}
    if stream is not None:
        request.setHeader(b"SSE-Refused-Stream", stream.encode("utf-8", "replace"))
        body["stream"] = stream
    return json.dumps(body).encode() + b"\n"
