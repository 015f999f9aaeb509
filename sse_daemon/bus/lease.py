"""A lease in Redis: run a service on one instance at a time (groundwork for one reader per upstream).

With a shared bus every instance would run every SSE source and publish each
upstream event once per instance. A lease fixes that: an instance runs the
service only while it holds ``key`` (``SET NX PX``), renews it once a third of
``ttl`` has passed (compare-and-``PEXPIRE``, so only the holder renews), stops the
service when it could not renew for 60 % of ``ttl`` (before another instance can
take the key), and deletes the key on a clean stop so another takes over at
its next attempt instead of after ``ttl``. ``on_acquire`` gets the value of
``cursor_key`` (the last upstream id a holder saved) before the service starts.
The daemon holds the :class:`LeasedService` (an :class:`ILeasedService`) in place of
the source; the source itself, with its figures, is its ``inner``.

:func:`leased_source` puts an SSE source under a lease on a shared bus: its
view of the bus (a :class:`~sse_daemon.bus.cursor.CursorBus`) saves the upstream id of what Redis acknowledged as the cursor, and when a
publish fails (Redis away) it stops reading and starts again from the cursor
once it holds the lease again, so an upstream event is either in Redis or
read again (at least once: a holder that dies between the publish and the
cursor write has the next holder read that event again).
"""

from __future__ import annotations

import uuid
from typing import Callable, Protocol

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, implementer

from sse_daemon.bus.cursor import CursorBus
from sse_daemon.bus.interfaces import IBus, ISharedBus

#: renew only our own lease: 1 when renewed, 0 when the key is gone or someone else's
RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
#: release only our own lease
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
#: stop when the last renewal is older than this share of ttl: before the key can expire elsewhere
#: (checked every tenth of ttl, each check's command bounded by a tenth: stopped by 0.8 ttl at worst)
SAFETY = 0.6
#: renew when the last renewal is older than this share of ttl
RENEW_AFTER = 1 / 3
#: how often, as a share of ttl, a holder checks and the others try to take the lease
TICK = 0.1


def must_stop(now: float, renewed_at: float, ttl: float) -> bool:
    """Whether a holder that could not renew must stop now (pure)."""
    return now - renewed_at >= ttl * SAFETY


class ILeasedService(IService):
    """A service run on one instance at a time: what the daemon holds in place of the service it runs."""

    inner = Attribute("The service run while this instance holds the lease (an SSE source).")
    holding = Attribute("Whether this instance holds the lease now.")
    standby = Attribute("Another instance runs ``inner`` now (or may): for readiness, this one is not down.")


