"""Per-turn batching: the events of one reactor turn go out together, once per subscriber.

Encoding and chunk framing happen once for the whole turn; every subscriber
gets the same bytes in one write (see fanout.py for why one write matters).
With ``min_interval`` (the sink's ``flush.interval``) a write comes at least
that long after the previous one, so a fast stream's events of several turns
share one write per subscriber: fewer ``send()`` calls for at most that delay.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sse_daemon.connectors.fanout import chunk


class TurnBatch:
    """The frames (and ingress times) of this reactor turn, flushed by ``flush`` at its end."""

    def __init__(self, turns: IReactorTime, flush: Callable[[], None], min_interval: float = 0.0) -> None:
        #: what schedules the end-of-turn write: the real reactor even when a sink's clock is a test's Clock
        self.turns = turns
        self._flush = flush
        self.min_interval = min_interval
        self.frames: list[bytes] = []
        self.ingress: list[float] = []
        self._call: IDelayedCall | None = None
        self._written_at = float("-inf")  # when frames were last taken for a write

    @property
    def scheduled(self) -> bool:
        """Whether a write at the end of this turn is pending."""
        return self._call is not None and self._call.active()

    def add(self, frame: bytes, ingress: float | None) -> None:
        self.extend([frame], [ingress])

    def extend(self, frames: list[bytes], ingress: list[float | None]) -> None:
        """Frames for this turn's write, with the ingress times of their events (None or 0: not known)."""
        self.frames += frames
        self.ingress += [at for at in ingress if at]
        if self._call is None and frames:
            wait = self._written_at + self.min_interval - self.turns.seconds() if self.min_interval else 0.0
            self._call = self.turns.callLater(wait if wait > 0 else 0, self._flush)

    def take(self) -> tuple[list[bytes], list[float]]:
        """This turn's frames and ingress times, emptied; the pending end-of-turn call is dropped."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        frames, self.frames = self.frames, []
        ingress, self.ingress = self.ingress, []
        if frames and self.min_interval:
            self._written_at = self.turns.seconds()
        return frames, ingress


def wire(frames: list[bytes], raw: bool) -> bytes:
    """Frames as HTTP chunks: one chunk for all, or one per event on a raw sink
    (a client of bare payloads may tell them apart by the chunks alone)."""
    if raw:
        return b"".join(map(chunk, frames))
    return chunk(frames[0] if len(frames) == 1 else b"".join(frames))
