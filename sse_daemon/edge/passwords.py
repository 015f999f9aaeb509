"""Password checks off the reactor (``auth.type: basic``), answered in the same time whoever asks.

bcrypt and Argon2 cost 0.1-0.3 s of CPU per check, by design; on the reactor,
four clients sending wrong passwords froze every stream of the daemon. Here:

- ``PasswordPool`` (one per process, a service of the daemon, started and
  stopped with it): ``THREADS`` threads and at most ``capacity`` checks waiting
  or running; one more is refused at once (503 with ``Retry-After``) instead of
  queueing without bound. bcrypt and argon2-cffi release the GIL while they
  hash, so the reactor keeps serving meanwhile.
- ``PasswordGate`` (one per connector with ``auth.type: basic``): times one hash
  of each kind in the users file when it is built (a kind the process timed
  before, for another connector or before a reload, is not timed again: that
  took the pool's one thread for about a second and held every connector's
  checks meanwhile), runs each check on the pool,
  holds every answer until the most expensive kind would have been done
  (``auth.Padding``, on the reactor's clock: no thread sleeps), limits failed
  checks per client address (``auth.failures.per.minute``), and lets identical
  checks in flight share one hash (an EventSource reconnecting in several tabs).

The decisions are pure (``auth.BasicAuth``, ``auth.Padding``,
``limits.FailureLimit``); this module is the Twisted glue.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sse_daemon.edge.auth import Allowed, BasicAuth, Denied, Padding, PasswordCheck, hash_kind, verify_password
from sse_daemon.policy.limits import FailureLimit

__all__ = ["THREADS", "QUEUE_PER_THREAD", "PasswordPool", "PasswordGate", "PoolFull", "PoolStopped"]

#: Threads that hash passwords: half the cores, 1 to 4. The reactor and the kernel's network
#: work keep the other half; more threads would not check more passwords a second anyway.
THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
#: Checks waiting or running per thread; one more is refused at once. At bcrypt's 0.25 s this
#: bounds a client's wait for a first check at about 2 s.
QUEUE_PER_THREAD = 8
#: Verifications timed per hash kind at load; the fastest counts (the others met a busy machine).
CALIBRATION_RUNS = 3
#: Seconds of padding below which no timer is set (well under the noise of any network)
MIN_PADDING = 0.001
#: A password no users file holds: what the timed verifications are run with.
CALIBRATION_PASSWORD = "\0sse-daemon calibration\0"

log = Logger()


class PoolFull(Exception):
    """``capacity`` checks are already waiting or running."""


class PoolStopped(Exception):
    """The daemon is stopping: the check was not run."""


def timed(timer: Callable[[], float], hashed: str, password: str, gone: Callable[[], bool]) -> tuple[bool, float] | None:
    """In a pool thread: verify, and say how long it took (None: the client left, nothing was hashed)."""
    if gone():
        return None
    started = timer()
    ok = verify_password(hashed, password)
    return ok, timer() - started


def calibrate(timer: Callable[[], float], examples: dict[str, str], runs: int = CALIBRATION_RUNS) -> dict[str, float]:
    """In a pool thread: seconds one verification of each kind takes (the fastest of ``runs``)."""
    costs = {}
    for kind, hashed in examples.items():
        times = []
        for _ in range(runs):
            started = timer()
            verify_password(hashed, CALIBRATION_PASSWORD)
            times.append(timer() - started)
        costs[kind] = min(times)
    return costs


class PasswordPool(Service):
    """The process's threads for bcrypt and Argon2, with a bound on the checks waiting for them."""

    name = "password-checks"

    def __init__(self, reactor: Any, threads: int = THREADS, capacity: int = 0, timer: Callable[[], float] = time.perf_counter) -> None:
        self.reactor = reactor
        self.threads = threads
        self.capacity = capacity or threads * QUEUE_PER_THREAD
        self.timer = timer
        self.pending = 0  # checks waiting or running
        #: seconds one verification of each hash kind took when a gate first timed it in this process
        self.timings: dict[str, float] = {}
        self.counters: Counter[str] = Counter()  # "checks", "refused_full"
        # Work handed in before start waits for it (a gate times its hashes as it is built).
        self._threads = ThreadPool(0, threads, "sse-daemon password checks")
        self._open = True  # read by pool threads: False skips what is still queued
        self._waiting: set[Deferred] = set()

    def startService(self) -> None:
        super().startService()
        self._threads.start()

    def stopService(self) -> None:
        """Answer what waits (PoolStopped: a 503), skip what is queued, then join the threads.
        The join waits for hashes already running: at most one per thread (a quarter second)."""
        super().stopService()
        self._open = False
        for waiting in list(self._waiting):
            self._waiting.discard(waiting)
            waiting.errback(PoolStopped())
        self._threads.stop()

    def run(self, work: Callable[..., Any], *args: Any, bounded: bool = True) -> Deferred:
        """``work(*args)`` in a pool thread. Fails at once with PoolFull when ``capacity`` checks
        are pending (``bounded``; a gate's timing at load is not), with PoolStopped once stopped."""
        if not self._open:
            return fail(PoolStopped())
        if bounded and self.pending >= self.capacity:
            self.counters["refused_full"] += 1
            return fail(PoolFull())
        self.pending += 1
        self.counters["checks"] += 1
        waiting: Deferred[Any] = Deferred()
        self._waiting.add(waiting)
        deferToThreadPool(self.reactor, self._threads, self._run_open, work, args).addBoth(self._done, waiting)
        return waiting

    def _run_open(self, work: Callable[..., Any], args: tuple) -> Any:
        if not self._open:  # stopped while this waited
            raise PoolStopped()
        return work(*args)

    def _done(self, result: Any, waiting: Deferred) -> None:
        self.pending -= 1
        if waiting in self._waiting:  # not already answered by stopService
            self._waiting.discard(waiting)
            _fan_out(result, [waiting])


