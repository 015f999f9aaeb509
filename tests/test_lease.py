"""The Redis lease: one instance runs the service; another takes over when it stops or vanishes."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from twisted.application.service import Service
from twisted.internet import reactor

from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.bus.lease import LeasedService, must_stop
from sse_daemon.bus.redis import RedisBus

from .conftest import deadline, wait_for
from .redis_server import redis_server  # noqa: F401  (the fixture)


@pytest.mark.reactor_free
def test_a_holder_stops_before_its_lease_can_expire_elsewhere() -> None:
    assert not must_stop(now=105.9, renewed_at=100.0, ttl=10.0)
    assert must_stop(now=106.0, renewed_at=100.0, ttl=10.0)


class Recorder(Service):
    def __init__(self, name: str) -> None:
        self.setName(name)
        self.starts = 0

    def startService(self) -> None:
        super().startService()
        self.starts += 1


async def started_bus(url: str) -> RedisBus:
    config = validate(load_yaml(f"""\
sinks:
  Out: {{type: log, schema: "n int"}}
bus: {{type: redis, url: "{url}", reconnect.max.delay: 0.3}}
"""))
    bus = RedisBus(config.bus, reactor)
    bus.startService()
    await wait_for(lambda: bus.state == "up", what="the bus up")
    return bus


@pytest_twisted.ensureDeferred
async def test_one_holder_at_a_time_and_a_bounded_take_over(redis_server) -> None:
    key, cursor_key = f"lease-{uuid.uuid4().hex[:6]}", "cursor"
    buses = [await started_bus(redis_server.url) for _ in range(2)]
    inner = [Recorder("a"), Recorder("b")]
    cursors: list = []
    leases = [LeasedService(bus, key, 0.6, service, reactor, cursor_key, cursors.append) for bus, service in zip(buses, inner)]
    try:
        await deadline(buses[0].command("SET", cursor_key, "up-41"))
        leases[0].startService()
        await wait_for(lambda: leases[0].holding, what="a to take the lease")
        leases[1].startService()
        # several renewal periods: a keeps it, b never runs
        end = reactor.seconds() + 1.0
        await wait_for(lambda: reactor.seconds() > end, what="a second of renewals")
        assert (leases[0].holding, leases[1].holding, inner[1].starts) == (True, False, 0)
        # a clean stop releases the key: b takes over at its next try (every tenth of the ttl)
        stopped_at = reactor.seconds()
        await deadline(leases[0].stopService())
        assert not inner[0].running
        await wait_for(lambda: leases[1].holding, timeout=2, what="b to take over")
        assert reactor.seconds() - stopped_at < 0.3
        assert leases[0].released
        assert inner[1].running and cursors == ["up-41", "up-41"]
        # b vanishes without releasing (its renewals stop): a takes over once the ttl has run out
        leases[1]._ticker.stop()
        leases[0].startService()
        vanished_at = reactor.seconds()
        await wait_for(lambda: leases[0].holding, timeout=3, what="a to take over after the ttl")
        assert reactor.seconds() - vanished_at >= 0.4
    finally:
        for lease in leases:
            if lease.running:
                await deadline(lease.stopService())
        for bus in buses:
            await deadline(bus.stopService())


@pytest_twisted.ensureDeferred
async def test_a_holder_that_cannot_reach_redis_stops_within_the_ttl(redis_server) -> None:
    bus = await started_bus(redis_server.url)
    inner = Recorder("a")
    lease = LeasedService(bus, "lease-x", 0.6, inner, reactor)
    try:
        lease.startService()
        await wait_for(lambda: lease.holding, what="the lease")
        redis_server.stop()
        lost_at = reactor.seconds()
        await wait_for(lambda: not inner.running, timeout=3, what="the service to stop")
        assert reactor.seconds() - lost_at < 0.6, "stopped before the key could expire for another instance"
    finally:
        await deadline(lease.stopService())
        await deadline(bus.stopService())
