"""The metric families of ``/metrics``, declared once, and the reference written from them.

:class:`~sse_daemon.ops.admin.DaemonCollector` builds its families from
:data:`FAMILIES` and the admin builds the lag histogram from its row, so a family
exists exactly when it has a row here. ``python -m sse_daemon.ops.metrics``
writes docs/metrics.md from the same rows, and ``tests/test_metrics_reference.py``
fails when the committed file and the code disagree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sse_daemon.config.reference import cell, write_generated  # the same table cells and writer as docs/options.md

#: every family's name starts with this
PREFIX = "sse_daemon_"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as a scraper sees it."""

    #: the name after :data:`PREFIX`, without the ``_total`` a counter is exposed with;
    #: the collector fills the family under this name
    name: str
    type: Literal["counter", "gauge", "histogram"]
    #: the HELP text, exposed as is
    help: str
    labels: tuple[str, ...] = ()
    #: only with ``bus: {type: redis}`` (the shared bus's own figures)
    shared_bus: bool = False
    #: more for the reference than the HELP text says (the values of a reason label, ...)
    notes: str = ""

    @property
    def metric_name(self) -> str:
        """The family's name, as prometheus_client names it (no ``_total``)."""
        return PREFIX + self.name

    @property
    def exposed_name(self) -> str:
        """The name a scraper reads (a counter's samples end in ``_total``)."""
        return self.metric_name + ("_total" if self.type == "counter" else "")

    def build(self) -> CounterMetricFamily | GaugeMetricFamily:
        """An empty family for one scrape (the collector adds the samples)."""
        labels = list(self.labels) or None
        if self.type == "counter":
            return CounterMetricFamily(self.metric_name, self.help, labels=labels)
        if self.type == "gauge":
            return GaugeMetricFamily(self.metric_name, self.help, labels=labels)
        raise ValueError(f"{self.metric_name} is a {self.type}: it is observed as events pass, not built per scrape")


SINK, SOURCE, ROUTE = ("sink",), ("source",), ("from", "to")