class PasswordGate:
    """The password checks of one connector: timed, padded, limited per address, run on the pool."""

    def __init__(self, auth: BasicAuth, pool: PasswordPool, clock: IReactorTime, failures_per_minute: float) -> None:
        self.auth = auth
        self.pool = pool
        self.clock = clock
        self.failures = FailureLimit(failures_per_minute, clock.seconds)
        self.padding: Padding | None = None
        self._calibrated: list[Deferred] = []  # checks waiting for the timing at load
        self._inflight: dict[bytes, list[Deferred]] = {}  # key -> the other checks sharing its hash
        examples = auth.kinds()
        known = {kind: pool.timings[kind] for kind in examples if kind in pool.timings}
        unknown = {kind: hashed for kind, hashed in examples.items() if kind not in known}
        if unknown:
            pool.run(calibrate, pool.timer, unknown, bounded=False).addCallbacks(self._timed, self._not_timed, (examples, known))
        else:
            self.padding = Padding(known, examples)

    def _timed(self, costs: dict[str, float], examples: dict[str, str], known: dict[str, float]) -> None:
        self.pool.timings.update(costs)
        self.padding = Padding({**known, **costs}, examples)
        log.info("password hashes timed: {costs}; every password check is answered no sooner than the slowest",
                 costs=", ".join(f"{kind} {cost * 1000:.0f} ms" for kind, cost in costs.items()))
        waiting, self._calibrated = self._calibrated, []
        _fan_out(self.padding, waiting)

    def _not_timed(self, failure: Failure) -> None:
        if not failure.check(PoolStopped):
            log.failure("timing the password hashes failed; password checks will answer 500", failure)
        waiting, self._calibrated = self._calibrated, []
        _fan_out(failure, waiting)

    def _padding(self) -> Deferred:
        if self.padding is not None:
            return succeed(self.padding)
        d: Deferred[Padding] = Deferred()
        self._calibrated.append(d)
        return d

    def decide(self, check: PasswordCheck, host: str, gone: Callable[[], bool]) -> Deferred:
        """The answer to ``check`` from ``host``: Allowed, Denied, or None when ``gone()`` (the
        client left) before its turn came and nothing was hashed. Fails with PoolStopped when
        the daemon stops meanwhile. A check counts against ``host``'s ``failures`` while it runs and
        stays counted if denied; the guard checks them first (it refuses an address past them before
        anything else is looked at), so an address's guesses in flight at once are limited too."""
        sharing = self._inflight.get(check.key)
        if sharing is not None:  # the same credential is being hashed: wait for that answer
            d: Deferred[Any] = Deferred()
            sharing.append(d)
            return d
        self._inflight[check.key] = sharing = []
        d = Deferred.fromCoroutine(self._decide(check, host, lambda: gone() and not sharing))
        return d.addBoth(self._share, check, host)

    def _share(self, result: Any, check: PasswordCheck, host: str) -> Any:
        others = self._inflight.pop(check.key, [])
        if result is None and others:  # the first asker left just as others came: hash for them
            self.decide(check, host, lambda: False).addBoth(_fan_out, others)
        else:
            _fan_out(result, others)
        return result

    async def _decide(self, check: PasswordCheck, host: str, gone: Callable[[], bool]) -> Allowed | Denied | None:
        # counted as a failure from the start, before anything is awaited: the guard lets the address's
        # next request in only while a token is left for it (limits.FailureLimit)
        reserved = self.failures.reserve(host)
        failed = False
        try:
            padding = await self._padding()
            hashed = check.hashed or padding.decoy  # an unknown user costs what the slowest kind costs
            try:
                outcome = await self.pool.run(timed, self.pool.timer, hashed, check.password, gone)
            except PoolFull:
                wait = math.ceil(self.pool.pending * padding.target / self.pool.threads)
                return Denied(503, "auth-busy", "too many password checks are waiting; retry later", max(1, wait))
            if outcome is None:  # the client left before its turn: nothing hashed, nothing to answer
                return None
            ok, elapsed = outcome
            decision = self.auth.settle(check, ok, self.clock.seconds())
            failed = isinstance(decision, Denied)
            delay = padding.delay(hash_kind(hashed), elapsed)
            if delay >= MIN_PADDING and not gone():
                await deferLater(self.clock, delay)
            return decision
        finally:
            if reserved and not failed:
                self.failures.release(host)


def _fan_out(result: Any, waiting: list[Deferred]) -> Any:
    """Fire every Deferred of ``waiting`` with ``result`` (a value or a Failure)."""
    for d in waiting:
        d.errback(result) if isinstance(result, Failure) else d.callback(result)
    return result
