"""Password checks off the reactor: cache expiry, the failure limit, timing padding and the gate, on a task.Clock.

The gate is driven with a pool stand-in that runs the work when told to, so
every step (waiting for a thread, hashing, padding on the clock) is explicit.
The real thread pool is checked at the end, and over sockets in test_auth_hostile.py.
"""

from __future__ import annotations

import threading

import bcrypt
import pytest
import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from sse_daemon.edge.auth import Allowed, BasicAuth, Credentials, Denied, Padding, PasswordCheck, VerifiedCache, hash_kind
from sse_daemon.policy.limits import FailureLimit
from sse_daemon.edge.passwords import PasswordGate, PasswordPool, PoolFull, PoolStopped

from .conftest import deadline

FAST_BCRYPT = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
FAST_ARGON = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("right")
BCRYPT_KIND = "$2b$04$"
ARGON_KIND = hash_kind(FAST_ARGON)


@pytest.mark.reactor_free
def test_hash_kinds_name_algorithm_and_cost_only() -> None:
    assert hash_kind(FAST_BCRYPT) == BCRYPT_KIND
    assert ARGON_KIND == "$argon2id$v=19$m=1024,t=1,p=1$"
    assert hash_kind(bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=5)).decode()) == "$2b$05$"


@pytest.mark.reactor_free
def test_verified_credentials_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = VerifiedCache(ttl=300, size=3)
    cache.add(b"a", clock.seconds())
    clock.advance(299.9)
    assert cache.hit(b"a", clock.seconds())
    clock.advance(0.1)
    assert not cache.hit(b"a", clock.seconds()), "gone at the ttl: the next connect is hashed again"
    assert len(cache) == 0, "an expired entry is forgotten, not kept"
    for key in (b"1", b"2", b"3", b"4"):
        cache.add(key, clock.seconds())
    assert not cache.hit(b"1", clock.seconds()) and cache.hit(b"4", clock.seconds()), "the oldest goes first past size"
    clock.advance(1000)
    cache.add(b"5", clock.seconds())
    assert len(cache) == 1, "adding sweeps expired entries"
    off = VerifiedCache(ttl=0)
    off.add(b"a", 0)
    assert not off.hit(b"a", 0), "ttl 0 remembers nothing"


@pytest.mark.reactor_free
def test_basic_auth_caches_for_its_ttl_under_an_hmac() -> None:
    clock = Clock()
    auth = BasicAuth({"alice": FAST_BCRYPT}, "r", cache_ttl=60)
    check = auth.check(Credentials(basic=("alice", "right")), clock.seconds())
    assert isinstance(check, PasswordCheck) and b"right" not in check.key
    assert auth.settle(check, True, clock.seconds()) == Allowed("alice")
    clock.advance(59)
    assert auth.check(Credentials(basic=("alice", "right")), clock.seconds()) == Allowed("alice")
    assert isinstance(auth.check(Credentials(basic=("alice", "wrong")), clock.seconds()), PasswordCheck)
    clock.advance(1)
    assert isinstance(auth.check(Credentials(basic=("alice", "right")), clock.seconds()), PasswordCheck), "expired"
    unknown = auth.check(Credentials(basic=("mallory", "right")), clock.seconds())
    assert unknown.hashed is None and auth.settle(unknown, True, 0).reason == "bad-credentials", "an unknown user never gets in"


@pytest.mark.reactor_free
def test_failure_limit_per_address_on_a_clock() -> None:
    clock = Clock()
    limit = FailureLimit(per_minute=6, now=clock.seconds)
    for _ in range(6):
        assert limit.check("a") is None
        limit.reserve("a")
    refusal = limit.check("a")
    assert (refusal.reason, refusal.retry_after) == ("auth-failures", 10), "one failure back every 10 s"
    assert limit.check("b") is None, "another address has its own budget"
    clock.advance(9.9)
    assert limit.check("a").retry_after == 1
    clock.advance(0.1)
    assert limit.check("a") is None
    assert limit.check("a") is None, "checking takes nothing"
    off = FailureLimit(0, clock.seconds)
    for _ in range(100):
        off.reserve("a")
    assert off.check("a") is None, "0 is no limit"