#: every family, in the order a scrape shows the collector's
FAMILIES: tuple[Family, ...] = (
    Family("ready", "gauge", "1 when /readyz answers 200: listeners bound, SSE sources connected or within ready.grace."),
    Family("start_time_seconds", "gauge", "When the daemon started, in seconds since the epoch."),
    Family("sink_subscribers", "gauge", "Subscribers connected to an SSE sink now.", SINK),
    Family("sink_hub_subscribers", "gauge", "Hub connections (hub.path) that read an SSE sink now.", SINK,
           notes="Not in sink_subscribers: one hub connection counts once for each sink it reads."),
    Family("sink_history_events", "gauge", "Events an SSE sink holds for resume.", SINK),
    Family("sink_connections_opened", "counter", "Subscriber connections accepted.", SINK),
    Family("sink_connections_closed", "counter", "Subscriber connections ended (by the client, by a slow drop or on stop).", SINK),
    Family("sink_events_in", "counter", "Events the sink received from the bus.", SINK, notes="Log sinks too."),
    Family("sink_events_out", "counter", "Event frames written to subscribers (for a log sink: events logged).", SINK,
           notes="Events × subscribers, plus replays."),
    Family("sink_bytes_written", "counter", "Bytes of event frames written to subscribers (heartbeats not counted).", SINK),
    Family("sink_dropped_slow", "counter", "Subscribers disconnected because their queue passed subscriber.queue.size or .bytes.", SINK),
    Family("sink_streams_ended", "counter", "Subscriber streams the sink ended because their access ended, by reason.", ("sink", "reason"),
           notes="`token-expired`: a JWT's `exp` passed; `credentials-revoked`: a reload's fresh users, tokens or JWT key "
                 "no longer let it in. Both reasons are always exported."),
    Family("sink_events_replayed", "counter", "Events sent from history to subscribers that resumed with Last-Event-ID.", SINK),
    Family("sink_events_filtered", "counter", "Event frames withheld from subscribers by their own filters (subscriber.where), live and on resume.", SINK,
           notes="Events × filtered subscribers whose filter did not pass them."),
    Family("sink_worker_restarts", "counter",
           "Worker processes of a sink (worker.count above 1) started again after they ended or were killed.", SINK,
           notes="0 without worker processes."),
    Family("sink_history_commit_failures", "counter",
           "Group commits to a sink's history file (history.path) that failed: disk full, I/O error.", SINK,
           notes="Every publish of such a turn was refused: ingest answered 503 (history-unavailable). 0 without history.path."),
    Family("sink_events_unmapped", "counter", "Events a sink dropped because its mapper refused them.", SINK,
           notes="Also events it could not write because of a bug; logged, sampled."),
    Family("sink_requests_rejected", "counter", "Subscription requests refused by a sink's limits or access rules, by reason.",
           ("sink", "reason")),
    Family("sink_resumes", "counter", "Subscribers that sent Last-Event-ID, by outcome (exact, or the reset reason).", ("sink", "outcome")),
    Family("sink_lag_seconds", "histogram",
           "Seconds from an event entering the daemon to its hand-off to the sink's subscribers' sockets.", SINK,
           notes="Entering: an ingest request, an SSE message. Observed once per event per SSE sink (never per subscriber), "
                 "as events pass; every other family is read from the connectors' counters at scrape time."),
    Family("source_events_in", "counter", "Events a source published into its stream.", SOURCE),
    Family("source_events_rejected", "counter", "Messages or requests a source refused, by reason.", ("source", "reason"),
           notes="Requests (ingest) or messages (SSE source): `invalid-json`, `too-large`, `event-too-large`, ...; "
                 "`bus-unavailable`: events an SSE source read that a shared bus that was down did not take; "
                 "`fanout-behind`: requests refused while this instance's fan-out of a shared bus's stream was over "
                 "`fanout.max.lag`; `credentials-revoked`: streaming publishes cut short by a reload's fresh credentials; "
                 "`token-expired`: requests whose JWT had expired, and streaming publishes cut short at its `exp`."),
    Family("source_connected", "gauge", "1 while an SSE source has a stream open.", SOURCE),
    Family("source_reconnects", "counter", "Times an SSE source connected again after a stream ended or failed.", SOURCE),
    Family("source_last_event_age_seconds", "gauge", "Seconds since the source's last event (since the start if it had none).", SOURCE,
           notes="So a source that never delivered still trips an alert."),
    Family("route_events", "counter", "Events a route forwarded.", ROUTE),
    Family("route_events_rejected", "counter",
           "Events a route could not forward, by reason: a value in them no sink could write (a bug upstream: every entry point checks values), "
           "or bus-unavailable (a shared bus that was down did not take them).", (*ROUTE, "reason")),
    Family("stream_subscriber_failures", "counter", "Deliveries to a stream's subscribers that raised (one a publish or bus read per subscriber; logged with a traceback).", ("stream",),
           notes="A bug; logged sampled: the first ten, then every thousandth."),
    Family("listener_connections", "gauge", "Connections open on a port (the admin listener's too), counted from accept.", ("listener",),
           notes="The label is `host:port`."),
    Family("listener_protocol_connections", "gauge",
           "Connections open on a port by the protocol they speak: `http/1.1`, or `h2` once ALPN chose HTTP/2 on a TLS port.",
           ("listener", "protocol"), notes="A connection counts as `http/1.1` until its first bytes show which."),
    Family("listener_requests", "counter", "Requests a port received (every stream of an HTTP/2 connection is one), by HTTP version.",
           ("listener", "version"), notes="Versions: `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`."),
    Family("listener_requests_rejected", "counter",
           "Connections and requests a port refused before any sink or ingest saw them (connection budgets, deadlines, shutdown, "
           "malformed requests, unknown paths), by reason.", ("listener", "reason"),
           notes="Reasons: `too-many-connections-from-address`, `descriptors-low`, `head-timeout`, `body-timeout`, `shutting-down`, `misdirected` (HTTP/2: a request for another port over a connection "
                 "a browser reused, answered 421), "
                 "`body-too-large`, `malformed-request` (Twisted's parser, a header line past 16 KiB), `invalid-header` (not UTF-8), "
                 "`not-found`, `method-not-allowed`, or `internal-error` (a bug, answered 500)."),
    Family("admin_requests_rejected", "counter",
           "Admin listener requests refused, by reason (host-not-allowed, protected-stream, missing-credentials, bad-credentials, ...).",
           ("reason",), notes="Also `invalid-token`."),
    Family("bus_up", "gauge", "1 while the shared bus (Redis) is connected; ingest answers 503 while it is 0.", shared_bus=True),
    Family("bus_events_published", "counter", "Events this instance published to the shared bus (acknowledged by Redis).", shared_bus=True),
    Family("bus_events_refused", "counter", "Events refused because the shared bus was down (their ingest answered 503).", shared_bus=True),
    Family("bus_reconnects", "counter", "Times the shared bus lost Redis and tried again.", shared_bus=True),
    Family("bus_events_invalid", "counter",
           "Events the shared bus refused to write because Redis could not take a value in them (their publisher got 400; "
           "the connection stayed up).", shared_bus=True),
    Family("bus_fanout_lag_seconds", "gauge",
           "Seconds the oldest publish Redis acknowledged to this instance has waited for this instance's own fan-out, "
           "by stream; above `fanout.max.lag` the instance's ingest answers 503 `fanout-behind`.", ("stream",), shared_bus=True,
           notes="0 when nothing waits, or nobody on this instance reads the stream."),
    Family("bus_entries_lost", "counter",
           "Entries Redis trimmed before this instance read them (it fell more than the bus's history.size behind a "
           "stream): its subscribers never got them (logged, sampled).", shared_bus=True,
           notes="Found when the reader has caught up (checked every second); needs Redis 7 (XINFO's entries-added)."),
    Family("bus_entries_skipped", "counter",
           "Redis entries this instance could not decode, skipped on live reads and resume replays (logged, sampled).", shared_bus=True),
)

