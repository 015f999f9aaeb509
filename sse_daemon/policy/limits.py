"""Admission limits (pure): token buckets and subscriber caps on an injected clock.

A sink refuses a new subscriber when it already has ``max.subscribers``, when
the client's address already has ``max.subscribers.per.address``, or when new
connections arrive faster than ``max.connections.per.second``; an ingest
refuses a client address that posts faster than ``max.requests.per.second``.
Every refusal carries a reason (a fixed set: metric labels never hold
addresses) and a ``Retry-After`` in whole seconds.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

__all__ = ["TokenBucket", "KeyedBuckets", "Refusal", "Admission", "RequestRate", "FailureLimit", "should_log", "LogRate", "excerpt"]

#: client addresses whose buckets are remembered; the least recently seen is forgotten first
MAX_TRACKED_ADDRESSES = 10_000


def should_log(count: int) -> bool:
    """Log the first ten of a kind (refusals, bad requests, bad upstream payloads), then every
    thousandth: a flood must not flood the log."""
    return count <= 10 or count % 1000 == 0


def excerpt(text: str | None, most: int = 200) -> str | None:
    """``text`` as a log line shows it: at most ``most`` characters, a cut ending in ``...``. An id or a
    path is the client's or the upstream's choice, up to the header limit or ``max.event.size``, and
    lines that carry one are written for every connection."""
    if text is None or len(text) <= most:
        return text
    return text[: most - 3] + "..."


class LogRate:
    """At most ``burst`` lines every ``window`` seconds for one kind of routine line (a
    subscriber connected or left): a reconnect storm of 10,000 clients must not write
    20,000 lines. What is held back is counted and told with the next line let through;
    the totals are in the metrics anyway."""

    def __init__(self, now: Callable[[], float], burst: int = 50, window: float = 10.0) -> None:
        self._now = now
        self.burst = burst
        self.window = window
        self._started = -math.inf
        self._used = 0
        self.held = 0  # lines held back since the last one let through

    def allow(self) -> tuple[bool, int]:
        """Whether to write this line, and how many were held back before it (reset when told)."""
        now = self._now()
        if now - self._started >= self.window:
            self._started, self._used = now, 0
        if self._used >= self.burst:
            self.held += 1
            return False, 0
        self._used += 1
        held, self.held = self.held, 0
        return True, held


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; a request takes one."""

    def __init__(self, rate: float, burst: float, now: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._now = now
        self._tokens = self.burst
        self._stamp = now()

    def take(self) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there."""
        now = self._now()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def wait(self) -> float:
        """0 when a token is there now; otherwise the seconds until one will be. Takes nothing."""
        tokens = min(self.burst, self._tokens + max(0.0, self._now() - self._stamp) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def full(self) -> bool:
        return self._tokens + max(0.0, self._now() - self._stamp) * self.rate >= self.burst

    def give_back(self) -> None:
        """Return a token taken for something that did not happen after all (never above ``burst``)."""
        self._tokens = min(self.burst, self._tokens + 1.0)


class KeyedBuckets:
    """One bucket per key (a client address), bounded: the least recently used key is forgotten."""

    def __init__(self, rate: float, burst: float, now: Callable[[], float], size: int = MAX_TRACKED_ADDRESSES) -> None:
        self.rate = rate
        self.burst = burst
        self._now = now
        self._size = size
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst, self._now)
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._size:
            self._buckets.popitem(last=False)
        return bucket.take()

    def wait(self, key: str) -> float:
        """What ``take`` would say, without taking (a key never seen has a full bucket)."""
        bucket = self._buckets.get(key)
        return bucket.wait() if bucket is not None else 0.0

    def give_back(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give_back()


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # "too-many-subscribers", "too-many-from-address", "connection-rate", "request-rate"
    message: str
    retry_after: int  # whole seconds, at least 1


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait - 1e-9))


class Admission:
    """A sink's caps (0 turns a cap off) and its count of open streams, total and by address."""

    def __init__(
        self,
        max_total: int,
        max_per_address: int,
        per_second: float,
        now: Callable[[], float],
        retry_after: int,
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.retry_after = retry_after
        self.rate = TokenBucket(per_second, per_second, now) if per_second > 0 else None
        self.total = 0
        self.by_address: Counter[str] = Counter()

    def check(self, address: str) -> Refusal | None:
        """Whether a new stream from ``address`` may open now (it takes a rate token if so)."""
        return self.check_address(address) or self.check_global()

    def check_address(self, address: str) -> Refusal | None:
        """The address's own cap: checked before credentials, it spends nothing."""
        if self.max_per_address and self.by_address.get(address, 0) >= self.max_per_address:
            return Refusal("too-many-from-address", f"{self.by_address[address]} streams are already open from your address (the most it may have)", self.retry_after)
        return None

    def check_global(self) -> Refusal | None:
        """The caps every client shares (takes a rate token if it lets the stream open): checked
        after credentials, so requests refused for nothing cannot spend them (guard.py)."""
        if self.max_total and self.total >= self.max_total:
            return Refusal("too-many-subscribers", f"this stream already has {self.total} subscribers (the most it takes)", self.retry_after)
        if self.rate is not None:
            wait = self.rate.take()
            if wait:
                return Refusal("connection-rate", f"new connections arrive faster than {self.rate.rate:g} a second", _seconds(wait))
        return None

    def opened(self, address: str) -> None:
        self.total += 1
        self.by_address[address] += 1

    def closed(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


class RequestRate:
    """An ingest's per-address request rate (``max.requests.per.second``; 0 turns it off)."""

    def __init__(self, per_second: float, now: Callable[[], float]) -> None:
        self.buckets = KeyedBuckets(per_second, per_second, now) if per_second > 0 else None

    def check(self, address: str) -> Refusal | None:
        if self.buckets is None:
            return None
        wait = self.buckets.take(address)
        if wait:
            return Refusal("request-rate", f"requests from your address arrive faster than {self.buckets.rate:g} a second", _seconds(wait))
        return None


class FailureLimit:
    """Failed password checks per client address (``auth.failures.per.minute``; 0 turns it off).

    A bucket holds a minute's worth; each failure takes a token. While an
    address has none left its password checks are refused at once (429 with
    ``Retry-After``) instead of each costing a bcrypt/Argon2 hash.

    A check takes its token as it starts (:meth:`reserve`) and gives it back
    unless it fails (:meth:`release`): checks still in flight count, else an
    address sending many guesses at once had every one hashed before the
    first failure was counted (32 at a time, every few seconds, for a limit of 10 a minute).
    """

    def __init__(self, per_minute: float, now: Callable[[], float]) -> None:
        self.buckets = KeyedBuckets(per_minute / 60.0, per_minute, now) if per_minute > 0 else None

    def check(self, address: str) -> Refusal | None:
        if self.buckets is None:
            return None
        wait = self.buckets.wait(address)
        if wait:
            return Refusal("auth-failures", f"too many failed password checks from your address (more than {self.buckets.rate * 60:g} a minute)", _seconds(wait))
        return None

    def reserve(self, address: str) -> bool:
        """Take a token for a check about to run, as if it failed; False when none was taken."""
        return self.buckets is not None and self.buckets.take(address) == 0

    def release(self, address: str) -> None:
        """A reserved check did not fail (verified, not run, refused for a full pool): its token goes back."""
        if self.buckets is not None:
            self.buckets.give_back(address)