@pytest.mark.reactor_free
def test_padding_makes_every_kind_take_the_slowest_kinds_time() -> None:
    padding = Padding({"$2b$12$": 0.24, "$argon2id$...$": 0.12}, {"$2b$12$": "bcrypt-hash", "$argon2id$...$": "argon-hash"})
    assert (padding.slowest, padding.target, padding.decoy) == ("$2b$12$", 0.24, "bcrypt-hash")
    assert padding.delay("$2b$12$", 0.24) == 0, "the slowest kind waits for nothing"
    assert padding.delay("$argon2id$...$", 0.12) == pytest.approx(0.12), "a cheap hash is held to the slowest's cost"
    assert padding.delay("$argon2id$...$", 0.0123) == pytest.approx(0.24 - 0.0123), "its own jitter is not scaled up"
    assert padding.delay("$2b$12$", 0.001) == pytest.approx(0.239), "never answered sooner than the slowest kind costs"
    for _ in range(30):  # the machine gets twice as slow: checks of the slowest kind say so
        padding.delay("$2b$12$", 0.48)
    assert padding.load == pytest.approx(2.0, rel=0.01)
    assert padding.delay("$argon2id$...$", 0.24) == pytest.approx(0.24, rel=0.02), "held as long as the slow kind takes now"
    for _ in range(30):
        padding.delay("$2b$12$", 0.2)
    assert padding.load == pytest.approx(1.0, rel=0.01), "and back, never below the time at load"


class ManualPool:
    """A stand-in for PasswordPool: work runs when the test says, with a chosen elapsed time."""

    threads = 1
    capacity = 2

    def __init__(self) -> None:
        self.pending = 0
        self.queue: list[tuple[Deferred, tuple]] = []
        self.hashed: list[str] = []
        self.timings: dict[str, float] = {}

    @staticmethod
    def timer() -> float:
        return 0.0

    def run(self, work, *args, bounded: bool = True) -> Deferred:
        if bounded and self.pending >= self.capacity:
            return fail(PoolFull())
        self.pending += 1
        d = Deferred()
        self.queue.append((d, (work, args)))
        return d

    def step(self, elapsed: float, verified: bool | None = None) -> None:
        """Run the oldest piece of work; a password check is made to take ``elapsed`` seconds."""
        d, (work, args) = self.queue.pop(0)
        self.pending -= 1
        if work.__name__ == "calibrate":
            d.callback({kind: (0.2 if kind.startswith("$2") else 0.05) for kind in args[1]})
            return
        _, hashed, password, gone = args
        if gone():
            d.callback(None)
            return
        self.hashed.append(hashed)
        d.callback((password == "right" if verified is None else verified, elapsed))


def gate(clock: Clock, pool: ManualPool, per_minute: float = 0) -> PasswordGate:
    g = PasswordGate(BasicAuth({"alice": FAST_BCRYPT, "bob": FAST_ARGON}, "r"), pool, clock, per_minute)
    pool.step(0)  # the timing at load: bcrypt 0.2 s, argon2 0.05 s
    return g