#: the histogram the admin feeds as events pass (the only family not read at scrape time)
LAG = next(family for family in FAMILIES if family.name == "sink_lag_seconds")


def scraped(shared_bus: bool) -> dict[str, CounterMetricFamily | GaugeMetricFamily]:
    """Empty families for one scrape by the collector, by :attr:`Family.name`: every family but
    the histogram, and the shared bus's only with one."""
    return {family.name: family.build() for family in FAMILIES
            if family.type != "histogram" and (shared_bus or not family.shared_bus)}


# --------------------------------------------------------------------------- the reference

HEADER = """\
# Metrics reference

<!-- Generated by `python -m sse_daemon.ops.metrics` from the family table in
sse_daemon/ops/metrics.py; do not edit by hand (tests/test_metrics_reference.py checks it). -->

What the admin listener's `/metrics` serves (see [operations.md](operations.md#metrics)):
Prometheus text, or OpenMetrics when the scraper asks for it. Counters are shown with the
`_total` their samples carry. Labels are connector names and fixed reason strings only, never
a client, an id or a payload. The Help column is the family's HELP text, as a scrape shows it.
"""

FOOTER = """
Also served: the standard `process_*` figures of the daemon's process (`process_open_fds`
against `process_max_fds`, which is `LimitNOFILE`; memory; CPU).
"""


def render() -> str:
    rows = ["\n| Metric | Type | Labels | Help | Notes |\n|---|---|---|---|---|\n"]
    for family in FAMILIES:
        labels = ", ".join(f"`{label}`" for label in family.labels)
        notes = " ".join(filter(None, ["Only with `bus: {type: redis}`." if family.shared_bus else "", family.notes]))
        rows.append(f"| `{family.exposed_name}` | {family.type} | {labels} | {cell(family.help)} | {cell(notes)} |\n")
    return HEADER + "".join(rows) + FOOTER


def path() -> Path:
    return Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def main(argv: list[str] | None = None) -> int:
    return write_generated(render(), path(), argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
