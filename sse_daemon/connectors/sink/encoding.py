"""Mapping an event to the bytes a sink writes: once per event, shared by every subscriber."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from twisted.logger import Logger

from sse_daemon.events.schema import Event
from sse_daemon.mapping.mappers import IMapper, MappingError
from sse_daemon.policy.limits import should_log
from sse_daemon.wire.eventstream import encode_event


class FrameEncoder:
    """An event as an SSE frame (or a raw sink's bare payload); what cannot be written is
    counted in ``events_unmapped`` and logged sampled, never raised."""

    def __init__(self, name: str, mapper: IMapper, counters: Counter[str], log: Logger) -> None:
        self.name = name
        self.mapper = mapper
        self.counters = counters
        self.log = log

    def encode_all(self, events: Sequence[Event], id_texts: Sequence[str] | None) -> tuple[list[bytes], list[int] | None]:
        """The frames of ``events`` (with ``id_texts``; None: bare payloads), and None, or when some could not
        be written, the indexes of those that were. Every event at once; when one fails, each again on its own
        (``encode``: counted and logged), so the quick pass need not know which."""
        encode = self.mapper.encode
        try:
            if id_texts is not None:
                return [encode_event(encode(event), id=text) for event, text in zip(events, id_texts)], None
            payloads = [encode(event).encode("utf-8") for event in events]
            if b"" not in payloads:  # an empty one cannot be written (encode says why)
                return payloads, None
        except Exception:
            pass
        frames: list[bytes] = []
        kept: list[int] = []
        for index, event in enumerate(events):
            frame = self.encode(event, None if id_texts is None else id_texts[index])
            if frame is not None:
                frames.append(frame)
                kept.append(index)
        return frames, kept

    def encode(self, event: Event, id_text: str | None) -> bytes | None:
        """The event's bytes (an SSE frame with ``id_text``, or the bare payload for None), or None when
        it cannot be written.

        Events are checked where they enter (validate.py), so only ``map.validate.json`` refusing a
        template's output, or an empty payload on a raw sink (no chunk can hold it; the original sink
        wrote nothing either), should get here; anything else is a bug, logged with its traceback.
        """
        try:
            payload = self.mapper.encode(event)
            if id_text is not None:
                return encode_event(payload, id=id_text)
            if not payload:  # a chunk of no bytes is the last chunk: it would end every raw subscriber's response
                raise MappingError("empty-payload", "a raw stream cannot carry an empty payload (a chunk of no bytes ends the response)")
            return payload.encode("utf-8")
        except MappingError as e:  # map.validate.json refused the output, or an empty payload on a raw sink
            self.counters["events_unmapped"] += 1
            if should_log(self.counters["events_unmapped"]):
                self.log.warn("sink {sink} dropped an event: {reason} ({count} so far)", sink=self.name, reason=str(e),
                              count=self.counters["events_unmapped"])
        except Exception:
            self.counters["events_unmapped"] += 1
            if should_log(self.counters["events_unmapped"]):
                self.log.failure("sink {sink} could not encode an event ({count} so far); it is dropped", sink=self.name,
                                 count=self.counters["events_unmapped"])
        return None
