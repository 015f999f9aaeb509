"""Per-turn batching: the events of one reactor turn go out together, once per subscriber.

Encoding and chunk framing happen once for the whole turn; every subscriber
gets the same bytes in one write (see fanout.py for why one write matters).
With ``min_interval`` (the sink's ``flush.interval``) writes are paced to one per
interval on average, so a fast stream's events of several turns share one write per
subscriber: fewer ``send()`` calls, for at most that delay. The pace is a token
bucket of :data:`BURST` writes: a stream that writes less often than once an
interval (on average) never waits, even when two events happen to come close
together; only a stream that keeps writing faster does, by at most the interval.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sse_daemon.connectors.fanout import chunk

#: writes that may follow each other at once before ``min_interval`` paces them: a slow stream's events that
#: happen to come close together are not held (a fixed 1 ms spacing would hold about one event in five of a
#: stream of 200 events/s arriving at random)
BURST = 4


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
        self._tokens = float(BURST)  # writes that may go at once, as of ``_counted_at``
        self._counted_at = 0.0

    @property
    def scheduled(self) -> bool:
        """Whether a write at the end of this turn is pending."""
        return self._call is not None and self._call.active()

    def extend(self, frames: list[bytes], ingress: list[float | None]) -> None:
        """Frames for this turn's write, with the ingress times of their events (None or 0: not known)."""
        self.frames += frames
        for at in ingress:
            if at:
                self.ingress.append(at)
        if self._call is None and frames:
            wait = 0.0
            if self.min_interval:
                tokens = self._tokens_at(self.turns.seconds())
                if tokens < 1:
                    wait = (1 - tokens) * self.min_interval
            self._call = self.turns.callLater(wait, self._flush)

    def _tokens_at(self, now: float) -> float:
        return min(BURST, self._tokens + (now - self._counted_at) / self.min_interval)

    def take(self) -> tuple[list[bytes], list[float]]:
        """This turn's frames and ingress times, emptied; the pending end-of-turn call is dropped."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
        frames, self.frames = self.frames, []
        ingress, self.ingress = self.ingress, []
        if frames and self.min_interval:  # a write spends a token (one forced early, by a subscriber's arrival, too)
            now = self.turns.seconds()
            self._tokens, self._counted_at = max(0.0, self._tokens_at(now) - 1), now
        return frames, ingress


def wire(frames: list[bytes], raw: bool) -> bytes:
    """Frames as HTTP chunks: one chunk for all, or one per event on a raw sink
    (a client of bare payloads may tell them apart by the chunks alone)."""
    if raw:
        return b"".join(map(chunk, frames))
    return chunk(frames[0] if len(frames) == 1 else b"".join(frames))
