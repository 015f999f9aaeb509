"""The SSE source (``type: sse``): the daemon's adapter from the SSE client to mapper, checks and bus.

The client (:mod:`sse_daemon.client`) keeps each of the ``worker.count``
connections open and reports what arrives; this adapter de-duplicates across
connections, maps each message (checking every value), publishes the events,
keeps the operator's figures and writes the log lines (URLs masked). Its
collaborators (HTTP client, clock, bus, mapper) are given at construction;
every option it reads is read once, in :func:`source_options`.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus
from sse_daemon.client import EventSource, HttpGet, Interruption, Opened, ReconnectPolicy, Settings
# the client's names that the source's tests and the probe have always imported from here
from sse_daemon.client.body import BodyReceiver
from sse_daemon.client.decisions import RETRY_AFTER_MAX, SERVER_WAIT_MAX, Verdict, judge_response, media_type, retry_after
from sse_daemon.client.failures import MAX_REDIRECTS, describe_failure
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import SseSourceOptions
from sse_daemon.connectors.ingeststream import BEHIND_RETRY, MAX_UNSETTLED  # the same bounds as a streaming publish's
from sse_daemon.connectors.interfaces import IUpstreamSource
from sse_daemon.events.schema import Event
from sse_daemon.mapping.mappers import IMapper, MappingError
from sse_daemon.policy.connections import Stopping
from sse_daemon.policy.limits import LogRate, excerpt, should_log  # a bad upstream must not flood the log
from sse_daemon.wire.eventstream import Message, Rejection

__all__ = [
    "BodyReceiver", "DEDUP_WINDOW", "MAX_REDIRECTS", "RETRY_AFTER_MAX", "RecentIds", "ReconnectPolicy",
    "SERVER_WAIT_MAX", "SourceOptions", "SseSourceService", "Verdict", "describe_failure", "judge_response",
    "media_type", "retry_after", "source_options",
]

#: ids remembered for de-duplication when worker.count > 1
DEDUP_WINDOW = 10_000


class RecentIds:
    """The last ``size`` ids seen: enough to spot the same event arriving on another connection."""

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False if it was already there (a duplicate)."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """Everything the source takes from its definition, read in one place."""

    client: Settings  # one connection's settings (each connection gets its own label)
    shown_url: str  # receiver.url with credentials masked, for logs and status
    event_types: frozenset[str]
    max_events: int  # events one upstream message may map to
    workers: int  # connections kept open at once


def source_options(connector: ConnectorDef[SseSourceOptions], jitter: Callable[[], float] = random.random) -> SourceOptions:
    """The client's settings and the adapter's own options, from a validated ``type: sse`` definition."""
    options = connector.options
    url = options.receiver_url
    client = Settings(
        url=url.text,
        headers=options.headers,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        reconnect=ReconnectPolicy(options.reconnect_initial_delay, options.reconnect_max_delay, jitter),
        reconnect_on_client_error=options.reconnect_on_client_error,
        max_event_size=options.max_event_size,
        json_documents=options.sse_format == "raw",
    )
    return SourceOptions(client, str(url), frozenset(options.event_types), options.max_events_per_message,
                         options.worker_count)


class _Connection:
    """One of the ``worker.count`` connections: its client, and the handler that hands its news to the source."""

    def __init__(self, source: "SseSourceService", index: int, settings: Settings, http: HttpGet, clock: IReactorTime) -> None:
        self.source = source
        self.index = index
        self.previous_id = ""  # id of the last message: a message carrying the same one set none of its own
        self.client = EventSource(replace(settings, label=f"source {source.source_name} connection {index}"), self, http, clock)

    @property
    def connected(self) -> bool:
        return self.client.connected

    # EventSourceHandler
    def opened(self, opened: Opened) -> None:
        self.source._opened(self, opened)

    def messages(self, messages: Sequence[Message]) -> None:
        self.source._messages(self, messages)

    def comment(self, text: str) -> None:
        pass  # a heartbeat: the client already reset its read timeout

    def rejected(self, rejection: Rejection) -> None:
        self.source._rejected(self, rejection)

    def interrupted(self, interruption: Interruption) -> None:
        self.source._interrupted(self, interruption)


#: counters each connection's client keeps; the source's ``counters`` adds them up
CLIENT_COUNTERS = ("attempts", "streams", "failures", "bad_responses", "read_timeouts", "bytes_in", "internal_errors")


@implementer(IUpstreamSource)
class SseSourceService(Service):
    """Keeps ``worker.count`` connections to ``receiver.url`` and publishes their events.

    Operator figures are plain attributes: ``connected``, ``reconnects``,
    ``last_event_id``, ``counters`` and ``rejected`` (parser rejections by
    reason); ``mapping_errors`` counts unmappable messages by reason.
    ``stopping`` is the daemon's shutdown flag: a stream that ends once it is
    set is not reconnected (the daemon's own sinks close streams while it drains).

    Backpressure: on the in-process bus a message is delivered while it is read,
    so a daemon slower than its upstream reads slower (the upstream's bytes wait
    in TCP buffers, never here). Where publishes are acknowledged later (a sink's
    history file, a shared bus) reading is held while more than
    :data:`MAX_UNSETTLED` events await acknowledgement, until half have it; on a
    shared bus it is held too while this instance's fan-out is behind (``behind``,
    the bus's ``fanout.max.lag``), looked at again every :data:`BEHIND_RETRY` s.
    """

    log = Logger()

    def __init__(
        self,
        connector: ConnectorDef[SseSourceOptions],
        mapper: IMapper,
        bus: IBus,
        clock: IReactorTime,
        http: HttpGet,
        *,
        jitter: Callable[[], float] = random.random,
        stopping: Stopping | None = None,
        behind: Callable[[str, int], float | None] | None = None,
    ) -> None:
        self.connector = connector
        self.source_name = connector.name
        self.setName(f"source:{connector.name}")
        self.mapper = mapper
        self.bus = bus
        self.clock = clock
        self.stream = connector.stream
        self.options = source_options(connector, jitter)
        #: what is shown (logs, status): credentials masked
        self.url: str = self.options.shown_url
        self.policy = self.options.client.reconnect
        self.max_event_size = self.options.client.max_event_size
        self.workers = self.options.workers
        self.stopping = stopping if stopping is not None else Stopping()
        #: connect and stream-ended lines (info): at most 50 per 10 s, however fast an upstream cycles
        self._routine_log = LogRate(clock.seconds)

        self._counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.mapping_errors: Counter[str] = Counter()
        self.stopped_reason: str | None = None  # set when the server told us to stop (204)
        self.recent_ids = RecentIds()
        self.paused = False  # by pause() (a caller's), apart from the holds of backpressure below
        self.behind = behind
        self._unsettled = 0  # events published and not acknowledged yet
        self._holds: set[str] = set()  # why reading is held: "acknowledgements", "fan-out"
        self._retry: IDelayedCall | None = None
        self._connections = [_Connection(self, i, self.options.client, http, clock) for i in range(self.workers)]

    # -- figures

    @property
    def counters(self) -> Counter[str]:
        """The source's counts (messages, events, mapping errors, ...) and its connections' added up."""
        total = Counter(self._counters)
        for conn in self._connections:
            for key in CLIENT_COUNTERS:
                total[key] += conn.client.counters[key]
        return total

    @property
    def reconnects(self) -> int:
        return sum(conn.client.counters["reconnects"] for conn in self._connections)

    @property
    def connected(self) -> bool:
        return any(c.connected for c in self._connections)

    @property
    def connections_up(self) -> int:
        return sum(c.connected for c in self._connections)

    @property
    def last_event_id(self) -> str:
        """The leading connection's Last-Event-ID (the first connection's while none is up)."""
        leader = self._leader() or self._connections[0]
        return leader.client.last_event_id

    # -- service

    def startService(self) -> None:
        super().startService()
        self.stopped_reason = None
        # A restarted service keeps each connection's Last-Event-ID and retry (they live in its client).
        self.log.info(
            "source {source} subscribing to {url} with {workers} connection(s) for stream {stream}",
            source=self.source_name, url=self.url, workers=self.workers, stream=self.stream,
        )
        for conn in self._connections:
            conn.client.start()

    def stopService(self) -> Deferred:
        """Close every connection and timer at once; fires when all are closed."""
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._release("fan-out")  # looked at no more: a restart (a lease taken again) must not start held
        d: Deferred = DeferredList([conn.client.stop() for conn in self._connections], consumeErrors=True)
        d.addCallback(lambda _: self.log.info("source {source} stopped", source=self.source_name))
        return d

    def resume_after(self, last_event_id: str | None) -> None:
        """Start (again) from this Last-Event-ID: the cursor a leased source's last holder saved (lease.py)."""
        if not last_event_id:
            return
        for conn in self._connections:
            conn.client.last_event_id = last_event_id

    def pause(self) -> None:
        """Stop reading (backpressure): the server's writes queue in TCP buffers, not here."""
        self.paused = True
        for conn in self._connections:
            conn.client.pause()

    def resume(self) -> None:
        self.paused = False
        if not self._holds:
            for conn in self._connections:
                conn.client.resume()

    def _hold(self, why: str) -> None:
        """Stop reading the upstream until :meth:`_release` of every reason (backpressure, see the class)."""
        if why in self._holds:
            return
        if not self._holds and not self.paused:
            for conn in self._connections:
                conn.client.pause()
        self._holds.add(why)
        self._counters["reading_held"] += 1
        if should_log(self._counters["reading_held"]):
            self.log.info("source {source}: reading held until the daemon catches up ({why}; {count} times so far)",
                          source=self.source_name, why=why, count=self._counters["reading_held"])

    def _release(self, why: str) -> None:
        if why not in self._holds:
            return
        self._holds.discard(why)
        if not self._holds and not self.paused:
            for conn in self._connections:
                conn.client.resume()

    def _settled(self, result: object, count: int) -> object:
        self._unsettled -= count
        if self._unsettled <= MAX_UNSETTLED // 2:
            self._release("acknowledgements")
        return result

    def _look_again(self) -> None:
        self._retry = None
        if self.behind is not None and self.behind(self.stream, 0) is not None:
            self._retry = self.clock.callLater(BEHIND_RETRY, self._look_again)
            return
        self._release("fan-out")

    def _halt(self) -> None:
        for conn in self._connections:
            conn.client.stop()

    # -- what the connections report

    def _opened(self, conn: _Connection, opened: Opened) -> None:
        allowed, held = self._routine_log.allow()
        if allowed:
            self.log.info(
                "source {source} connected to {url}{via} (connection {worker}, Last-Event-ID {last_event_id!r}){held_back}",
                source=self.source_name, url=self.url, worker=conn.index, last_event_id=excerpt(opened.last_event_id),
                via=f" via {opened.url}" if opened.redirected else "",
                held_back=f" ({held} connect and reconnect lines held back)" if held else "",
            )

    def _interrupted(self, conn: _Connection, report: Interruption) -> None:
        if report.reconnect_in is None:
            self._server_stop(report.reason)
            return
        if self.stopping:
            # the daemon is shutting down (its drain closes streams, maybe this one): no reconnect, no reconnect line
            self.log.debug("source {source} connection {worker}: {cause} while the daemon stops; not reconnecting",
                           source=self.source_name, worker=conn.index, cause=report.reason)
            conn.client.stop()
            return
        if report.failed:  # bounded by the backoff itself: a few lines per reconnect.max.delay
            self.log.warn(
                "source {source} ({url}, connection {worker}): {cause}; retrying in {delay:.2f}s (failure {failures} in a row)",
                source=self.source_name, url=self.url, worker=conn.index, cause=report.reason,
                delay=report.reconnect_in, failures=report.failures,
            )
            return
        allowed, held = self._routine_log.allow()
        if allowed:
            self.log.info(
                "source {source} ({url}, connection {worker}): stream ended ({cause}); reconnecting in {delay:.2f}s with Last-Event-ID {last_event_id!r}{held_back}",
                source=self.source_name, url=self.url, worker=conn.index, cause=report.reason,
                delay=report.reconnect_in, last_event_id=excerpt(report.last_event_id),
                held_back=f" ({held} connect and reconnect lines held back)" if held else "",
            )

    def _server_stop(self, reason: str) -> None:
        self.stopped_reason = reason
        self.log.warn(
            "source {source} ({url}): {reason}; the source stops until the daemon restarts",
            source=self.source_name, url=self.url, reason=reason,
        )
        self._halt()

    def _rejected(self, conn: _Connection, item: Rejection) -> None:
        self.rejected[item.reason] += 1
        total = sum(self.rejected.values())
        if should_log(total):
            what = {
                "line-too-long": f"a line longer than {conn.client.parser.max_line} characters",
                "not-json": "text between JSON documents that is not JSON",
            }.get(item.reason, f"{item.size} characters of data")
            self.log.warn(
                "source {source} ({url}): skipped an event ({reason}: {what}; max.event.size is {limit}); {total} skipped so far",
                source=self.source_name, url=self.url, reason=item.reason, what=what,
                limit=self.max_event_size, total=total,
            )

    def _messages(self, conn: _Connection, items: Sequence[Message]) -> None:
        """A read's messages, published at once: the sink's steps run once a publish, not once a message."""
        events: list[Event] = []
        for item in items:
            # Nothing may escape into the client: it would count as its own failure. (A plain try: this runs
            # for every message, and failuresHandled's context manager cost a few percent of a relay.)
            try:
                self._handle(conn, item, events)
            except Exception:
                self._internal_error("source {source} failed to handle data from {url} ({count} so far)")
        if events:
            try:
                self._publish(events)
            except Exception:
                self._internal_error("source {source} failed to publish data from {url} ({count} so far)")

    def _internal_error(self, what: str) -> None:
        self._counters["internal_errors"] += 1
        if should_log(self._counters["internal_errors"]):  # a bug met by every message must not flood the log
            self.log.failure(what, level=LogLevel.error, source=self.source_name, url=self.url,
                             count=self._counters["internal_errors"])

    def _leader(self) -> _Connection | None:
        """The lowest-numbered connection that is up: the one that delivers messages without ids."""
        return next((c for c in self._connections if c.connected), None)

    def _handle(self, conn: _Connection, item: Message, events: list[Event]) -> None:
        """``item``'s events onto ``events`` (none when it is filtered out, a duplicate, or does not map)."""
        self._counters["messages"] += 1
        if self.options.event_types and item.event not in self.options.event_types:
            self._counters["filtered"] += 1
            return
        if not self._first_delivery(conn, item):
            self._counters["duplicates"] += 1
            return
        try:  # every value is checked here (validate.py, through the mapper): what no sink could write is refused
            values = self.mapper.decode(item.data, self.options.max_events)
        except MappingError as e:
            self._unmapped(item, e.reason, str(e))
            return
        except Exception as e:  # a mapper bug must not stop the stream, nor write a traceback per message
            if should_log(self.mapping_errors["mapper-error"] + 1):
                self.log.failure("source {source}: the mapper failed", source=self.source_name)
            self._unmapped(item, "mapper-error", f"{type(e).__name__}: {e}")
            return
        now = self.clock.seconds()
        event_id = item.id or None
        for value in values:
            events.append(Event(value, id=event_id, type=item.event, ingress=now))

    def _publish(self, events: list[Event]) -> None:
        # no log line per message: even filtered out, one cost an eighth of a relayed event's CPU
        self._counters["events_in"] += len(events)
        published = self.bus.publish(self.stream, events)
        if not published.called:  # acknowledged later (a history file, a shared bus): bounded, see the class
            self._unsettled += len(events)
            published.addBoth(self._settled, len(events))
            if self._unsettled > MAX_UNSETTLED:
                self._hold("acknowledgements")
        published.addErrback(self._not_published, len(events))
        if self.behind is not None and self._retry is None and self.behind(self.stream, 0) is not None:
            self._hold("fan-out")
            self._retry = self.clock.callLater(BEHIND_RETRY, self._look_again)

    def _not_published(self, failure: Failure, count: int) -> None:
        """The bus did not take events already read from the upstream (a shared bus that is down):
        counted as ``bus-unavailable`` and logged sampled, never an unhandled error per message."""
        self.rejected["bus-unavailable"] += count
        if should_log(self.rejected["bus-unavailable"]):
            self.log.warn("source {source}: the bus did not take {count} event(s): {error} ({total} so far)",
                          source=self.source_name, count=count, error=failure.getErrorMessage(),
                          total=self.rejected["bus-unavailable"])

    def _first_delivery(self, conn: _Connection, message: Message) -> bool:
        """With several connections, let each event through once.

        An event with an id of its own passes the first time that id is seen.
        Without an id, copies cannot be told apart, so only the leading
        connection delivers it.
        """
        if self.workers == 1:
            return True
        own_id = bool(message.id) and message.id != conn.previous_id
        conn.previous_id = message.id
        if not own_id:
            return conn is self._leader()
        return self.recent_ids.add(message.id)

    def _unmapped(self, message: Message, reason: str, text: str) -> None:
        self._counters["mapping_errors"] += 1
        self.mapping_errors[reason] += 1
        if should_log(self._counters["mapping_errors"]):
            payload = message.data if len(message.data) <= 200 else message.data[:197] + "..."
            self.log.warn(
                "source {source} ({url}): message {id!r} does not map ({reason}): {error}; payload {payload!r}; {total} so far",
                source=self.source_name, url=self.url, id=excerpt(message.id), reason=reason, error=text,
                payload=payload, total=self._counters["mapping_errors"],
            )
