"""The admin listener (``admin:`` in the YAML): metrics, health, a status page, live views.

It binds a port of its own, so a firewall or a proxy can keep it private
while the sinks stay public. It serves:

- ``/metrics``: Prometheus text (or OpenMetrics when asked for), read from
  the connectors' live counters at scrape time by :class:`DaemonCollector`;
  only the lag histogram is fed as events pass (once per event per sink);
- ``/healthz``: the process answers; ``/readyz``: every listener is bound and
  every SSE source is connected or within its ``ready.grace`` window;
- ``/status.json`` and ``/``: every stream, source and sink with its figures,
  and ``/events/<stream>``: a stream's events over SSE for the page's live
  view, served by the same :class:`~sse_daemon.connectors.sink.SseSink` as real sinks
  (on this port, so the page needs no CORS).

Labels are connector names and fixed reason strings only; never a client,
an id or a payload (per-topic labels are what blew up Mercure's memory).

Access (issue 12): every request's ``Host`` must be a local name, the bound
address, the address it came in on or one of ``allowed.hosts`` (else 421: a
DNS-rebinding page cannot read anything); with ``auth.type`` set, every path
but ``/healthz`` and ``/readyz`` needs credentials, checked by the same
:class:`~sse_daemon.edge.guard.Guard` and authenticators as sinks. Without admin
auth, streams that a protected sink serves (:func:`protected_streams`) have no
live view here and their last event id is left out of ``/status.json``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import weakref
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request

from sse_daemon.bus.interfaces import ISharedBus
from sse_daemon.connectors.interfaces import IReadiness
from sse_daemon.config.credentials import AuthConfigError
from sse_daemon.config.errors import Location
from sse_daemon.config.model import AdminDef, Config, ConnectorDef
from sse_daemon.config.options import AccessOptions, SseServerOptions
from sse_daemon.config.values import normalise_path
from sse_daemon.ops.charts import ChartSampler, ring_points
from sse_daemon.ops.figures import SINK_COUNTERS, SourceWatch, lag_buckets, listener_figures, snapshot, source_of
from sse_daemon.ops.metrics import LAG, scraped
from sse_daemon.ops.view import RunningDaemon
from sse_daemon.edge.guard import Guard, build_access
from sse_daemon.policy.limits import should_log
from sse_daemon.edge.listener import ListenerService
from sse_daemon.edge.tls import is_tls, listen_description, offers_http2
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.connectors.sink import SseSink, SseSinkResource, SseSinkService, sink_for_bus

#: seconds; in-process hand-off takes microseconds, a loaded reactor milliseconds to seconds
LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: how often source connectivity is sampled at most (also sampled on every admin request)
MAX_SAMPLE_INTERVAL = 1.0

class DaemonCollector:
    """Reads every connector's counters when Prometheus scrapes; nothing is kept here.
    Its families are the rows of :data:`~sse_daemon.ops.metrics.FAMILIES`."""

    def __init__(self, admin: "AdminService") -> None:
        self.admin = admin

    def describe(self) -> Iterator[Metric]:
        return iter(self._families().values())

    def _families(self) -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
        return scraped(shared_bus=ISharedBus.providedBy(self.admin.daemon.bus))  # bus: {type: redis}

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        admin = self.admin
        now = admin.clock.seconds()
        figures = snapshot(admin.daemon, now)
        families["ready"].add_metric([], 1.0 if admin.readiness(now)["ready"] else 0.0)
        if admin.daemon.started_at is not None:
            families["start_time_seconds"].add_metric([], admin.daemon.started_at)
        for sink in figures["sinks"]:
            name = [sink["name"]]
            families["sink_events_in"].add_metric(name, sink["events_in"])
            families["sink_events_out"].add_metric(name, sink["events_out"])
            families["sink_events_unmapped"].add_metric(name, sink["events_unmapped"])
            if sink["type"] != "sse-server":
                continue
            for reason, count in sorted(sink["rejected"].items()):
                families["sink_requests_rejected"].add_metric([sink["name"], reason], count)
            for outcome, count in sorted(sink["resumes"].items()):
                families["sink_resumes"].add_metric([sink["name"], outcome], count)
            for reason, count in sink["ended"].items():
                families["sink_streams_ended"].add_metric([sink["name"], reason], count)
            families["sink_subscribers"].add_metric(name, sink["subscribers"])
            families["sink_hub_subscribers"].add_metric(name, sink["hub_subscribers"])
            families["sink_history_events"].add_metric(name, sink["history"])
            for key in SINK_COUNTERS:
                if key not in ("events_in", "events_out"):
                    families["sink_" + key].add_metric(name, sink[key])
        for source in figures["sources"]:
            name = [source["name"]]
            families["source_events_in"].add_metric(name, source["events_in"])
            for reason, count in sorted(source["rejected"].items()):
                families["source_events_rejected"].add_metric([source["name"], reason], count)
            families["source_last_event_age_seconds"].add_metric(name, source["last_event_age"])
            if source["type"] == "sse":
                families["source_connected"].add_metric(name, 1.0 if source["connected"] else 0.0)
                families["source_reconnects"].add_metric(name, source["reconnects"])
        for route in figures["routes"]:
            families["route_events"].add_metric([route["from"], route["to"]], route["events"])
            for reason, count in sorted(route["rejected"].items()):
                families["route_events_rejected"].add_metric([route["from"], route["to"], reason], count)
        for stream in figures["streams"]:
            families["stream_subscriber_failures"].add_metric([stream["name"]], stream["subscriber_failures"])
        for reason, count in sorted(admin.rejected.items()):
            families["admin_requests_rejected"].add_metric([reason], count)
        for listener in (*figures["listeners"], listener_figures(admin.listener)):
            label = [f"{listener['host']}:{listener['port']}"]
            families["listener_connections"].add_metric(label, listener["connections"])
            for protocol, count in sorted(listener["protocols"].items()):
                families["listener_protocol_connections"].add_metric(label + [protocol], count)
            for version, count in sorted(listener["requests"].items()):
                families["listener_requests"].add_metric(label + [version], count)
            for reason, count in sorted(listener["rejected"].items()):
                families["listener_requests_rejected"].add_metric(label + [reason], count)
        bus = admin.daemon.bus
        if ISharedBus.providedBy(bus):
            families["bus_up"].add_metric([], 1.0 if bus.state == "up" else 0.0)
            families["bus_events_published"].add_metric([], bus.counters["events_published"])
            families["bus_events_refused"].add_metric([], bus.counters["publish_refused"])
            families["bus_reconnects"].add_metric([], bus.counters["reconnects"])
            families["bus_events_invalid"].add_metric([], bus.counters["publish_invalid"])
            families["bus_entries_skipped"].add_metric([], bus.counters["entries_skipped"])
            families["bus_entries_lost"].add_metric([], bus.counters["entries_lost"])
            for stream in sorted(admin.daemon.config.streams):
                families["bus_fanout_lag_seconds"].add_metric([stream], bus.fanout_lag(stream))
        return iter(families.values())


class AdminService(MultiService):
    """The admin listener, its live-view sinks and the connectivity sampler."""

    log = Logger()

    def __init__(self, daemon: RunningDaemon, definition: AdminDef) -> None:
        super().__init__()
        self.setName("admin")
        self.daemon = daemon
        self.definition = definition
        self.clock = daemon.clock
        self.grace: float = definition.options.ready_grace
        self.watches: dict[str, SourceWatch] = {}
        self._sampler: LoopingCall | None = None

        # One registry per daemon: tests run many daemons in one process, and the
        # global registry would mix them (and refuse the second histogram).
        self.registry = CollectorRegistry()
        self.lag = Histogram(LAG.metric_name, LAG.help, LAG.labels, registry=self.registry, buckets=LAG_BUCKETS)
        #: the sinks given a series of it (lag_observer)
        self._lagged: set[str] = set()
        self.registry.register(DaemonCollector(self))
        options = definition.options
        self.charts = ChartSampler(daemon, self.lag, self.clock, options.charts_interval,
                                   ring_points(options.charts_interval, options.charts_window))
        ProcessCollector(registry=self.registry)  # open fds against LimitNOFILE, memory, CPU

        #: admin requests refused, by reason (a wrong Host, a protected stream, credentials)
        self.rejected: Counter[str] = Counter()
        self.hosts = HostPolicy.for_admin(definition.host, definition.options.allowed_hosts)
        self.authenticated = bool(definition.auth_types)
        # each scheme's authenticator and, for passwords, the gate that checks them off the reactor
        self._authenticators = {kind: build_access(definition.options.access(kind), "admin", daemon.passwords, self.clock)
                                for kind in definition.auth_types}
        #: every Guard built (the live views' too, while they live), with its scheme: a reload gives them fresh credentials
        self._guards: weakref.WeakKeyDictionary[Guard, str] = weakref.WeakKeyDictionary()
        # what a Guard needs to know of its connector: the admin section's access options
        self._access = ConnectorDef("admin", "listener", "admin", "", definition.options.access("none"), definition.location)

        options = definition.options
        self.listener = ListenerService(daemon.reactor, definition.host, definition.port, descriptors=daemon.descriptors,
                                        list_paths=False, http2=offers_http2(options),  # over TLS, as a connector's port
                                        endpoint=listen_description(definition.host, definition.port, options) if is_tls(options) else None)
        self.listener.add("/", self._gate(PageResource("status.html", b"text/html; charset=utf-8")), "admin status page")
        self.listener.add("/status.js", self._gate(PageResource("status.js", b"text/javascript; charset=utf-8")), "admin status script")
        self.listener.add("/metrics", self._gate(MetricsResource(self.registry)), "admin metrics")
        # probes (systemd, a load balancer) need no credentials; the Host check still applies
        self.listener.add("/healthz", self._gate(HealthResource(self), open_=True), "admin health")
        self.listener.add("/readyz", self._gate(ReadyResource(self), open_=True), "admin readiness")
        self.listener.add("/status.json", self._gate(StatusResource(self)), "admin status")
        self.listener.add("/charts.json", self._gate(ChartsResource(self.charts)), "admin charts")
        self.listener.add("/charts.js", self._gate(PageResource("charts.js", b"text/javascript; charset=utf-8")), "admin charts script")
        self.live: dict[str, SseSink] = {}
        # stream -> (schema and protection it was built for, service or None for a refused view)
        self._live_services: dict[str, tuple[tuple[str, bool], SseSinkService | None]] = {}
        self._live_views()
        # one label for the bind message and error, not one per path
        self.listener.labels[:] = ["the admin listener (status page, /metrics, /healthz, /readyz, /events/<stream>)"]
        self.listener.setServiceParent(self)
        self.charts.setServiceParent(self)

    def _gate(self, resource: Resource, open_: bool = False) -> "AdminGate":
        """``resource`` behind the Host check and (unless ``open_``) the admin's auth: one Guard
        per accepted scheme, built like a sink's, around this resource."""
        guards = {} if open_ else {
            kind: Guard(resource, self._access, self.clock, self.rejected, authenticator=authenticator, passwords=passwords,
                        methods=("GET", "HEAD"))
            for kind, (authenticator, passwords) in self._authenticators.items()
        }
        for kind, guard in guards.items():
            self._guards[guard] = kind
        return AdminGate(resource, self.hosts, guards, self.refuse)

    def read_credentials(self) -> None:
        """Read the users and tokens files again (a reload): a rotated secret takes effect without a restart.
        Files that cannot be read now leave the credentials as they were, and say so."""
        if not self.authenticated:
            return
        try:
            fresh = {kind: build_access(self.definition.options.access(kind), "admin", self.daemon.passwords, self.clock)
                     for kind in self.definition.auth_types}
        except AuthConfigError as e:
            self.log.error("the admin listener kept the credentials it had: {error}", error=str(e))
            return
        self._authenticators = fresh
        for guard, kind in list(self._guards.items()):
            guard.renew(*fresh[kind])
        self.log.info("the admin listener read its users and tokens files again")

    def refuse(self, request: IRequest, code: int, reason: str, message: str) -> bytes:
        """A counted refusal, logged the first ten times of each reason and then every thousandth."""
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if should_log(count):
            self.log.warn("the admin listener refused {method} {path} from {peer}: {message} ({reason}, {count} so far)",
                          method=request.method.decode("latin-1"), path=request.path.decode("latin-1")[:200],
                          peer=getattr(request.getClientAddress(), "host", "?"), message=message, reason=reason, count=count)
        return _json(request, code, {"error": message, "reason": reason})

    def protected(self) -> frozenset[str]:
        """Streams whose events the admin listener keeps to itself: none when it has auth."""
        return frozenset() if self.authenticated else protected_streams(self.daemon.config)

    def _live_views(self) -> None:
        """A live view (/events/<stream>) for every stream of the running configuration: built
        for a new stream, rebuilt when its schema or protection changed, dropped with its stream.
        A protected stream (without admin auth) gets a 403 instead, and no bus subscription."""
        streams = self.daemon.config.streams
        protected = self.protected()
        wanted = {name: (str(stream.schema), name in protected) for name, stream in streams.items()}
        for name in list(self._live_services):
            if self._live_services[name][0] != wanted.get(name):
                self.live.pop(name, None)
                self.listener.router.routes.pop(normalise_path(live_path(name)), None)
                service = self._live_services.pop(name)[1]
                if service is not None:
                    service.disownServiceParent()  # its viewers are closed
        for name, stream in streams.items():
            if name in self._live_services:
                continue
            if wanted[name][1]:
                refusal = ProtectedStream(self, name)
                self.listener.add(live_path(name), self._gate(refusal), f"admin live view of {name} (protected)")
                self._live_services[name] = (wanted[name], None)
                continue
            connector = _live_connector(name, self.definition.options.live_history)
            sink = sink_for_bus(self.daemon.bus, name, connector, make_mapper(connector.options.mapping, stream.schema), self.clock,
                                turns=self.daemon.reactor)  # on a shared bus, its ids, as a sink's
            self.live[name] = sink
            self.listener.add(live_path(name), self._gate(SseSinkResource(sink)), f"admin live view of {name}")
            service = SseSinkService(sink, self.daemon.bus, name, self.clock)
            service.setServiceParent(self)  # started at once when the admin service runs (a reload)
            self._live_services[name] = (wanted[name], service)

    @property
    def port(self) -> int:
        return self.listener.bound_port

    def startService(self) -> None:
        self._attach(list(self.daemon.sources) + list(self.daemon.sinks))
        super().startService()
        self._start_sampler()
        if not self.authenticated and not _is_loopback(self.definition.host):
            self.log.warn("the admin listener on {host} has no auth.type: anyone who reaches it reads /status.json, "
                          "/metrics and the live views of unprotected streams", host=self.definition.host)

    def follow_config(self) -> None:
        """The running configuration is a reload's now: read the users and tokens files again, and give
        the streams it has their live views (a stream declared or dropped alone changes no connector)."""
        self.read_credentials()
        self._live_views()

    def reloaded(self, changed_or_added: list[str], gone: list[str]) -> None:
        """Called by a reload that changed connectors: measure the ones it built, forget the removed ones."""
        for name in gone:
            self.watches.pop(name, None)
        self.forget_gone_sinks()
        self._attach(changed_or_added)
        self._start_sampler()

    def lag_observer(self, sink: str) -> Callable[[float], None]:
        """What a sink calls with each event's lag (given to it when it is built): the histogram's series."""
        self._lagged.add(sink)
        return self.lag.labels(sink=sink).observe

    def forget_gone_sinks(self) -> None:
        """Drop the lag series of sinks that do not run (removed by a reload, or built for one that was then
        rejected): /metrics shows the running sinks only, as every other family does."""
        running = set(self.daemon.sinks)
        for name in self._lagged - running:
            self.lag.remove(name)
        self._lagged &= running

    def _attach(self, names: list[str]) -> None:
        """Watch SSE sources' connectivity."""
        now = self.clock.seconds()
        for name in names:
            held = self.daemon.sources.get(name)
            if held is not None and source_of(held).connector.type == "sse":
                self.watches[name] = SourceWatch(held, now)

    def _start_sampler(self) -> None:
        if self.watches and self.running and (self._sampler is None or not self._sampler.running):
            interval = min(MAX_SAMPLE_INTERVAL, max(0.05, self.grace / 4))
            self._sampler = LoopingCall(self._sample)
            self._sampler.clock = self.clock
            self._sampler.start(interval, now=True)

    def stopService(self) -> Any:
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        self._sampler = None
        return super().stopService()

    def _sample(self) -> None:
        with self.log.failuresHandled("sampling source connectivity failed", level=LogLevel.error):
            now = self.clock.seconds()
            for watch in self.watches.values():
                watch.sample(now)

    def readiness(self, now: float) -> dict[str, Any]:
        """What ``/readyz`` answers: ready or not, and every check with its result."""
        checks: dict[str, str] = {}
        for listener in self.daemon.listeners.values():
            key = f"listener {listener.host}:{listener.port}"
            checks[key] = "ok" if listener.listening is not None else "not bound"
        for name, watch in self.watches.items():
            checks[f"source '{name}'"] = watch.verdict(now, self.grace) or "ok"
        for name, sink in self.daemon.sinks.items():
            if IReadiness.providedBy(sink):  # served by worker processes (workers.py)
                checks[f"sink '{name}'"] = sink.readiness()
        if ISharedBus.providedBy(self.daemon.bus):  # ingest answers 503 while it is down
            checks["bus"] = self.daemon.bus.readiness()
        not_ready = [f"{key}: {value}" for key, value in checks.items() if value != "ok"]
        if self.daemon.stopping:  # draining: a load balancer should send new clients elsewhere
            not_ready.insert(0, "the daemon is shutting down")
        elif not self.daemon.running:
            not_ready.insert(0, "the daemon is not running")
        return {"ready": not not_ready, "not_ready": not_ready, "checks": checks}

    def status(self) -> dict[str, Any]:
        """What /status.json serves. URLs are always masked (config.Url). Without admin auth,
        a protected stream's sources show no last event id (it is the stream's data) and the
        stream has no live view; names, schemas, paths and counters are shown, as in /metrics."""
        now = self.clock.seconds()
        figures = snapshot(self.daemon, now)
        protected = self.protected()
        for source in figures["sources"]:
            if source["stream"] in protected:
                source["last_event_id"] = None
        for stream in figures["streams"]:
            stream["protected"] = stream["name"] in protected
        lag = _lag_summaries(self.lag)
        for sink in figures["sinks"]:
            if sink["type"] == "sse-server":
                sink["lag"] = lag.get(sink["name"], {"count": 0})
        for source in figures["sources"]:
            watch = self.watches.get(source["name"])
            if watch is not None:
                source["down_for"] = watch.down_for(now)
        figures["ready"] = self.readiness(now)
        figures["admin"] = {
            "ready.grace": self.grace,
            "auth": list(self.definition.auth_types) or "none",
            "live": [
                {"stream": name, "path": live_path(name), "subscribers": len(sink.subscribers)}
                for name, sink in self.live.items()
            ],
            "protected": sorted(protected),  # no live view here without admin auth
        }
        return figures


