"""How long events this instance published wait for its own fan-out (pure: no Redis, no reactor).

On the shared bus an ingest's 200 means Redis has the events; this instance's
sinks get them later, when its reader reads them back. Redis takes events far
faster than one process can fan them out, so under overload that wait grows
without limit unless something pushes back. :class:`FanoutLag` measures it,
per stream, as the age of the oldest acknowledged publish not yet read back:
on the instance's own clock (no skew with Redis's), and right for bursts as for
sustained overload. The ingest answers 503 while it is above ``fanout.max.lag``.

One mark per acknowledged publish (its newest entry id and the time Redis
acknowledged it); marks within :data:`COALESCE` seconds of the newest are merged
into it, keeping the older time, so a stream holds about one mark per
``COALESCE`` of waiting, however many events that is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sse_daemon.bus.streamids import Key

#: acknowledgements closer than this share a mark (the older time is kept: the lag is never under-read)
COALESCE = 0.01
#: marks a stream keeps at the most: past them a publish joins the newest mark whatever its time. With
#: ``fanout.max.lag: 0`` nothing refuses publishes, and a fan-out behind for an hour held 360,000 marks
MAX_MARKS = 10_000


@dataclass(slots=True)
class _Mark:
    newest: Key  # the newest entry id acknowledged by then
    at: float  # when the first publish of this mark was acknowledged
    count: int  # events acknowledged in this mark


class FanoutLag:
    """Per stream: the marks of publishes acknowledged and not yet read back, oldest first."""

    def __init__(self) -> None:
        self._marks: dict[str, deque[_Mark]] = {}

    def accepted(self, stream: str, newest: Key, now: float, count: int = 1) -> None:
        """Redis acknowledged a publish of ``count`` events whose newest entry is ``newest``, at ``now``."""
        marks = self._marks.setdefault(stream, deque())
        if marks and (now - marks[-1].at < COALESCE or len(marks) >= MAX_MARKS):
            marks[-1].newest = max(marks[-1].newest, newest)
            marks[-1].count += count
        else:
            marks.append(_Mark(newest, now, count))

    def delivered(self, stream: str, position: Key) -> None:
        """The reader has fanned out every entry of ``stream`` up to ``position``."""
        marks = self._marks.get(stream)
        while marks and marks[0].newest <= position:
            marks.popleft()

    def lost_after(self, stream: str, newest: Key) -> None:
        """Redis holds nothing of ``stream`` after ``newest`` (it restarted without the last entries it
        acknowledged): marks beyond it will never be read back, and would hold the ingest back for good."""
        marks = self._marks.get(stream)
        while marks and marks[-1].newest > newest:
            marks.pop()

    def forget(self, stream: str) -> None:
        """Nobody here reads ``stream`` any more (or where it is read from was lost): nothing waits."""
        self._marks.pop(stream, None)

    def lag(self, stream: str, now: float) -> float:
        """Seconds the oldest acknowledged publish of ``stream`` has waited for this fan-out; 0 when none waits."""
        marks = self._marks.get(stream)
        return max(0.0, now - marks[0].at) if marks else 0.0

    def waiting(self, stream: str) -> int:
        """Events of ``stream`` acknowledged and not yet read back (counted by the publish they came in)."""
        return sum(mark.count for mark in self._marks.get(stream, ()))

    def streams(self) -> list[str]:
        return sorted(self._marks)
