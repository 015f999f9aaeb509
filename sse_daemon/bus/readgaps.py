"""Entries of a shared stream this instance never read: Redis trimmed them first (pure: no I/O).

A Redis stream keeps about ``history.size`` entries (``XADD MAXLEN ~``, and ``XTRIM MINID`` with an
age bound). An instance that falls further behind than that reads on from the oldest entry Redis
still holds: what was trimmed before it read it never reaches its subscribers, and ``XREAD`` does not
say so. ``XINFO STREAM``'s ``entries-added`` (Redis 7) counts every entry a stream was ever given, so
whenever this reader has read everything (the stream's ``last-generated-id`` is its position) the
entries added since the previous such moment, less those it read, are the ones it lost. Checked now
and then, nothing is missed: the counts are cumulative, not a look at one read.
"""

from __future__ import annotations


class ReadGaps:
    """Per stream: ``entries-added`` at this reader's position when last known, and the entries read since."""

    def __init__(self) -> None:
        self._added: dict[str, int] = {}
        self._read: dict[str, int] = {}

    def knows(self, stream: str) -> bool:
        """Whether losses of ``stream`` can be told from now on (a check found this reader caught up)."""
        return stream in self._added

    def read(self, stream: str, count: int) -> None:
        """This reader got ``count`` entries of ``stream`` (those it could not decode included)."""
        if stream in self._read:
            self._read[stream] += count

    def forget(self, stream: str) -> None:
        """Not read here any more, or from another position: what follows is not comparable."""
        self._added.pop(stream, None)
        self._read.pop(stream, None)

    def check(self, stream: str, position: str, last_generated: str | None, added: int | None) -> int:
        """Entries of ``stream`` lost since the previous check that could tell (0 now if this one cannot:
        the reader is behind, or Redis is older than 7 and has no ``entries-added``)."""
        if added is None or last_generated != position:
            return 0
        lost = 0
        if stream in self._added:
            lost = max(0, added - self._added[stream] - self._read[stream])
        self._added[stream], self._read[stream] = added, 0
        return lost
