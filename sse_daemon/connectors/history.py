"""A sink's bounded history and the honest-resume decision (pure: no I/O).

History keeps the newest events, bounded by count, age and bytes. Because ids
strictly increase, history can say exactly which ids it covers: every event
with an id above its *floor* (the newest id it has evicted, or the moment the
sink started) is still held. That turns "can this client resume?" into one
comparison:

- the requested id is at or above the floor (and not from the future): replay
  what follows it; nothing was lost;
- otherwise (older than the floor, from before a restart, from another server,
  or not a number): replay everything held, preceded by a *reset* event, so the
  client knows it missed events instead of silently getting a gap.

Either way the answer names the id replay continues after
(``SSE-Replay-From``): equal to the client's ``Last-Event-ID`` when nothing was
lost, the floor when something was.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Callable, Iterator, Sequence

__all__ = ["History", "Resume", "reset_payload"]


@dataclass(frozen=True, slots=True)
class Resume:
    """What to send a subscriber that asked to resume."""

    frames: tuple[bytes, ...]  # encoded events to replay, oldest first
    after: Any  # replay continues after this id (the SSE-Replay-From header): an int, or a history key
    reset: str | None = None  # why the client lost events: None, "unparseable", "too-old", "unknown"
    requested: str = ""
    oldest: Any = None  # oldest id still held, for the reset event
    keys: tuple[Any, ...] = ()  # the ids of ``frames``, in order (a filtered resume looks up their events)


def reset_payload(resume: Resume, show: Callable[[Any], str] = str) -> str:
    """The reset event's data: JSON saying what was asked for, what is held, and why."""
    return json.dumps(
        {
            "reason": resume.reset,
            "requested": resume.requested,
            "oldest": None if resume.oldest is None else show(resume.oldest),
            "resumed_after": show(resume.after),
        },
        separators=(",", ":"),
    )


class History:
    """The newest encoded events, bounded by ``size`` events, ``max_age`` seconds and ``max_bytes``.

    ``now`` is the sink's clock (seconds); ``start`` is the first floor: an id
    at or above it may come from this run, anything below certainly does not.
    A bound of 0 turns that bound off (``size`` 0 keeps nothing).

    Ids are ints by default; a shared bus's ids (Redis entry ids) are read with
    ``key`` into comparable keys and written back with ``show``. ``start``
    None (such a bus: what came before is the bus's to say) puts the floor
    just below the first event appended (``below``); until then nothing is covered.
    ``newest`` continues another history (a worker process's copy of the daemon's).
    """

    def __init__(
        self,
        size: int,
        now: Callable[[], float],
        start: Any,
        max_age: float = 0.0,
        max_bytes: int = 0,
        key: Callable[[str], Any] = int,
        show: Callable[[Any], str] = str,
        below: Callable[[Any], Any] = lambda k: k - 1,
        newest: Any = None,
    ) -> None:
        self.key = key
        self.show = show
        self._below = below
        self.size = size
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._now = now
        self._entries: deque[tuple[int, bytes]] = deque()  # (id, frame); the tuple shape is relied on by tests
        self._times: deque[float] = deque()  # when each entry was added
        self.bytes = 0
        self.floor = start  # every event with an id above this is held
        self.newest = start if newest is None else newest  # the newest id appended (or the start; a copy's, given)
        self.evicted = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def append(self, event_id: Any, frame: bytes, at: float | None = None) -> None:
        """Keep an event; ``at`` is when it arrived (now by default; a worker copying the daemon's history gives it)."""
        self.extend([event_id], [frame], at)

    def extend(self, ids: Sequence[Any], frames: Sequence[bytes], at: float | None = None) -> None:
        """Keep events (``ids`` increasing, above every id held), all arrived at ``at`` (now by default)."""
        if not ids:
            return
        if self.floor is None:
            self.floor = self.newest = self._below(ids[0])
        if ids[-1] > self.newest:
            self.newest = ids[-1]
        entries, at = self._entries, self._now() if at is None else at
        if len(ids) == 1:  # a publish of one event (most of them): without zip, repeat and sum
            entries.append((ids[0], frames[0]))
            self._times.append(at)
            self.bytes += len(frames[0])
        else:
            entries.extend(zip(ids, frames))
            self._times.extend(repeat(at, len(ids)))
            self.bytes += sum(map(len, frames))
        if len(entries) > self.size:
            self._evict(len(entries) - self.size)
        while entries and self.max_bytes and self.bytes > self.max_bytes:
            self._evict()
        if self.max_age > 0:
            self._expire()

    def entries(self) -> list[tuple[Any, bytes, float]]:
        """What is held, oldest first, with arrival times (a sink's workers get a copy)."""
        self._expire()
        return [(event_id, frame, at) for (event_id, frame), at in zip(self._entries, self._times)]

    def after(self, last_event_id: str) -> Iterator[bytes]:
        """Frames newer than ``last_event_id``; all of them for an id we cannot read."""
        return iter(self.resume(last_event_id).frames)

    def covers(self, last_event_id: str) -> bool:
        """Whether resuming after ``last_event_id`` needs nothing but what is held here."""
        self._expire()
        try:
            requested = self.key(last_event_id)
        except ValueError:
            return False
        return self.floor is not None and self.floor <= requested <= self.newest

    def resume(self, last_event_id: str) -> Resume:
        self._expire()
        oldest = self._entries[0][0] if self._entries else None
        try:
            requested = self.key(last_event_id)
        except ValueError:
            requested = None
        if requested is None:
            reason = "unparseable"
        elif self.floor is None:
            return Resume((), None, "unknown", last_event_id, None)
        elif requested < self.floor:
            reason = "too-old"  # evicted, or from before this sink started
        elif requested > self.newest:
            reason = "unknown"  # never given out here: another server, or a clock gone back
        else:
            held = [(event_id, frame) for event_id, frame in self._entries if event_id > requested]
            return Resume(tuple(frame for _, frame in held), requested, None, last_event_id, oldest,
                          tuple(event_id for event_id, _ in held))
        frames = tuple(frame for _, frame in self._entries)
        return Resume(frames, self.floor, reason, last_event_id, oldest, tuple(event_id for event_id, _ in self._entries))

    def _evict(self, count: int = 1) -> None:
        """Drop the ``count`` oldest events (a publish's worth at once: the history is full in steady state)."""
        entries, times = self._entries, self._times
        size = 0
        for _ in range(count):
            event_id, frame = entries.popleft()
            times.popleft()
            size += len(frame)
        self.bytes -= size
        if event_id > self.floor:  # the floor was set by the first append
            self.floor = event_id
        self.evicted += count

    def _expire(self) -> None:
        if self.max_age <= 0:
            return
        limit = self._now() - self.max_age
        while self._times and self._times[0] < limit:
            self._evict()
