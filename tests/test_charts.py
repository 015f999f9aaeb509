"""The charts' rings: sampled on the daemon's clock (a ``Clock`` here), bounded, rates per second.

The daemon runs with a ``task.Clock``, so every sample is taken when the test advances it;
events go in over real HTTP ingest (the source's counters are the point) and a real subscriber.
"""

from __future__ import annotations

import json
import math

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.load import load_files
from sse_daemon.daemon.reload import Reloader
from sse_daemon.ops.charts import DAEMON, INGEST, LOG_SINK, MAX_POINTS, SSE_SINK, Rings, ring_points
from sse_daemon.ops.figures import LagBuckets

from .conftest import deadline, subscribe, wait_for, write_config
from .test_admin import Http
from .test_admin_access import body, get

CONFIG = """\
streams:
  Readings: "sensor string, value double"
sources:
  In:
    type: http
    stream: Readings
    receiver.url: http://127.0.0.1:0/publish
sinks:
  Live:
    type: sse-server
    stream: Readings
    server.host: 127.0.0.1
    server.port: 0
    server.path: live
  Logged:
    type: log
    stream: Readings
admin:
  port: 0
  charts.interval: 2
  charts.window: 10
"""


def readings(count: int) -> bytes:
    return json.dumps([{"sensor": f"s{n}", "value": n} for n in range(count)]).encode()


@pytest_twisted.ensureDeferred
async def test_rings_keep_rates_per_second_gauges_and_only_the_last_window(daemon) -> None:
    clock = Clock()
    clock.advance(1000)
    service = await daemon(CONFIG, clock=clock)
    charts = service.admin.charts
    http = Http()
    assert (charts.interval, charts.points) == (2.0, 5), "charts.window / charts.interval values per ring"
    first = charts.history()
    assert first["times"] == [1000.0], "one sample at start: the counters rates are measured from"
    assert set(first["daemon"]) == set(DAEMON) and set(first["sinks"]["Live"]) == set(SSE_SINK)
    assert set(first["sinks"]["Logged"]) == set(LOG_SINK) and set(first["sources"]["In"]) == set(INGEST)
    assert first["sinks"]["Live"]["events_in"] == [None], "no rate before a second sample"
    assert first["sinks"]["Live"]["subscribers"] == [0]

    subscriber = await subscribe(service.port_of("Live"), "/live")
    code, _, _ = await http.post(f"http://127.0.0.1:{service.port_of('In')}/publish", readings(10))
    assert code == 200
    await subscriber.wait_for(b'"sensor":"s9"')
    clock.advance(2)
    after = charts.history(after=1000.0)
    assert after["times"] == [1002.0] and after["latest"] == 1002.0
    assert after["sources"]["In"]["events_in"] == [5.0], "10 events in 2 s"
    assert after["sinks"]["Live"]["events_in"] == [5.0] and after["sinks"]["Live"]["events_out"] == [5.0]
    assert after["sinks"]["Logged"]["events_out"] == [5.0]
    assert after["sinks"]["Live"]["subscribers"] == [1]
    assert after["sinks"]["Live"]["lag_p99"][0] is not None, "the lag of the events handed off since the last sample"
    assert after["daemon"]["events_in"] == [5.0] and after["daemon"]["events_out"] == [10.0], "Live and Logged"
    assert after["daemon"]["subscribers"] == [1] and after["daemon"]["rejected"] == [0.0]

    code, _, _ = await http.post(f"http://127.0.0.1:{service.port_of('In')}/publish", b"not json")
    assert code == 400
    await subscriber.close()
    await wait_for(lambda: not service.sinks["Live"].sink.subscribers, what="the subscriber to be gone")
    clock.advance(2)
    latest = charts.history(after=1002.0)
    assert latest["sinks"]["Live"]["subscribers"] == [0], "the drop shows in the next sample"
    assert latest["sinks"]["Live"]["events_in"] == [0.0] and latest["sinks"]["Live"]["lag_p99"] == [None]
    assert latest["sources"]["In"]["rejected"] == [0.5] and latest["daemon"]["rejected"] == [0.5]

    for _ in range(20):
        clock.advance(2)
    full = charts.history()
    assert full["times"] == [1036.0, 1038.0, 1040.0, 1042.0, 1044.0], "the last 5 samples, oldest first"
    assert all(len(values) == 5 for values in full["sinks"]["Live"].values())
    for rings in (charts.total, *charts.sinks.values(), *charts.sources.values()):
        for ring in rings.rings.values():
            assert len(ring) == 5 and ring.itemsize == 8, "a ring never grows: 8 bytes a value"
    assert charts.history(after=1044.0)["times"] == []


