"""Subscribers' own filters (``subscriber.where``): which of the shared frames each one gets.

A frame is still encoded once; a filter only decides whether a subscriber gets
those bytes. So the sink keeps, beside its history, each held event's values
(:class:`EventValues`), for the live turn and for a resume, which replays the
history through the same filter. The filter itself is compiled once per text
(config/filters.py: bounded, closures, no ``eval``) and shared by every
subscriber that sends the same text.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest

from sse_daemon.config.expressions import Condition
from sse_daemon.config.filters import FilterError, subscriber_filter
from sse_daemon.connectors.sink.subscriber import Select, Subscriber
from sse_daemon.events.schema import Schema

#: compiled filters a sink remembers by their text (reconnects of one page send the same one)
CACHED_FILTERS = 512


def query_values(request: IRequest, name: str) -> list[str]:
    """Every value of a query parameter (percent-decoded, UTF-8)."""
    return parse_qs(request.uri.partition(b"?")[2].decode("latin-1"), keep_blank_values=True,
                    encoding="utf-8", errors="replace").get(name, []) if b"?" in request.uri else []


def selector(condition: Condition, counters: Counter[str]) -> Select:
    """The filter as a test of an event's values: only true passes; a failure is counted, never raised."""
    evaluate = condition.evaluate

    def select(values: Mapping[str, Any]) -> bool:
        try:
            return evaluate(values) is True
        except Exception:  # the type check leaves nothing that should raise: counted as a bug, the event withheld
            counters["filter_failures"] += 1
            return False

    return select


class Filters:
    """A sink's compiled filters, by text, checked against its stream's schema."""

    def __init__(self, schema: Schema, stream: str, counters: Counter[str]) -> None:
        self.schema = schema
        self.stream = stream
        self.counters = counters
        self._compiled: OrderedDict[str, Select] = OrderedDict()

    def compile(self, text: str) -> Select:
        """The filter of ``text``, or FilterError."""
        select = self._compiled.get(text)
        if select is None:
            select = selector(subscriber_filter(text, self.schema, self.stream), self.counters)
            self._compiled[text] = select
            if len(self._compiled) > CACHED_FILTERS:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(text)
        return select


def bad_filter(request: IRequest, error: FilterError, stream: str | None = None) -> bytes:
    """The 400 of a filter the daemon refuses: the message with the filter and a caret, as ``--check`` prints it."""
    request.setResponseCode(400)
    request.setHeader(b"Content-Type", b"application/json")
    body: dict[str, Any] = {"error": error.detail, "reason": "bad-filter"}
    if error.column is not None:
        body["column"] = error.column
    if stream is not None:
        body["stream"] = stream
    return json.dumps(body).encode() + b"\n"


class EventValues:
    """The values of the events a history holds, by id, so a resume can be filtered too.

    Kept only by a sink that takes filters; an id at or below the history's floor is gone
    from history, so its values go too (ids increase: the oldest are first)."""

    def __init__(self) -> None:
        self._values: OrderedDict[Any, Mapping[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def add(self, event_id: Any, values: Mapping[str, Any]) -> None:
        self._values[event_id] = values

    def get(self, event_id: Any) -> Mapping[str, Any] | None:
        return self._values.get(event_id)

    def prune(self, floor: Any) -> None:
        """Forget what history no longer holds (every id at or below ``floor``)."""
        values = self._values
        while values and floor is not None and next(iter(values)) <= floor:
            values.popitem(last=False)


def chosen(frames: Iterable[bytes], values: Iterable[Mapping[str, Any] | None], select: Select) -> list[bytes]:
    """The frames whose event the filter passes. An event whose values are not known (held in a
    history file from before a restart) passes: better once too many than silently missing."""
    return [frame for frame, known in zip(frames, values) if known is None or select(known)]


def deliver_filtered(targets: Sequence[tuple[Subscriber, Select | None]], frames: list[bytes], data: bytes, chunked: bytes,
                     values: Sequence[Mapping[str, Any] | None], wire: Callable[[list[bytes]], bytes]) -> tuple[int, int, int]:
    """A turn's shared frames to each subscriber, through its filter (None: all of them). ``data`` and
    ``chunked`` are the frames joined and as HTTP chunks, shared; only a subscriber that gets some of the
    frames has its own join. (events written, bytes written, frames filtered out)."""
    only = values[0] if len(values) == 1 else None  # a turn of one event (the usual): one test, no list
    #: what each filter picked this turn: subscribers sending the same text share its compiled filter, so a
    #: thousand of them cost one pass over the frames, not a thousand (0.25 s for a 500-event slice)
    picked: dict[Select, tuple[list[bytes], bytes, bytes]] = {}
    events = size = filtered = 0
    for subscriber, select in targets:
        mine, my_data, my_chunked = frames, data, chunked
        if select is not None and only is not None:
            if not select(only):
                filtered += 1
                continue
        elif select is not None:
            pick = picked.get(select)
            if pick is None:
                mine = chosen(frames, values, select)
                if mine and len(mine) < len(frames):
                    my_data, my_chunked = b"".join(mine), wire(mine)
                pick = picked[select] = (mine, my_data, my_chunked)
            mine, my_data, my_chunked = pick
            filtered += len(frames) - len(mine)
            if not mine:
                continue
        if subscriber.deliver(mine, my_data, my_chunked):
            events += len(mine)
            size += len(my_data)
    return events, size, filtered
