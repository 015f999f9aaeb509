"""Figures an operator reads, gathered when they are asked for.

Connectors keep plain counters (``Counter`` objects and attributes); nothing
here runs on the event path. The functions below read those counters for
``/metrics``, ``/status.json``, ``/readyz`` and the periodic stats log line,
so the hot path pays for one dict increment, not for a metrics library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from sse_daemon.bus.connector import ConnectorBus
from sse_daemon.bus.lease import ILeasedService
from sse_daemon.config.model import listen_address
from sse_daemon.connectors.interfaces import ILogSinkService, ISource, ISseSinkService, IUpstreamSource
from sse_daemon.edge.listener import HTTP1, HTTP2
from sse_daemon.ops.view import DaemonFigures

if TYPE_CHECKING:
    from sse_daemon.edge.listener import ListenerService

#: sink counters shown everywhere, in this order (missing ones read 0)
SINK_COUNTERS = (
    "connections_opened", "connections_closed", "events_in", "events_out",
    "bytes_written", "dropped_slow", "events_replayed", "worker_restarts", "history_commit_failures", "events_filtered",
)


def source_of(source: Any) -> Any:
    """The source itself: a leased one (on a shared bus) is held by the daemon in its lease."""
    return source.inner if ILeasedService.providedBy(source) else source


class SourceWatch:
    """When an SSE source was last seen connected, for the readiness window.

    The source tells only whether it is connected *now*; sampling that (on a
    timer and on every admin request) gives "connected within the last N
    seconds". The last time it was *seen* connected is kept, so a sample
    interval can only make a down source look down for longer, never shorter.
    """

    def __init__(self, held: IUpstreamSource | ILeasedService, started_at: float) -> None:
        #: the lease, when another instance may run the source (lease.py)
        self.lease: ILeasedService | None = held if ILeasedService.providedBy(held) else None
        self.source: IUpstreamSource = source_of(held)
        self.started_at = started_at
        self.last_seen_connected: float | None = None

    def sample(self, now: float) -> bool:
        connected = bool(self.source.connected)
        if connected:
            self.last_seen_connected = now
        return connected

    def down_for(self, now: float) -> float:
        """Seconds since it was last seen connected (or since it started, if never)."""
        if self.sample(now):
            return 0.0
        since = self.last_seen_connected if self.last_seen_connected is not None else self.started_at
        return max(0.0, now - since)

    def verdict(self, now: float, grace: float) -> str | None:
        """None when ready, else why not."""
        stopped = self.source.stopped_reason
        if stopped:
            return f"stopped: {stopped}"
        if self.lease is not None and self.lease.standby:
            return None  # another instance holds its lease and reads the upstream (lease.py)
        down = self.down_for(now)
        if down == 0.0:
            return None
        if down < grace:
            return None
        what = "reconnecting" if self.last_seen_connected is not None else "never connected since start"
        return f"not connected for {down:.1f}s ({what}; ready.grace is {grace:g}s)"


def sink_figures(service: ISseSinkService | ILogSinkService) -> dict[str, Any]:
    """One sink's figures; an SSE sink has subscribers, a log sink only counts events."""
    connector = service.connector
    figures: dict[str, Any] = {"name": connector.name, "type": connector.type, "stream": connector.stream}
    if ISseSinkService.providedBy(service):
        sink = service.sink
        figures["path"] = connector.options.server_path
        figures["subscribers"] = len(sink.subscribers)
        figures["hub_subscribers"] = sink.counters.get("hub_subscribers", 0)  # hub.path connections that read it
        figures.update({key: sink.counters.get(key, 0) for key in SINK_COUNTERS})
        figures["history"] = len(sink.history)
        # requests refused before they became subscribers (limits, access), by reason
        figures["rejected"] = dict(sink.rejected)
        figures["resumes"] = {
            key[len("resume_"):].replace("_", "-"): count
            for key, count in sink.counters.items() if key.startswith("resume_")
        }
        figures["events_unmapped"] = sink.counters.get("events_unmapped", 0)
        # streams the sink ended because their access ended (edge/guard.py), by reason
        figures["ended"] = {"token-expired": sink.counters.get("closed_token_expired", 0),
                            "credentials-revoked": sink.counters.get("closed_credentials_revoked", 0)}
    else:
        events = service.counters.get("events_in", 0)
        unmapped = service.counters.get("events_unmapped", 0)
        figures.update(events_in=events, events_out=events - unmapped, events_unmapped=unmapped)
    return figures


