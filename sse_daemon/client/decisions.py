"""The client's pure decisions: how long to wait, what a response head means (sans-I/O).

No I/O and no Twisted here: every rule is a function of its arguments, tested
with vectors (``tests/test_client_decisions.py``, ``tests/test_hostile_upstream.py``).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable

__all__ = [
    "MIN_BACKOFF", "RETRY_AFTER_MAX", "SERVER_WAIT_MAX", "ReconnectPolicy", "Verdict",
    "judge_response", "media_type", "reconnect_delay", "retry_after",
]

#: backoff never goes below this, so ``retry: 0`` cannot make failures spin
MIN_BACKOFF = 0.01
#: the longest wait a server can ask for, with ``retry:`` or ``Retry-After`` (seconds); asking for
#: more (a 20-digit ``retry:`` would be 10^16 s) gets this
SERVER_WAIT_MAX = 600.0
#: the same bound for ``Retry-After`` (one name per header in the logs and docs)
RETRY_AFTER_MAX = SERVER_WAIT_MAX


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How long to wait before the next connection attempt, and what counts as a failure.

    After a stream that worked ends, wait the server's ``retry:`` (or the
    initial delay): that is the WHATWG "reestablish" case and the server set
    its pace. After the n-th failure in a row, back off exponentially from
    the larger of the two, up to ``maximum`` (or the server's ``retry:`` if
    that is larger: it asked for at least that), and take off a random part
    of up to half ("equal jitter") so many clients do not return in step.
    A server's ``retry:`` counts for at most :data:`SERVER_WAIT_MAX`.
    """

    initial: float = 1.0
    maximum: float = 30.0
    jitter: Callable[[], float] = random.random  # in [0, 1)

    def delay(self, failures: int, retry_ms: int | None) -> float:
        # min() on the int first: a huge int from anywhere never meets a float (OverflowError)
        retry = None if retry_ms is None else min(max(retry_ms, 0), int(SERVER_WAIT_MAX * 1000)) / 1000
        if failures <= 0:
            return self.initial if retry is None else retry
        base = max(self.initial, retry or 0.0, MIN_BACKOFF)
        ceiling = max(self.maximum, base)
        raw = min(ceiling, base * 2 ** min(failures - 1, 62))
        return raw * (1 - 0.5 * self.jitter())

    def stream_failed(self, delivered: int, lasted: float) -> bool:
        """Whether a stream that ended (cleanly or not) was a failure: it delivered no event and
        was open for less than ``maximum`` seconds. An upstream answering ``retry: 0`` and
        closing at once (or sending only comments) then backs off like one that refuses;
        a quiet stream cut after a long while (an idle proxy) does not."""
        return delivered == 0 and lasted < self.maximum

    @staticmethod
    def failures_after(failures: int, failed: bool, delivered: int) -> int:
        """The count of failures in a row after an attempt: a failure adds one, or makes it 1
        when its stream had delivered events first; anything else starts over."""
        if not failed:
            return 0
        return 1 if delivered else failures + 1


def reconnect_delay(policy: ReconnectPolicy, failures: int, retry_ms: int | None, asked: float | None) -> float:
    """The wait before the next attempt: the policy's, or longer when a 429/503 said when to
    come back (``asked``, from ``Retry-After``, capped at :data:`RETRY_AFTER_MAX`) plus up to
    10 % more, so the server's clients do not return together."""
    delay = policy.delay(failures, retry_ms)
    if asked is not None:
        delay = max(delay, min(asked, RETRY_AFTER_MAX) * (1 + 0.1 * policy.jitter()))
    return delay


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, and no number to float()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class Verdict(enum.Enum):
    STREAM = "stream"  # read the body as an event stream
    STOP = "stop"  # the server asked us to stop (204), or a failure the client does not retry
    RETRY = "retry"  # a failure: back off and try again


def media_type(content_type: str | None) -> str:
    """``Text/Event-Stream; charset=utf-8`` -> ``text/event-stream``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def judge_response(code: int, phrase: str, content_type: str | None, raw: bool = False,
                   reconnect_on_client_error: bool = True) -> tuple[Verdict, str]:
    """What a response head means for the client, and why.

    Only 200 with ``text/event-stream`` is a stream (as WHATWG requires);
    204 stops the client as the standard says. Everything else is a failure
    that is retried with backoff, unlike a browser, which gives up: a daemon
    must outlive a server's bad minute, and its error body must never reach
    the caller. Without ``reconnect_on_client_error`` (the source option
    ``reconnect.on.client.error: false``) a 4xx other than 429, and a 200
    that is no event stream, stop the client as they stop a browser's
    EventSource. With ``raw`` (``sse.format: raw``) any 200 is a stream of
    JSON documents, whatever its Content-Type: the original sink sent the
    mapper's type.
    """
    status = f"HTTP {code} {phrase}".rstrip()
    give_up = Verdict.RETRY if reconnect_on_client_error else Verdict.STOP
    then = "" if reconnect_on_client_error else " (reconnect.on.client.error is false)"
    if code == 204:
        return Verdict.STOP, f"the server answered {status}: it asks clients to stop"
    if code != 200:
        client_error = 400 <= code < 500 and code != 429
        return (give_up if client_error else Verdict.RETRY), f"the server answered {status}" + (then if client_error else "")
    if raw:
        return Verdict.STREAM, status
    found = media_type(content_type)
    if found != "text/event-stream":
        return give_up, (
            f"the server answered {status} with Content-Type {content_type!r}, not text/event-stream"
            if content_type else f"the server answered {status} without a Content-Type (expected text/event-stream)"
        ) + then
    return Verdict.STREAM, status
