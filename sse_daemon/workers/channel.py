"""The pipe from the daemon to a sink's worker processes: length-prefixed messages.

The daemon writes, in order: one SETUP (the sink's definition, pickled: both
ends run the same code), the HISTORY it holds, GO, then every live EVENT,
already encoded, with its id. Pickle is safe here: the pipe exists only
between the daemon and the children it started.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from sse_daemon.policy.limits import should_log

SETUP, HISTORY, GO, EVENT = b"S", b"H", b"G", b"E"
_LENGTH = struct.Struct("!I")
_TIME = struct.Struct("!d")


def _message(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def setup(spec: dict[str, Any]) -> bytes:
    return _message(SETUP + pickle.dumps(spec))


def history(id_text: str, frame: bytes, at: float) -> bytes:
    return _message(HISTORY + _TIME.pack(at) + id_text.encode() + b"\n" + frame)


def go() -> bytes:
    return _message(GO)


def event(id_text: str | None, frame: bytes) -> bytes:
    """An encoded event; ``id_text`` None on a raw sink (no ids, no history)."""
    return _message(EVENT + (id_text or "").encode() + b"\n" + frame)


class MessageReceiver(Int32StringReceiver):
    """The worker's end: calls ``setup``, ``history_entry``, ``go`` and ``event``; ``unusable`` when
    one of the first three failed (the worker cannot serve then)."""

    MAX_LENGTH = 2**31 - 1  # events are bounded where they enter (max.body.size), not here
    log = Logger()
    #: set once a set-up message failed: what follows is not handled (each would fail too; the worker ends)
    broken = False

    #: live events this worker failed to handle (a bug): logged the first ten times, then every thousandth
    event_failures = 0

    def stringReceived(self, message: bytes) -> None:
        if self.broken:
            return
        kind, body = message[:1], message[1:]
        if kind == EVENT:  # every event: a plain try (a context manager a message costs), and a bug logged sampled
            try:
                id_text, _, frame = body.partition(b"\n")
                self.event(id_text.decode() or None, frame)
            except Exception:
                self.event_failures += 1
                if should_log(self.event_failures):
                    self.log.failure("worker could not handle an event ({count} so far)", count=self.event_failures)
            return
        with self.log.failuresHandled("worker could not handle a {kind!r} message", kind=kind) as handled:
            if kind == HISTORY:
                (at,) = _TIME.unpack_from(body)
                id_text, _, frame = body[_TIME.size:].partition(b"\n")
                self.history_entry(id_text.decode(), frame, at)
            elif kind == SETUP:
                self.setup(pickle.loads(body))
            elif kind == GO:
                self.go()
            else:
                raise ValueError(f"unknown message kind {kind!r}")
        if handled.failed:
            self.broken = True
            self.unusable()

    def setup(self, spec: dict[str, Any]) -> None:
        raise NotImplementedError

    def history_entry(self, id_text: str, frame: bytes, at: float) -> None:
        raise NotImplementedError

    def go(self) -> None:
        raise NotImplementedError

    def event(self, id_text: str | None, frame: bytes) -> None:
        raise NotImplementedError

    def unusable(self) -> None:
        raise NotImplementedError