def source_figures(held: ISource | ILeasedService, stamp: ConnectorBus | None, now: float, started_at: float) -> dict[str, Any]:
    """One source's figures. ``connected`` is None for an ingest (nothing to connect to)."""
    source: ISource = source_of(held)
    connector = source.connector
    rejected: dict[str, int] = dict(source.rejected)
    last = stamp.last_publish if stamp is not None else None
    figures: dict[str, Any] = {
        "name": connector.name,
        "type": connector.type,
        "stream": connector.stream,
        "url": str(connector.options.receiver_url),
        "events_in": source.counters.get("events_in", 0),
        "rejected": rejected,
        # since the last event, or since the start when there was none: a source
        # that never delivered still trips a "stale source" alert
        "last_event_age": max(0.0, now - (last if last is not None else started_at)),
        "has_events": last is not None,
        "connected": None,
        "reconnects": None,
        "last_event_id": None,
    }
    if connector.type == "sse":
        upstream: IUpstreamSource = source  # type: ignore[assignment]  # an sse connector is read by an IUpstreamSource
        for reason, count in upstream.mapping_errors.items():
            rejected[reason] = rejected.get(reason, 0) + count
        figures.update(
            connected=bool(upstream.connected),
            reconnects=int(upstream.reconnects),
            last_event_id=upstream.last_event_id or None,
            stopped=upstream.stopped_reason,
        )
    return figures


def listener_figures(listener: "ListenerService") -> dict[str, Any]:
    """One port: where, what it serves, its open connections and what it refused before any
    connector saw it (connection budgets, deadlines, malformed requests, unknown paths), by reason."""
    return {
        "host": listener.host,
        "port": listener.bound_port if listener.listening is not None else listener.port,
        "bound": listener.listening is not None,
        "serves": list(listener.labels),
        "connections": listener.site.connections.total if listener.site is not None else 0,
        "http2": listener.http2,  # offered through ALPN (server.http2 on a TLS port)
        # open connections by protocol ("http/1.1", "h2"), requests by HTTP version
        "protocols": {HTTP1: 0, **({HTTP2: 0} if listener.http2 else {}),
                      **(dict(listener.site.protocols) if listener.site is not None else {})},
        "requests": dict(listener.site.requests) if listener.site is not None else {},
        "rejected": dict(listener.router.rejected),
    }


@dataclass(frozen=True, slots=True)
class LagBuckets:
    """One sink's lag histogram as counted so far: cumulative counts by upper bound."""

    #: (upper bound in seconds, events at or below it), by bound; the last bound is +Inf
    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-quantile (+Inf past the last finite one)."""
        return next((le for le, n in self.buckets if n >= q * self.count), float("inf"))

    def since(self, earlier: "LagBuckets | None") -> "LagBuckets":
        """The events observed after ``earlier`` (all of them without it)."""
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return LagBuckets(tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
                          self.count - earlier.count, self.sum - earlier.sum)

    @staticmethod
    def merged(parts: "list[LagBuckets]") -> "LagBuckets":
        """Several sinks' buckets as one (they share their bounds)."""
        totals: dict[float, float] = {}
        for part in parts:
            for le, n in part.buckets:
                totals[le] = totals.get(le, 0.0) + n
        return LagBuckets(tuple(sorted(totals.items())), sum(p.count for p in parts), sum(p.sum for p in parts))


