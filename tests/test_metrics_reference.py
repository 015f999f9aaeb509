"""docs/metrics.md is generated from the family table, and the table is what /metrics serves.

The collector builds its families from :data:`sse_daemon.ops.metrics.FAMILIES`; these tests
check that the committed reference is the table's, and that a running daemon (on the memory
bus and on a Redis bus) serves exactly the table's families, with their types, help texts
and labels.
"""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from prometheus_client import Metric

from sse_daemon.ops import metrics
from sse_daemon.ops.metrics import FAMILIES, Family

from .redis_server import redis_server  # noqa: F401  (the fixture)
from .test_admin import TRAFFIC
from .test_redisbus import instance


def test_metrics_reference_is_generated_from_the_code() -> None:
    committed = metrics.path().read_text(encoding="utf-8")
    assert committed == metrics.render(), "docs/metrics.md is stale: run `.venv/bin/python -m sse_daemon.ops.metrics`"


def test_every_family_has_a_row_with_its_exposed_name() -> None:
    text = metrics.render()
    missing = [family.exposed_name for family in FAMILIES if f"| `{family.exposed_name}` | {family.type} |" not in text]
    assert not missing, f"no row for: {missing}"
    assert "| `sse_daemon_sink_events_in_total` | counter | `sink` |" in text, "a counter is shown as scraped, with _total"
    assert "| `sse_daemon_bus_up` | gauge |  |" in text and "Only with `bus: {type: redis}`." in text


def test_the_table_names_each_family_once() -> None:
    names = [family.name for family in FAMILIES]
    assert len(names) == len(set(names))
    assert metrics.LAG.type == "histogram" and metrics.LAG.labels == ("sink",)


def test_only_the_shared_bus_families_depend_on_the_bus() -> None:
    memory, redis = metrics.scraped(shared_bus=False), metrics.scraped(shared_bus=True)
    assert set(redis) - set(memory) == {family.name for family in FAMILIES if family.shared_bus}
    assert set(memory) <= set(redis)
    assert "sink_lag_seconds" not in redis, "the histogram is fed as events pass, not built per scrape"
    with pytest.raises(ValueError, match="histogram"):
        metrics.LAG.build()


def served(service) -> dict[str, Metric]:
    """The daemon's own families as its registry collects them (process_* are the standard ones)."""
    return {metric.name: metric for metric in service.admin.registry.collect() if not metric.name.startswith("process_")}


def assert_served_is_the_table(service, shared_bus: bool) -> None:
    families = served(service)
    expected: dict[str, Family] = {family.metric_name: family for family in FAMILIES if shared_bus or not family.shared_bus}
    assert sorted(families) == sorted(expected), "a family served without a row, or a row not served"
    for name, family in expected.items():
        metric = families[name]
        assert (metric.type, metric.documentation) == (family.type, family.help), name
        for sample in metric.samples:
            labels = set(sample.labels) - ({"le"} if family.type == "histogram" else set())
            assert labels == set(family.labels), f"{sample.name} has labels {sorted(labels)}, the table says {family.labels}"


@pytest_twisted.ensureDeferred
async def test_a_daemon_on_the_memory_bus_serves_the_tables_families(daemon) -> None:
    service = await daemon(TRAFFIC)
    families = served(service)
    assert families["sse_daemon_sink_subscribers"].samples, "labels are checked on real samples"
    assert_served_is_the_table(service, shared_bus=False)


@pytest_twisted.ensureDeferred
async def test_a_daemon_on_a_redis_bus_serves_the_tables_families_with_the_bus_ones(daemon, redis_server) -> None:
    no_routes = TRAFFIC.replace("routes:\n  - {from: Readings, to: Narrow}\n", "")  # not on a shared bus yet
    assert no_routes != TRAFFIC
    text = no_routes + f"bus:\n  type: redis\n  url: {redis_server.url}\n  key.prefix: \"t{uuid.uuid4().hex[:8]}:\"\n"
    service = await instance(daemon, text)
    assert served(service)["sse_daemon_bus_up"].samples[0].value == 1.0
    assert_served_is_the_table(service, shared_bus=True)
