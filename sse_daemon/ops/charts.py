"""The last minutes of every figure, kept by the daemon for the status page's charts.

Once a ``charts.interval`` (a second) the sampler reads the counters ``/status.json``
shows and writes one value per figure: a rate for a counter (per second since the last
sample), the value of a gauge (subscribers), and the p99 of the lag of the events handed
off since the last sample. Each figure keeps its values in a ring of ``points`` doubles
(``charts.window`` / ``charts.interval``: 900 for 15 minutes), so a page opened now shows
the last minutes at once, and the memory is fixed when the ring is made: 8 bytes a value,
whatever the traffic. All rings are written at the same slot each tick (NaN where nothing
is known: a connector added later, the first sample after a restart), so one ring of
times serves them all. The figures per ring are :data:`DAEMON`, :data:`SSE_SINK`,
:data:`LOG_SINK`, :data:`SSE_SOURCE` and :data:`INGEST`.
"""

from __future__ import annotations

import math
from array import array
from typing import Any, Iterable, Mapping

from prometheus_client import Histogram
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from sse_daemon.connectors.interfaces import ISseSinkService
from sse_daemon.ops.figures import LagBuckets, lag_buckets, listener_figures, sink_figures, source_figures
from sse_daemon.ops.view import DaemonFigures

NAN = float("nan")
#: values per ring at most, whatever ``charts.window`` says (675 KiB per figure)
MAX_POINTS = 86_400

#: the figures charted for each kind of connector, in the page's order
DAEMON = ("events_in", "events_out", "subscribers", "dropped_slow", "rejected", "reconnects", "lag_p99")
SSE_SINK = ("events_in", "events_out", "subscribers", "dropped_slow", "rejected", "lag_p99")
LOG_SINK = ("events_in", "events_out")
SSE_SOURCE = ("events_in", "rejected", "reconnects")
INGEST = ("events_in", "rejected")
#: figures read from counters, charted per second; the others are charted as they are
RATES = frozenset({"events_in", "events_out", "dropped_slow", "rejected", "reconnects"})


def ring_points(interval: float, window: float) -> int:
    """Values per ring for ``charts.window`` seconds sampled every ``charts.interval``."""
    points = window / interval
    return max(2, int(points)) if points < MAX_POINTS else MAX_POINTS


class Rings:
    """One connector's (or the daemon's) rings, and its counters at the last sample, for rates."""

    def __init__(self, figures: Iterable[str], points: int, held: object = None) -> None:
        self.rings = {figure: array("d", [NAN]) * points for figure in figures}
        #: the object the figures were read from: another one (a reload rebuilt it) restarts its counters
        self.held = held
        self.previous: dict[str, float] = {}
        self.at: float | None = None

    def rates(self, held: object, now: float, totals: Mapping[str, float]) -> dict[str, float]:
        """Per second since the last sample; NaN on the first sample of ``held``."""
        if held is not self.held:
            self.held, self.previous, self.at = held, {}, None
        elapsed = now - self.at if self.at is not None else 0.0
        rates = {}
        for figure, total in totals.items():
            before = self.previous.get(figure, NAN)
            rates[figure] = (total - before) / elapsed if elapsed > 0 and total >= before else NAN  # NaN >= is False
        self.previous, self.at = dict(totals), now
        return rates

    def write(self, slot: int, values: Mapping[str, float]) -> None:
        for figure, ring in self.rings.items():
            ring[slot] = values.get(figure, NAN)


