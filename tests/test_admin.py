"""The admin listener: /metrics figures that move with the traffic, health and readiness, the status data.

Metrics are read back with prometheus_client's own parser, as Prometheus would.
"""

from __future__ import annotations

import json
from typing import Any

import prometheus_client
import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.model import RawConfig
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.events.schema import Event

from .conftest import deadline, sleep, subscribe, wait_for
from .sse_servers import ScriptedServer

TRAFFIC = """\
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
    subscriber.queue.size: 2
  Narrow:
    type: sse-server
    schema: "sensor string"
    server.host: 127.0.0.1
    server.port: 0
  Logged:
    type: log
    stream: Readings
routes:
  - {from: Readings, to: Narrow}
admin:
  port: 0
"""


class Http:
    """treq with a pool that keeps nothing open after a test."""

    def __init__(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, Any, bytes]:
        response = await deadline(treq.request(method, url, data=body, pool=self.pool))
        content = await deadline(treq.content(response))
        return response.code, response.headers, content

    async def get(self, url: str) -> tuple[int, Any, bytes]:
        return await self.request("GET", url)

    async def post(self, url: str, body: bytes) -> tuple[int, Any, bytes]:
        return await self.request("POST", url, body)


async def scrape(http: Http, port: int) -> dict[tuple[str, frozenset], float]:
    code, headers, body = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_events_rejections_and_slow_drops(daemon) -> None:
    service = await daemon(TRAFFIC)
    http = Http()
    admin = service.admin.port
    port = service.port_of("Live")
    publish_url = f"http://127.0.0.1:{service.port_of('In')}/publish"

    before = await scrape(http, admin)
    assert value(before, "sse_daemon_sink_subscribers", sink="Live") == 0
    assert value(before, "sse_daemon_sink_events_in_total", sink="Live") == 0
    assert value(before, "sse_daemon_sink_lag_seconds_count", sink="Live") == 0
    assert value(before, "sse_daemon_ready") == 1
    assert value(before, "process_open_fds") > 0, "file descriptors, the first limit under systemd"

    client = await subscribe(port, "/live")
    code, _, _ = await http.post(publish_url, b'[{"sensor":"a","value":1},{"sensor":"b","value":2},{"sensor":"c","value":3}]')
    assert code == 200
    code, _, body = await http.post(publish_url, b"not json")
    assert code == 400 and json.loads(body)["reason"] == "invalid-json"
    await client.wait_for(b'"sensor":"c"')

    after = await scrape(http, admin)
    assert value(after, "sse_daemon_sink_subscribers", sink="Live") == 1
    assert value(after, "sse_daemon_sink_connections_opened_total", sink="Live") == 1
    assert value(after, "sse_daemon_sink_events_in_total", sink="Live") == 3
    assert value(after, "sse_daemon_sink_events_out_total", sink="Live") == 3, "one subscriber: one frame per event"
    assert value(after, "sse_daemon_sink_events_out_total", sink="Narrow") == 0, "no subscriber: nothing written"
    assert value(after, "sse_daemon_sink_events_in_total", sink="Narrow") == 3
    assert value(after, "sse_daemon_sink_events_out_total", sink="Logged") == 3
    assert value(after, "sse_daemon_sink_bytes_written_total", sink="Live") > 3 * len(b'data: {"event":{"sensor":"a","value":1.0}}\n\n')
    assert value(after, "sse_daemon_source_events_in_total", source="In") == 3
    assert value(after, "sse_daemon_source_events_rejected_total", source="In", reason="invalid-json") == 1
    assert value(after, "sse_daemon_route_events_total", **{"from": "Readings", "to": "Narrow"}) == 3
    assert 0 <= value(after, "sse_daemon_source_last_event_age_seconds", source="In") < 5
    # the lag histogram: observed once per event per SSE sink, from ingress to hand-off
    assert value(after, "sse_daemon_sink_lag_seconds_count", sink="Live") == 3
    assert value(after, "sse_daemon_sink_lag_seconds_count", sink="Narrow") == 3
    assert 0 <= value(after, "sse_daemon_sink_lag_seconds_sum", sink="Live") < 1
    assert value(after, "sse_daemon_sink_lag_seconds_bucket", sink="Live", le="+Inf") == 3
    for (name, labels) in after:
        assert not {"peer", "client", "id", "payload"} & {k for k, _ in labels}, f"{name} has a per-client label"

    # A subscriber that stops reading is dropped as slow (queue of 2 events).
    client.transport.pauseProducing()
    sink = service.sinks["Live"].sink
    big = "x" * 65536
    for n in range(400):  # bounded: 25 MiB at most; loopback buffers hold a few MiB
        service.bus.publish("Readings", [Event({"sensor": big, "value": float(n)}, ingress=reactor.seconds())])
        await sleep(0)
        if sink.counters["dropped_slow"]:
            break
    dropped = await scrape(http, admin)
    assert value(dropped, "sse_daemon_sink_dropped_slow_total", sink="Live") == 1
    assert value(dropped, "sse_daemon_sink_subscribers", sink="Live") == 0
    client.transport.resumeProducing()
    await wait_for(lambda: client.is_closed, what="the slow client to see the cut")
    await wait_for(lambda: sink.counters["connections_closed"] == 1, what="the sink to count the close")
    closed = await scrape(http, admin)
    assert value(closed, "sse_daemon_sink_connections_closed_total", sink="Live") == 1
    assert value(closed, "sse_daemon_sink_lag_seconds_count", sink="Live") == sink.counters["events_in"], "once per event"


