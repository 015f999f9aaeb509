"""Redis stream entry ids (``"1700000000000-3"``) as a shared bus's id scheme (pure: no Redis client).

A sink on a shared bus sends these ids and keeps its history ordered by them; it
gets :data:`STREAM_IDS` from the bus (``ISharedBus.ids``) and never imports this module.
"""

from __future__ import annotations

from zope.interface import implementer

from sse_daemon.bus.interfaces import IEventIds

MAX_SEQ = 2**64 - 1

Key = tuple[int, int]


def entry_key(entry_id: str) -> Key:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``, ordered like Redis orders ids; ValueError otherwise."""
    ms, dash, seq = entry_id.strip().partition("-")
    if not ms.isdigit() or (dash and not seq.isdigit()):
        raise ValueError(f"not a Redis stream id: {entry_id!r}")
    key = (int(ms), int(seq) if dash else 0)
    if key[0] > MAX_SEQ or key[1] > MAX_SEQ:
        raise ValueError(f"not a Redis stream id: {entry_id!r}")
    return key


def show_key(key: Key | None) -> str:
    return "" if key is None else f"{key[0]}-{key[1]}"


def key_below(key: Key) -> Key:
    """The greatest id below ``key``: history's floor just under the first event it holds."""
    return (key[0], key[1] - 1) if key[1] else (key[0] - 1, MAX_SEQ)


@implementer(IEventIds)
class StreamIds:
    """Redis stream entry ids as an :class:`IEventIds`."""

    def key(self, text: str) -> Key:
        return entry_key(text)

    def show(self, key: Key) -> str:
        return show_key(key)

    def below(self, key: Key) -> Key:
        return key_below(key)


STREAM_IDS = StreamIds()