class ChartSampler(TimerService):
    """Samples every figure once an ``interval`` into rings of ``points`` values (see the module),
    on the daemon's clock (a ``task.Clock`` in tests); the first sample when it starts."""

    log = Logger()

    def __init__(self, daemon: DaemonFigures, lag: Histogram, clock: IReactorTime, interval: float, points: int) -> None:
        super().__init__(interval, self.sample)
        self.clock = self._clock = clock  # TimerService's clock may be None: ours is not
        self.setName("charts")
        self.daemon = daemon
        self.lag = lag
        self.interval = interval
        self.points = max(2, points)
        self.times = array("d", [NAN]) * self.points
        #: samples taken so far; the next is written at ``taken % points``
        self.taken = 0
        self.total = Rings(DAEMON, self.points)
        self.sinks: dict[str, Rings] = {}
        self.sources: dict[str, Rings] = {}
        #: what the daemon's rejections are summed from besides connectors: each port's refusals
        self._listeners = Rings((), self.points)
        self._lag_before: dict[str, LagBuckets] = {}

    def sample(self) -> None:
        """One tick: every figure's value now, written at the same slot of every ring."""
        with self.log.failuresHandled("sampling the figures for the charts failed", level=LogLevel.error):
            now = round(self._clock.seconds(), 3)  # as served: a page's ?after= is this number back
            slot = self.taken % self.points
            lag_now = lag_buckets(self.lag)
            lag_since = {sink: buckets.since(self._lag_before.get(sink)) for sink, buckets in lag_now.items()}
            self._lag_before = lag_now
            daemon = self.daemon
            started = daemon.started_at if daemon.started_at is not None else now
            sinks = {name: self._sink(name, service, now, lag_since.get(name)) for name, service in daemon.sinks.items()}
            sources = {
                name: self._source(name, held, source_figures(held, daemon.source_buses.get(name), now, started), now)
                for name, held in daemon.sources.items()
            }
            for table, values in ((self.sinks, sinks), (self.sources, sources)):
                for name in set(table) - set(values):
                    del table[name]  # gone with a reload
                for name, figures in values.items():
                    table[name].write(slot, figures)
            refused = sum(sum(listener_figures(listener)["rejected"].values()) for listener in daemon.listeners.values())
            listeners = self._listeners.rates(None, now, {"rejected": refused})["rejected"]
            totals = {
                figure: _sum(figures.get(figure, NAN) for figures in (*sinks.values(), *sources.values()))
                for figure in ("events_out", "subscribers", "dropped_slow", "rejected", "reconnects")
            }
            totals["events_in"] = _sum(figures["events_in"] for figures in sources.values())
            totals["rejected"] = _sum((totals["rejected"], listeners))
            totals["lag_p99"] = _p99(LagBuckets.merged(list(lag_since.values()))) if lag_since else NAN
            self.total.write(slot, totals)
            self.times[slot] = now
            self.taken += 1

    def _sink(self, name: str, service: Any, now: float, lag: LagBuckets | None) -> dict[str, float]:
        figures = sink_figures(service)
        sse = ISseSinkService.providedBy(service)
        rings = self.sinks.get(name)
        if rings is None or set(rings.rings) != set(SSE_SINK if sse else LOG_SINK):
            rings = self.sinks[name] = Rings(SSE_SINK if sse else LOG_SINK, self.points)
        counters = ("events_in", "events_out", "dropped_slow") if sse else ("events_in", "events_out")
        totals = {key: float(figures[key]) for key in counters}
        if sse:
            totals["rejected"] = float(sum(figures["rejected"].values()))
        values = rings.rates(service, now, totals)
        if sse:
            values["subscribers"] = float(figures["subscribers"])
            values["lag_p99"] = _p99(lag) if lag is not None else NAN
        return values

    def _source(self, name: str, held: Any, figures: dict[str, Any], now: float) -> dict[str, float]:
        sse = figures["type"] == "sse"
        rings = self.sources.get(name)
        if rings is None or set(rings.rings) != set(SSE_SOURCE if sse else INGEST):
            rings = self.sources[name] = Rings(SSE_SOURCE if sse else INGEST, self.points)
        totals = {"events_in": float(figures["events_in"]), "rejected": float(sum(figures["rejected"].values()))}
        if sse:
            totals["reconnects"] = float(figures["reconnects"])
        return rings.rates(held, now, totals)

    def history(self, after: float | None = None) -> dict[str, Any]:
        """What ``/charts.json`` serves: every ring's values oldest first, or only those sampled
        after ``after`` (what a page that has the rest polls for). NaN is null."""
        kept = min(self.taken, self.points)
        count = kept
        if after is not None:
            count = 0
            while count < kept and self.times[(self.taken - count - 1) % self.points] > after:
                count += 1
        slots = [(self.taken - count + i) % self.points for i in range(count)]

        def read(rings: Rings) -> dict[str, list[float | None]]:
            return {figure: [_json_number(ring[slot]) for slot in slots] for figure, ring in rings.rings.items()}

        return {
            "interval": self.interval,
            "points": self.points,
            "latest": self.times[(self.taken - 1) % self.points] if self.taken else None,
            "times": [self.times[slot] for slot in slots],
            "daemon": read(self.total),
            "sinks": {name: read(rings) for name, rings in self.sinks.items()},
            "sources": {name: read(rings) for name, rings in self.sources.items()},
        }


def _sum(values: Iterable[float]) -> float:
    """The sum of what is known; NaN when nothing is."""
    known = [value for value in values if not math.isnan(value)]
    return sum(known) if known else NAN


def _p99(lag: LagBuckets) -> float:
    """The p99 of a sample's events; NaN without events, the last finite bound past it."""
    if lag.count <= 0:
        return NAN
    value = lag.quantile(0.99)
    return value if value != float("inf") else max((le for le, _ in lag.buckets if le != float("inf")), default=NAN)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)