@pytest_twisted.ensureDeferred
async def test_readyz_follows_an_sse_source_upstream_down_and_back(daemon) -> None:
    upstream = ScriptedServer()
    upstream.start()
    service = await daemon(f"""\
        sources:
          Up:
            type: sse
            stream: Feed
            schema: "param1 string"
            receiver.url: {upstream.url()}
            reconnect.initial.delay: 0.05
            reconnect.max.delay: 0.1
        sinks:
          Feed: {{type: log}}
        admin:
          port: 0
          ready.grace: 1
        """)
    http = Http()
    admin = service.admin.port
    ready_url = f"http://127.0.0.1:{admin}/readyz"
    try:
        await wait_for(lambda: service.sources["Up"].connected, what="the source to connect")
        code, _, body = await http.get(ready_url)
        checks = json.loads(body)["checks"]
        assert code == 200 and checks["source 'Up'"] == "ok" and set(checks.values()) == {"ok"}
        upstream.publish('{"param1": "one"}')
        upstream.publish('{"param1": "two"}')
        upstream.publish("not json")
        await wait_for(lambda: service.sources["Up"].counters["events_in"] == 2, what="two events from upstream")
        await wait_for(lambda: sum(service.sources["Up"].mapping_errors.values()) == 1, what="one unmappable message")
        up = await scrape(http, admin)
        assert value(up, "sse_daemon_source_connected", source="Up") == 1
        assert value(up, "sse_daemon_source_events_in_total", source="Up") == 2
        assert value(up, "sse_daemon_source_events_rejected_total", source="Up", reason="invalid-json") == 1
        assert value(up, "sse_daemon_source_last_event_age_seconds", source="Up") < 5
        assert value(up, "sse_daemon_source_reconnects_total", source="Up") == 0

        # Upstream down: still ready inside the grace window, then 503 naming the source.
        await upstream.stop()
        await wait_for(lambda: not service.sources["Up"].connected, what="the source to notice")
        code, _, body = await http.get(ready_url)
        assert code == 200, f"a fresh disconnect is within ready.grace: {body!r}"
        down_at = reactor.seconds()
        async def not_ready() -> bool:
            return (await http.get(ready_url))[0] == 503
        await wait_for_async(not_ready, what="/readyz to turn 503")
        assert reactor.seconds() - down_at < 3
        code, headers, body = await http.get(ready_url)
        verdict = json.loads(body)
        assert code == 503 and verdict["status"] == "not ready"
        assert verdict["not_ready"][0].startswith("source 'Up': not connected for ")
        assert "ready.grace is 1s" in verdict["not_ready"][0]
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        down = await scrape(http, admin)
        assert value(down, "sse_daemon_source_connected", source="Up") == 0
        assert value(down, "sse_daemon_ready") == 0
        code, _, _ = await http.get(f"http://127.0.0.1:{admin}/healthz")
        assert code == 200, "alive even when not ready: a restart would not bring upstream back"

        # Upstream back on the same port: the source reconnects and the daemon is ready again.
        upstream.start()
        async def ready() -> bool:
            return (await http.get(ready_url))[0] == 200
        await wait_for_async(ready, what="/readyz to turn 200 again")
        back = await scrape(http, admin)
        assert value(back, "sse_daemon_source_connected", source="Up") == 1
        assert value(back, "sse_daemon_source_reconnects_total", source="Up") >= 1
    finally:
        await upstream.stop()