@pytest_twisted.ensureDeferred
async def test_a_reload_drops_a_removed_connectors_rings_and_restarts_a_rebuilt_ones_rates(daemon, tmp_path) -> None:
    clock = Clock()
    service = await daemon(CONFIG, clock=clock)
    charts = service.admin.charts
    clock.advance(2)
    assert set(charts.sinks) == {"Live", "Logged"}
    changed = CONFIG.replace("  Logged:\n    type: log\n    stream: Readings\n", "").replace("server.path: live", "server.path: live2")
    path = write_config(tmp_path, changed)
    assert await deadline(Reloader(service, [str(path)]).reload()) is True
    clock.advance(2)
    history = charts.history()
    assert set(history["sinks"]) == {"Live"}, "a removed sink's rings go with it"
    assert history["sinks"]["Live"]["events_in"][-1] is None, "Live was rebuilt: its counters start again, no rate yet"
    clock.advance(2)
    assert charts.history()["sinks"]["Live"]["events_in"][-1] == 0.0


def test_rates_restart_when_the_object_read_is_another() -> None:
    rings = Rings(("events_in",), 3)
    first, second = object(), object()
    assert math.isnan(rings.rates(first, 10.0, {"events_in": 5})["events_in"])
    assert rings.rates(first, 11.0, {"events_in": 8})["events_in"] == 3.0
    assert math.isnan(rings.rates(second, 12.0, {"events_in": 1})["events_in"]), "rebuilt: its counters started again"
    assert rings.rates(second, 14.0, {"events_in": 5})["events_in"] == 2.0


def test_ring_points_are_bounded() -> None:
    assert ring_points(1.0, 900.0) == 900
    assert ring_points(0.5, 0.5) == 2
    assert ring_points(0.05, float("inf")) == MAX_POINTS
    assert ring_points(0.05, 1e9) == MAX_POINTS


def test_lag_p99_of_the_events_since_the_last_sample() -> None:
    inf = float("inf")
    earlier = LagBuckets(((0.001, 90.0), (0.01, 100.0), (inf, 100.0)), 100.0, 0.1)
    now = LagBuckets(((0.001, 90.0), (0.01, 100.0), (inf, 200.0)), 200.0, 500.1)
    since = now.since(earlier)
    assert since.count == 100 and since.quantile(0.99) == inf, "the last 100 events were all slow"
    assert now.quantile(0.5) == 0.01 and earlier.quantile(0.5) == 0.001
    merged = LagBuckets.merged([earlier, since])
    assert merged.count == 200 and merged.buckets == ((0.001, 90.0), (0.01, 100.0), (inf, 200.0))


@pytest_twisted.ensureDeferred
async def test_charts_json_goes_through_the_admin_host_check_and_refuses_a_bad_query(daemon) -> None:
    service = await daemon(CONFIG)
    port = service.admin.port
    answer = await get(port, "/charts.json")
    assert answer.startswith(b"HTTP/1.1 200") and body(answer)["points"] == 5
    assert b"no-store" in answer.partition(b"\r\n\r\n")[0].lower()
    assert (await get(port, "/charts.json", host="evil.example")).startswith(b"HTTP/1.1 421")
    for query in ("after=nan", "after=soon", "after=inf", "after=%ff"):
        answer = await get(port, "/charts.json?" + query)
        assert answer.startswith(b"HTTP/1.1 400") and body(answer)["reason"] == "bad-query", query
    script = await get(port, "/charts.js")
    assert script.startswith(b"HTTP/1.1 200") and b"createElementNS" in script


@pytest.mark.parametrize("option, value", [("charts.interval", "0"), ("charts.window", "0.5")])
def test_chart_options_are_checked(tmp_path, option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        load_files([str(write_config(tmp_path, CONFIG + f"  {option}: {value}\n"))])
