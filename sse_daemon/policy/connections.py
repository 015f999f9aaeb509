"""Connection budgets (pure): request deadlines, per-address caps, descriptor headroom, shutdown.

Everything a port decides about a connection before any resource sees it,
as plain bookkeeping on injected clocks and counters; ``listener.py`` is the
Twisted glue that asks these objects and acts on the answer.

- :class:`PortPolicy`: a port's deadlines (a request head, then its body, each
  within a fixed time that trickling cannot extend) and its cap on open
  connections per client address.
- :class:`AddressCounts`: open connections per address, counted from accept,
  so half-open requests count too.
- :class:`DescriptorBudget`: the process's file descriptors. New connections
  are refused while fewer than ``headroom`` descriptors would be left, so log
  files, Redis, upstream sources and worker pipes never meet ``EMFILE``.
- :class:`Stopping`: whether shutdown has begun, shared by every port and the
  reloader.
- :data:`LISTEN_BACKLOG`: the kernel's queue of connections not yet accepted, for
  every listening socket (the listeners' and a sink's worker processes').
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["PortPolicy", "AddressCounts", "DescriptorBudget", "Stopping", "headroom_for", "port_policy",
           "PORT_OPTIONS", "LISTEN_BACKLOG"]

#: pending connections the kernel keeps for a listener (capped by net.core.somaxconn). Twisted's
#: default (50) drops connections when many subscribers reconnect at once (a deploy); they then
#: retry only after 1 s, 3 s, ... (bench/)
LISTEN_BACKLOG = 1024

#: the options of a port that every connector on it must give alike (config.py checks it)
PORT_OPTIONS = ("server.head.timeout", "server.body.timeout", "server.max.connections.per.address")


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """A port's connection limits; 0 turns a deadline or the cap off."""

    head_timeout: float = 10.0  # seconds from accept (or the end of the previous response) to a whole request head
    body_timeout: float = 30.0  # seconds from the end of the head to the end of the body
    max_per_address: int = 0  # open connections from one client address


def port_policy(options: Mapping[str, Any]) -> PortPolicy:
    """The policy a connector's ``server.*`` options give its port."""
    return PortPolicy(options["server.head.timeout"], options["server.body.timeout"],
                      options["server.max.connections.per.address"])


class AddressCounts:
    """Open connections of one port by client address (a bounded map: only open ones are kept)."""

    def __init__(self) -> None:
        self.by_address: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_address.values())

    def admit(self, address: str, cap: int) -> bool:
        """Count a new connection from ``address`` unless it already holds ``cap`` (0: no cap)."""
        if cap and self.by_address[address] >= cap:
            return False
        self.by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


def headroom_for(limit: int) -> int:
    """Descriptors kept free for the daemon's own work: 1/16 of the limit, at least 32, at most 1024."""
    return max(32, min(1024, limit // 16))


class DescriptorBudget:
    """The process's descriptors, shared by every port: refuse a connection that would eat the headroom.

    Counting the open descriptors costs a directory listing, so it is done at
    most every ``interval`` seconds (ten times as rarely while less than half
    the budget is in use); between counts the estimate is the other
    descriptors seen at the last count plus the connections open now, which
    the ports report exactly. What the daemon opens between two counts comes
    out of the headroom.
    """

    def __init__(self, soft_limit: Callable[[], int], count_open: Callable[[], int | None],
                 now: Callable[[], float], headroom: int | None = None, interval: float = 1.0) -> None:
        self._soft_limit = soft_limit
        self._count_open = count_open
        self._now = now
        self._fixed_headroom = headroom
        self.interval = interval
        self.connections = 0  # admitted by every port and still open
        self.limit = soft_limit()
        self.headroom = headroom if headroom is not None else headroom_for(self.limit)
        self.others = 0  # descriptors that are not connections, at the last count
        self._counted_at: float | None = None

    @property
    def in_use(self) -> int:
        """The estimate: descriptors that are not connections, plus the connections."""
        return self.others + self.connections

    def admit(self) -> bool:
        """Whether one more connection (its descriptor already open, not yet counted) may stay."""
        now = self._now()
        usable = self.limit - self.headroom
        every = self.interval if self.in_use * 2 >= usable else self.interval * 10
        if self._counted_at is None or now - self._counted_at >= every:
            self.count(now)
        return self.in_use + 1 <= self.limit - self.headroom

    def count(self, now: float) -> None:
        """Take the limit and the open descriptors afresh (an operator may change the limit with prlimit)."""
        self._counted_at = now
        self.limit = self._soft_limit()
        self.headroom = self._fixed_headroom if self._fixed_headroom is not None else headroom_for(self.limit)
        open_now = self._count_open()
        if open_now is not None:  # None: this system cannot tell; connections alone are counted
            # the descriptor being admitted is open already and is not a counted connection yet
            self.others = max(0, open_now - 1 - self.connections)

    def opened(self) -> None:
        self.connections += 1

    def closed(self) -> None:
        self.connections -= 1


class Stopping:
    """Whether shutdown has begun; one object shared by every port and the reloader, set once."""

    def __init__(self) -> None:
        self.started = False

    def __bool__(self) -> bool:
        return self.started

    def begin(self) -> None:
        self.started = True