@implementer(ILeasedService)
class LeasedService(Service):
    """Runs ``inner`` only while this instance holds the lease ``key`` on ``bus`` (a shared bus)."""

    log = Logger()

    def __init__(self, bus: ISharedBus, key: str, ttl: float, inner: IService, clock: IReactorTime,
                 cursor_key: str | None = None, on_acquire: Callable[[str | None], None] | None = None) -> None:
        self.bus = bus
        self.key = key
        self.ttl = ttl
        self.inner = inner
        self.clock = clock
        self.cursor_key = cursor_key
        self.on_acquire = on_acquire
        self.token = uuid.uuid4().hex
        self.holding = False
        #: read by the admin's readiness: a source another instance runs is not "down"
        self.standby = False
        self.renewed_at = 0.0
        self.acquired = 0  # times this instance took the lease
        self.released = False  # whether the last stop gave the key back (else it expires after ttl)
        self._ticker: LoopingCall | None = None
        self._stopping: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self.standby = True
        self._ticker = LoopingCall(lambda: Deferred.fromCoroutine(self._tick()))
        self._ticker.clock = self.clock
        self._ticker.start(self.ttl * TICK, now=True).addErrback(
            lambda f: self.log.failure("the lease {key} stopped renewing", f, key=self.key))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if not self.holding:
            return
        # Both at once, before the first await: the source halts its reading synchronously, and the
        # release goes out while the bus (stopped after us) still has its connection.
        stopping = Deferred.fromCoroutine(self._lose("stopping"))
        release = self.bus.command("EVAL", RELEASE, "1", self.key, self.token)
        await stopping
        try:
            self.released = int(await release) == 1
        except Exception as e:  # it expires after ttl anyway
            self.log.warn("could not release the lease {key}: {reason}", key=self.key, reason=str(e))

    def _command(self, *args: str) -> Deferred:
        return self.bus.command(*args).addTimeout(self.ttl * TICK, self.clock)

    async def _tick(self) -> None:
        now = self.clock.seconds()
        if self.holding and must_stop(now, self.renewed_at, self.ttl):
            await self._lose(f"could not renew for {now - self.renewed_at:.1f}s")
            return
        if self.holding and now - self.renewed_at < self.ttl * RENEW_AFTER:
            return
        try:
            if self.holding:
                renewed = await self._command("EVAL", RENEW, "1", self.key, self.token, str(int(self.ttl * 1000)))
                if int(renewed) == 1:
                    self.renewed_at = self.clock.seconds()
                else:
                    await self._lose("another instance holds it")
            elif (await self._command("SET", self.key, self.token, "NX", "PX", str(int(self.ttl * 1000))) == "OK"
                  or int(await self._command("EVAL", RENEW, "1", self.key, self.token, str(int(self.ttl * 1000)))) == 1):
                # (still ours after a restart of the service: see restart)
                self.renewed_at = self.clock.seconds()
                cursor = await self._command("GET", self.cursor_key) if self.cursor_key else None
                await self._acquire(cursor)
        except Exception as e:
            self.log.debug("lease {key}: {reason}", key=self.key, reason=str(e) or type(e).__name__)

    async def _acquire(self, cursor: str | None) -> None:
        if self._stopping is not None:  # a restart: the service must be fully stopped before it starts again
            await self._stopping
        if not self.running:
            return
        self.holding = True
        self.standby = False
        self.acquired += 1
        self.log.info("took the lease {key}; starting {service} (cursor {cursor!r})", key=self.key,
                      service=self.inner.name, cursor=cursor)
        if self.on_acquire is not None:
            self.on_acquire(cursor)
        self.inner.startService()

    def restart(self, why: str) -> None:
        """Stop the service now, keeping the key: the next renewal period starts it again (from the cursor)."""
        if self.holding:
            Deferred.fromCoroutine(self._lose(why)).addErrback(
                lambda f: self.log.failure("stopping {service} failed", f, service=self.inner.name))

    async def _lose(self, why: str) -> None:
        self.holding = False
        self.standby = True
        self.log.info("gave up the lease {key} ({why}); stopping {service}", key=self.key, why=why, service=self.inner.name)
        if self.inner.running:
            self._stopping = maybeDeferred(self.inner.stopService)
            try:
                await self._stopping
            finally:
                self._stopping = None


class ResumableSource(Protocol):
    """What :func:`leased_source` runs: a service (an IService) that can start again from an upstream id."""

    @property
    def name(self) -> str | None: ...  # a Service's name (Twisted's may be None)

    def resume_after(self, last_event_id: str | None) -> None: ...


def leased_source(make_source: Callable[[IBus], ResumableSource], bus: IBus, redis: ISharedBus, name: str,
                  ttl: float, clock: IReactorTime) -> LeasedService:
    """An SSE source that one instance at a time runs, resuming from the cursor: ``make_source`` builds
    it on ``bus`` (the source's view of the bus) wrapped in a :class:`CursorBus` that saves the cursor."""
    key = f"{redis.prefix}source:{name}:lease"
    cursor_key = f"{redis.prefix}source:{name}:cursor"
    lease: LeasedService | None = None

    def restart(why: str) -> None:
        if lease is not None:
            lease.restart(why)

    cursor = CursorBus(bus, redis, cursor_key, restart)
    source = make_source(cursor)
    lease = LeasedService(redis, key, ttl, source, clock, cursor_key,  # type: ignore[arg-type]  # an IService too
                          lambda saved: source.resume_after(saved or cursor.acknowledged))
    lease.setName(source.name or f"source:{name}")
    return lease