def lag_buckets(histogram: Histogram) -> dict[str, LagBuckets]:
    """Every sink's series of the lag histogram (``/metrics``' ``sse_daemon_sink_lag_seconds``)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    totals: dict[str, dict[str, float]] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            sink = sample.labels["sink"]  # every sample of the histogram is one sink's
            if sample.name.endswith("_bucket"):
                buckets.setdefault(sink, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                totals.setdefault(sink, {})["count"] = sample.value
            elif sample.name.endswith("_sum"):
                totals.setdefault(sink, {})["sum"] = sample.value
    return {
        sink: LagBuckets(tuple(sorted(buckets.get(sink, []))), total.get("count", 0.0), total.get("sum", 0.0))
        for sink, total in totals.items()
    }


def snapshot(daemon: DaemonFigures, now: float) -> dict[str, Any]:
    """Every figure of the daemon as plain data (what ``/status.json`` serves)."""
    started = daemon.started_at if daemon.started_at is not None else now
    sinks = [sink_figures(service) for service in daemon.sinks.values()]
    sources = [
        source_figures(source, daemon.source_buses.get(name), now, started)
        for name, source in daemon.sources.items()
    ]
    for figures, held in zip(sources, daemon.sources.values()):
        source = source_of(held)
        url = source.connector.options.receiver_url
        if source.connector.type == "http" and url.port == 0:  # an ingest on port 0: show the port it got
            bound_as, _, _ = listen_address(source.connector)  # type: ignore[misc]  # an ingest has one
            listener = daemon.listeners.get((bound_as, 0))
            if listener is not None and listener.listening is not None:
                host = f"[{url.host}]" if ":" in url.host else url.host
                figures["url"] = f"{url.scheme}://{host}:{listener.bound_port}{url.path}"
    listeners = [listener_figures(listener) for listener in daemon.listeners.values()]
    routes = [
        {"from": route.route.source, "to": route.route.target, "events": route.events, "rejected": dict(route.rejected)}
        for route in daemon.routes
    ]
    streams = []
    for name, stream in daemon.config.streams.items():
        streams.append({
            "name": name,
            "schema": str(stream.schema),
            "sources": [s["name"] for s in sources if s["stream"] == name],
            "sinks": [s["name"] for s in sinks if s["stream"] == name],
            "routes_in": [r["from"] for r in routes if r["to"] == name],
            "routes_out": [r["to"] for r in routes if r["from"] == name],
            "subscriber_failures": int(daemon.bus.failures.get(name, 0)),
        })
    return {
        "time": now,
        "uptime": max(0.0, now - started),
        "files": list(daemon.config.files),
        "streams": streams,
        "sources": sources,
        "sinks": sinks,
        "routes": routes,
        "listeners": listeners,
    }


class StatsLogService(Service):
    """Logs every connector's counters at info, every ``interval`` seconds.

    Per-event lines would drown a busy daemon; one line per connector per
    minute keeps the journal useful and still shows trends. The timer is
    guarded: a ``LoopingCall`` stops for good on its first exception.
    """

    log = Logger()

    def __init__(self, daemon: DaemonFigures, interval: float, clock: IReactorTime) -> None:
        self.daemon = daemon
        self.interval = interval
        self.clock = clock
        self._loop: LoopingCall | None = None
        self.setName("stats")

    def startService(self) -> None:
        super().startService()
        if self.interval > 0:
            self._loop = LoopingCall(self.write)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def write(self) -> None:
        with self.log.failuresHandled("writing the periodic stats failed", level=LogLevel.error):
            figures = snapshot(self.daemon, self.clock.seconds())
            for sink in figures["sinks"]:
                fields = {key: sink.get(key, 0) for key in SINK_COUNTERS}
                self.log.info(
                    "stats: sink {sink} ({type}): {subscribers} subscribers, {events_in} events in, "
                    "{events_out} out, {bytes_written} bytes, {dropped_slow} dropped as slow",
                    sink=sink["name"], type=sink["type"], stream=sink["stream"],
                    subscribers=sink.get("subscribers", 0), **fields,
                )
            for source in figures["sources"]:
                self.log.info(
                    "stats: source {source} ({type}): {events_in} events in, {rejected_total} rejected, "
                    "connected {connected}, {reconnects} reconnects, last event {last_event_age:.1f}s ago",
                    source=source["name"], type=source["type"], stream=source["stream"],
                    events_in=source["events_in"], rejected=source["rejected"],
                    rejected_total=sum(source["rejected"].values()),
                    connected=source["connected"], reconnects=source["reconnects"] or 0,
                    last_event_age=source["last_event_age"],
                )