async def wait_for_async(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    end = reactor.seconds() + timeout
    while not await predicate():
        if reactor.seconds() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_health_status_page_and_live_view(daemon) -> None:
    service = await daemon(TRAFFIC)
    http = Http()
    base = f"http://127.0.0.1:{service.admin.port}"

    code, _, body = await http.get(base + "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, headers, body = await http.get(base + "/")
    assert code == 200 and b'<script src="status.js">' in body
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    policy = headers.getRawHeaders(b"content-security-policy")[0]
    assert b"default-src 'self'" in policy
    assert b"frame-ancestors 'none'" in policy, "no other site may frame the page (default-src does not cover it)"
    code, headers, body = await http.get(base + "/status.js")
    assert code == 200 and b"new EventSource(" in body
    code, headers, body = await http.request("HEAD", base + "/")
    assert code == 200 and body == b"" and int(headers.getRawHeaders(b"content-length")[0]) > 1000
    assert headers.getRawHeaders(b"server") == [b"sse-daemon"], "neither the daemon's version nor Twisted's"
    code, _, body = await http.get(base + "/nothing-here")
    assert code == 404 and "paths" not in json.loads(body)  # the admin's paths name every stream: not listed

    viewer = await subscribe(service.admin.port, "/events/Readings")
    await http.post(f"http://127.0.0.1:{service.port_of('In')}/publish", b'{"sensor":"s1","value":7}')
    await viewer.wait_for(b'data: {"event":{"sensor":"s1","value":7.0}}\n\n')

    code, _, body = await http.get(base + "/status.json")
    status = json.loads(body)
    assert code == 200
    assert status["ready"] == {"ready": True, "not_ready": [], "checks": status["ready"]["checks"]}
    assert [s["name"] for s in status["streams"]] == ["Readings", "Narrow"]
    readings = status["streams"][0]
    assert readings["sources"] == ["In"] and readings["sinks"] == ["Live", "Logged"] and readings["routes_out"] == ["Narrow"]
    live = next(s for s in status["sinks"] if s["name"] == "Live")
    assert live["events_in"] == 1 and live["path"] == "/live" and live["lag"]["count"] == 1
    source = status["sources"][0]
    assert source["name"] == "In" and source["events_in"] == 1 and source["has_events"]
    assert source["url"] == f"http://127.0.0.1:{service.port_of('In')}/publish", "port 0 shown as the port it got"
    assert status["admin"]["live"][0] == {"stream": "Readings", "path": "/events/Readings", "subscribers": 1}
    assert all(listener["bound"] for listener in status["listeners"])
    await viewer.close()


def test_admin_section_is_checked_like_the_rest() -> None:
    def load(text: str, name: str = "a.yaml") -> RawConfig:
        return load_yaml(text, name)

    base = "sinks:\n  S: {type: sse-server, schema: 'a string', server.port: 8020}\n"
    config = validate(load(base + "admin: {port: 9100}\n"))
    assert config.admin is not None and (config.admin.host, config.admin.port) == ("127.0.0.1", 9100)
    assert config.admin.options.ready_grace == 10.0
    assert "admin: on 127.0.0.1:9100 (ready.grace 10s)" in config.summary()
    assert validate(load(base)).admin is None and "admin: off" in validate(load(base)).summary()

    with pytest.raises(ConfigError) as caught:
        validate(load(base + "admin:\n  port: abc\n  ready.grace: -1\n  prot: 3\n"))
    text = str(caught.value)
    assert "a.yaml:4: admin: option 'port': expected an integer, found 'abc'" in text
    assert "a.yaml:5: admin: option 'ready.grace': expected a number of at least 0, found -1" in text
    assert "a.yaml:6: admin: option 'prot': unknown option 'prot'; did you mean 'port'?" in text

    with pytest.raises(ConfigError) as caught:
        validate(load(base + "admin: {port: 8020}\n"))
    assert "a.yaml:3: admin: option 'port': port 8020 is already used by sink 'S'" in str(caught.value)

    with pytest.raises(ConfigError) as caught:
        validate(load(base + "admin: {host: '::1'}\n"))
    assert "a.yaml:3: admin: option 'port': 'port' is required" in str(caught.value)

    raw = load(base + "admin: {port: 9100}\n")
    raw.extend(load("admin: {port: 9101}\n", "b.yaml"))
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    assert "b.yaml:1: admin: 'admin' is already configured at a.yaml:3" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_every_daemon_has_its_own_registry(daemon) -> None:
    first = await daemon(TRAFFIC)
    second = await daemon(TRAFFIC.replace("Live:", "Other:"))
    http = Http()
    one, two = await scrape(http, first.admin.port), await scrape(http, second.admin.port)
    assert value(one, "sse_daemon_sink_events_in_total", sink="Live") == 0
    assert value(two, "sse_daemon_sink_events_in_total", sink="Live") is None
    assert value(two, "sse_daemon_sink_events_in_total", sink="Other") == 0
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("sse_daemon") for name in global_names)


@pytest_twisted.ensureDeferred
async def test_no_admin_listener_unless_configured(daemon) -> None:
    service = await daemon(TRAFFIC.split("admin:")[0])
    assert service.admin is None
    assert [listener.port for listener in service.listeners.values()] == [0]


@pytest_twisted.ensureDeferred
async def test_readyz_says_not_ready_once_shutdown_begins(daemon) -> None:
    """A load balancer must stop sending new clients to a daemon that is draining."""
    service = await daemon(TRAFFIC)
    assert service.admin.readiness(service.clock.seconds())["ready"]
    service.stopping.begin()
    readiness = service.admin.readiness(service.clock.seconds())
    assert not readiness["ready"] and readiness["not_ready"][0] == "the daemon is shutting down"