# --------------------------------------------------------------------------- access (pure)


#: names that always mean this machine (RFC 6761: *.localhost too)
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def host_name(header: bytes) -> str | None:
    """The name in a ``Host`` header, lower case, without port, brackets or a trailing dot;
    None when it is no host name (non-ASCII bytes, an unclosed bracket, a bad port)."""
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, colon, port = text.rpartition(":") if ":" in text else (text, "", "")
    if colon and not port.isdigit():
        return None
    if not name or any(c in name for c in "/@?# \t"):
        return None
    return name.rstrip(".")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which ``Host`` headers the admin listener answers (a DNS-rebinding page sends its own name)."""

    names: frozenset[str]
    any_host: bool = False

    @classmethod
    def for_admin(cls, bound: str, extra: Iterable[str] = ()) -> "HostPolicy":
        names = set(LOCAL_NAMES) | {n for n in extra if n != "*"}
        bound = bound.strip("[]").lower()
        if bound not in _WILDCARDS:
            names.add(bound)
        return cls(frozenset(names), "*" in extra)

    def allows(self, headers: Sequence[bytes] | None, local_address: str | None) -> bool:
        """Every Host header given must name this listener; none at all (HTTP/1.0, not a
        browser) is let through. ``local_address`` is where the connection came in."""
        if self.any_host or not headers:
            return True
        local = (local_address or "").split("%", 1)[0].lower()
        if local.startswith("::ffff:"):  # an IPv4 client on a dual-stack socket
            local = local[7:]
        for header in headers:
            name = host_name(header)
            if name is None:
                return False
            if not (name in self.names or name.endswith(".localhost") or (local and name == local)):
                return False
        return True


def protected_streams(config: Config) -> frozenset[str]:
    """Streams served by a sink with ``auth.type`` other than none, and every stream that feeds
    one through routes (a route's source carries what its target holds)."""
    protected = {c.stream for c in config.sinks if isinstance(c.options, AccessOptions) and c.options.auth_type != "none"}
    grown = True
    while grown:
        feeding = {route.source for route in config.routes if route.target in protected} - protected
        protected |= feeding
        grown = bool(feeding)
    return frozenset(protected)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def live_path(stream: str) -> str:
    return "/events/" + quote(stream, safe="")


def _live_connector(stream: str, history: int) -> ConnectorDef[SseServerOptions]:
    """A sink definition for a live view: a real SSE sink's defaults, a short history."""
    options = SseServerOptions.with_defaults(
        history_size=history, server_path=live_path(stream), map_type="json",
        drain_window=0.0,  # the admin page's viewers close at once on stop
        retry_min=500, retry_max=1500,  # a few viewers: reconnect soon after a drop
    )
    return ConnectorDef("sink", f"admin live view {stream}", "sse-server", stream, options, Location("<admin>"))


def _lag_summaries(histogram: Histogram) -> dict[str, dict[str, float]]:
    """Count, mean and bucket-estimated p50/p99 per sink, for the status page."""
    out: dict[str, dict[str, float]] = {}
    for sink, lag in lag_buckets(histogram).items():
        summary: dict[str, float] = {"count": lag.count}
        if lag.count:
            summary["mean"] = lag.sum / lag.count
            summary["p50"] = lag.quantile(0.5)
            summary["p99"] = lag.quantile(0.99)
        out[sink] = summary
    return out


# --------------------------------------------------------------------------- resources


def _json(request: IRequest, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, allow_nan=False, default=str).encode() + b"\n"


class _Leaf(Resource):
    """A fixed-path resource whose HEAD is its GET without the body (and without Twisted's warning)."""

    isLeaf = True

    def render_GET(self, request: IRequest) -> bytes:
        raise NotImplementedError

    def render_HEAD(self, request: IRequest) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b""


class MetricsResource(_Leaf):

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        accept = (request.getHeader("accept") or "")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return encoder(self.registry)


class HealthResource(_Leaf):
    """Alive: the reactor answers. Nothing else is checked, so a restart is the right cure."""

    def __init__(self, admin: AdminService) -> None:
        super().__init__()
        self.admin = admin

    def render_GET(self, request: IRequest) -> bytes:
        started = self.admin.daemon.started_at
        uptime = self.admin.clock.seconds() - started if started is not None else 0.0
        return _json(request, 200, {"status": "ok", "uptime": round(uptime, 3)})


class ReadyResource(_Leaf):

    def __init__(self, admin: AdminService) -> None:
        super().__init__()
        self.admin = admin

    def render_GET(self, request: IRequest) -> bytes:
        verdict = self.admin.readiness(self.admin.clock.seconds())
        body = {"status": "ready" if verdict["ready"] else "not ready", **verdict}
        return _json(request, 200 if verdict["ready"] else 503, body)


class StatusResource(_Leaf):

    def __init__(self, admin: AdminService) -> None:
        super().__init__()
        self.admin = admin

    def render_GET(self, request: IRequest) -> bytes:
        return _json(request, 200, _finite(self.admin.status()))


class ChartsResource(_Leaf):
    """The charts' rings (``?after=<time>``: only the samples since, for a page that has the rest)."""

    def __init__(self, charts: ChartSampler) -> None:
        super().__init__()
        self.charts = charts

    def render_GET(self, request: IRequest) -> bytes:
        raw = (request.args or {}).get(b"after", [b""])[0]
        try:
            after = float(raw.decode("ascii")) if raw else None
        except (UnicodeDecodeError, ValueError):
            after = float("nan")
        if after is not None and not math.isfinite(after):
            return _json(request, 400, {"error": "after must be a time in seconds", "reason": "bad-query"})
        return _json(request, 200, self.charts.history(after))


def _finite(value: Any) -> Any:
    """JSON has no infinity: an estimate past the last bucket reads as null."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class AdminGate(Resource):
    """The Host check, then the Guard for the scheme the request uses (the one a browser is
    challenged with when it sent none: basic, if accepted), then the resource."""

    isLeaf = True

    def __init__(self, inner: Resource, hosts: HostPolicy, guards: dict[str, Guard], refuse: Any) -> None:
        super().__init__()
        self.inner = inner
        self.hosts = hosts
        self.guards = guards
        self.refuse = refuse

    def render(self, request: Request) -> Any:
        local = getattr(request.getHost(), "host", None)
        if not self.hosts.allows(request.requestHeaders.getRawHeaders(b"host"), local):
            return self.refuse(request, 421, "host-not-allowed",
                               "this Host is not the admin listener's (see admin allowed.hosts)")
        if not self.guards:
            return self.inner.render(request)
        authorization = (request.requestHeaders.getRawHeaders(b"authorization") or [b""])[0]
        scheme = "bearer" if authorization[:7].lower() == b"bearer " else "basic"
        guard = self.guards.get(scheme) or next(iter(self.guards.values()))
        return guard.render(request)


class ProtectedStream(_Leaf):
    """The live view of a stream a protected sink serves, while the admin listener has no auth."""

    def __init__(self, admin: AdminService, stream: str) -> None:
        super().__init__()
        self.admin = admin
        self.stream = stream

    def render_GET(self, request: IRequest) -> bytes:
        return self.admin.refuse(request, 403, "protected-stream",
                                 f"stream {self.stream} is served by a sink with auth; its live view needs admin auth.type")


class PageResource(_Leaf):
    """A file shipped in ``sse_daemon/ops/static`` (package data; no build step)."""
    #: the page only talks to this origin, and renders event data as text; no other site may frame it
    #: (default-src does not cover frame-ancestors)
    POLICY = b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"

    def __init__(self, name: str, content_type: bytes) -> None:
        super().__init__()
        self.body = resources.files("sse_daemon.ops").joinpath("static", name).read_bytes()
        self.content_type = content_type

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Content-Security-Policy", self.POLICY)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return self.body
