"""Reconnect-storm control (pure): jittered ``retry:`` hints and a staged drain.

When a daemon restarts, every subscriber reconnects. If they all got the same
``retry:`` (or the browser default of about 3 s) and were all cut in the same
instant, they all come back in the same second. Two cheap counters to that:
each subscriber gets its own random ``retry:`` within a range when it connects,
and on shutdown subscribers are closed in batches spread over a window.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["retry_hint", "retry_frame", "drain_schedule"]

#: seconds between two drain batches; bounds the number of timers a drain needs
DRAIN_STEP = 0.25


def retry_hint(minimum_ms: int, maximum_ms: int, jitter: Callable[[], float]) -> int | None:
    """A reconnection delay in ms, uniform in [minimum, maximum]; None when ``maximum`` is 0 (off)."""
    if maximum_ms <= 0:
        return None
    low, high = sorted((max(0, minimum_ms), maximum_ms))
    return low + min(high - low, int(jitter() * (high - low + 1)))


def retry_frame(ms: int | None) -> bytes:
    """A block holding only ``retry:``: browsers update their delay and dispatch nothing."""
    return b"" if ms is None else b"retry: %d\n\n" % ms


def drain_schedule(count: int, window: float, batch_min: int = 1, step: float = DRAIN_STEP) -> list[tuple[float, int]]:
    """When to close how many of ``count`` subscribers: ``[(delay, how_many), ...]``.

    The first batch goes at once and the last at ``window``; batches are at
    least ``step`` seconds apart and hold at least ``batch_min`` subscribers
    (a handful of clients coming back together is no storm and needs no
    wait), with sizes as even as possible. A window shorter than one step
    closes everyone at once.
    """
    if count <= 0:
        return []
    by_size = math.ceil(count / max(1, batch_min))
    batches = min(by_size, 1 + int(math.floor(max(0.0, window) / step + 1e-9)))
    if batches <= 1:
        return [(0.0, count)]
    spacing = window / (batches - 1)
    base, extra = divmod(count, batches)
    return [(round(i * spacing, 6), base + (1 if i < extra else 0)) for i in range(batches)]