def results(d: Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


@pytest.mark.reactor_free
def test_gate_pads_on_the_clock_and_unknown_users_cost_the_slowest_kind() -> None:
    clock, pool = Clock(), ManualPool()
    g = gate(clock, pool)
    assert g.padding.target == 0.2
    bob = results(g.decide(g.auth.check(Credentials(basic=("bob", "wrong")), 0), "h", lambda: False))
    pool.step(0.05)
    assert bob == [] and clock.getDelayedCalls()[0].getTime() == pytest.approx(0.15), "held until the bcrypt user's cost"
    clock.advance(0.16)
    assert bob == [Denied(401, "bad-credentials", "wrong user name or password")]
    nobody = results(g.decide(g.auth.check(Credentials(basic=("mallory", "x")), 0), "h", lambda: False))
    pool.step(0.2)
    assert pool.hashed[-1] == FAST_BCRYPT, "an unknown user is checked against a hash of the slowest kind"
    assert nobody[0].reason == "bad-credentials" and not clock.getDelayedCalls(), "already as slow as the slowest: no padding"


@pytest.mark.reactor_free
def test_gate_shares_one_hash_and_skips_clients_that_left() -> None:
    clock, pool = Clock(), ManualPool()
    g = gate(clock, pool)
    check = g.auth.check(Credentials(basic=("alice", "right")), 0)
    first, second = results(g.decide(check, "h", lambda: False)), results(g.decide(check, "h", lambda: False))
    assert len(pool.queue) == 1, "the same credential in flight is hashed once"
    pool.step(0.2)
    assert first == second == [Allowed("alice")]
    assert g.auth.check(Credentials(basic=("alice", "right")), 0) == Allowed("alice"), "and remembered"
    left = results(g.decide(g.auth.check(Credentials(basic=("bob", "x")), 0), "h", lambda: True))
    pool.step(0.05)
    assert left == [None] and pool.hashed[-1] == FAST_BCRYPT, "a client that left costs no hash and no answer"
    assert not clock.getDelayedCalls()


@pytest.mark.reactor_free
def test_gate_refuses_a_full_pool_at_once_and_counts_failures_per_address() -> None:
    clock, pool = Clock(), ManualPool()
    g = gate(clock, pool, per_minute=2)
    waiting = [results(g.decide(g.auth.check(Credentials(basic=("bob", f"w{n}")), 0), host, lambda: False))
               for n, host in enumerate(("h", "h", "g"))]
    busy = waiting[2][0]
    assert (busy.status, busy.reason, busy.retry_after) == (503, "auth-busy", 1), "refused at once, not queued"
    assert g.failures.check("g") is None, "a refusal for a full pool is no failure"
    for _ in range(2):
        pool.step(0.05)
    clock.advance(1)
    assert [w[0].reason for w in waiting[:2]] == ["bad-credentials"] * 2
    limited = g.failures.check("h")
    assert (limited.reason, limited.retry_after) == ("auth-failures", 29), "the guard refuses this address next (429)"
    assert g.failures.check("other") is None
    right = results(g.decide(g.auth.check(Credentials(basic=("alice", "right")), 0), "other", lambda: False))
    pool.step(0.2)
    assert right == [Allowed("alice")] and g.failures.check("other") is None, "a success costs nothing"


@pytest.mark.reactor_free
def test_guesses_in_flight_at_once_count_against_the_address() -> None:
    """Seen: a failure was counted only once its hash was done, so an address sending its guesses at once had
    every one hashed (a pool's worth, every few seconds, for auth.failures.per.minute: 2)."""
    clock, pool = Clock(), ManualPool()
    pool.capacity = 10
    g = gate(clock, pool, per_minute=2)
    asked = []
    for n in range(5):  # as the guard does: the address's failures first, then the check
        if g.failures.check("h") is None:
            asked.append(results(g.decide(g.auth.check(Credentials(basic=("bob", f"w{n}")), 0), "h", lambda: False)))
    assert len(asked) == len(pool.queue) == 2, "the third guess in flight is refused before any is hashed"
    for _ in range(2):
        pool.step(0.05)
    clock.advance(1)
    assert [a[0].reason for a in asked] == ["bad-credentials"] * 2 and g.failures.check("h").reason == "auth-failures"
    clock.advance(30)  # one failure back
    right = results(g.decide(g.auth.check(Credentials(basic=("alice", "right")), 0), "h", lambda: False))
    assert g.failures.check("h") is not None, "a check in flight holds the address's last token"
    pool.step(0.2)
    assert right == [Allowed("alice")] and g.failures.check("h") is None, "and a success gives it back"
    left = results(g.decide(g.auth.check(Credentials(basic=("bob", "x")), 0), "h", lambda: True))
    pool.step(0.05)
    assert left == [None] and g.failures.check("h") is None, "as does a check not run because its client left"


@pytest_twisted.ensureDeferred
async def test_the_pool_refuses_past_capacity_and_answers_waiters_on_stop() -> None:
    pool = PasswordPool(reactor, threads=1, capacity=2)
    pool.startService()
    release = threading.Event()
    try:
        first = pool.run(release.wait, 10)
        second = pool.run(lambda: "second")
        full = pool.run(lambda: "third")
        assert results(full)[0].check(PoolFull), "refused at once"
        release.set()
        assert await deadline(first) is True and await deadline(second) == "second"
        assert pool.pending == 0 and pool.counters == {"checks": 2, "refused_full": 1}
        release.clear()
        busy = pool.run(release.wait, 10)
        queued = pool.run(pytest.fail, "ran after stop")
        threading.Timer(0.05, release.set).start()  # the running one ends soon; stop joins it
    finally:
        pool.stopService()
    assert results(busy)[0].check(PoolStopped) and results(queued)[0].check(PoolStopped), "waiters are answered at once"
    assert results(pool.run(lambda: None))[0].check(PoolStopped)


@pytest.mark.reactor_free
def test_a_kind_the_process_timed_is_not_timed_again() -> None:
    """A reload's fresh users file (or another connector's) with kinds already timed pads at once: timing them
    again held the pool's thread, and every connector's checks, for about a second."""
    clock, pool = Clock(), ManualPool()
    gate(clock, pool)
    again = PasswordGate(BasicAuth({"carol": FAST_ARGON, "dave": FAST_BCRYPT}, "r"), pool, clock, 0)
    assert pool.queue == [], "nothing timed again"
    assert again.padding is not None and again.padding.target == 0.2 and again.padding.decoy == FAST_BCRYPT
    other = bcrypt.hashpw(b"x", bcrypt.gensalt(5)).decode()
    mixed = PasswordGate(BasicAuth({"erin": other, "bob": FAST_ARGON}, "r"), pool, clock, 0)
    assert [args[1] for _, (work, args) in pool.queue] == [{"$2b$05$": other}], "only the kind not timed yet"
    assert mixed.padding is None
    pool.step(0)
    assert mixed.padding is not None and set(mixed.padding.costs) == {"$2b$05$", hash_kind(FAST_ARGON)}
    assert set(pool.timings) == {hash_kind(FAST_BCRYPT), hash_kind(FAST_ARGON), "$2b$05$"}
