"""Tests of the event-stream parser and encoder against the WHATWG rules.

Every vector must give the same result however the bytes are chunked, since
network reads split the stream anywhere (inside a CRLF, a UTF-8 character or
a BOM).
"""

from __future__ import annotations

import codecs
import collections
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_daemon.wire.eventstream import MAX_RETRY, EventStreamParser, Message, Rejection, encode_comment, encode_event

M = Message
KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True)
class Vector:
    name: str
    stream: bytes
    expected: list[Message | Rejection]
    last_event_id: str = ""
    retry: int | None = None
    limits: dict[str, int] = field(default_factory=dict)


def lim(n: int) -> dict[str, int]:
    return {"max_line": n, "max_event": n}


VECTORS = [
    # Fields, values and the single optional space (WPT format-* tests).
    Vector("data no space", b"data:test\n\n", [M("test")]),
    Vector("data crlf", b"data: test\r\n\r\n", [M("test")]),
    Vector("data without colon is empty", b"data\n\n", [M("")]),
    Vector("two empty data events", b"data:\n\ndata:\n\n", [M(""), M("")]),
    Vector("only one space removed", b"data:  x\n\n", [M(" x")]),
    Vector("tab is kept", b"data:\ttest\rdata: \ndata:test\n\n", [M("\ttest\n\ntest")]),
    Vector("value split at first colon", b"data:: x:y\n\n", [M(": x:y")]),
    Vector("multi-line data", b"data: a\ndata: b\ndata:\ndata: c\n\n", [M("a\nb\n\nc")]),
    Vector("only-spaces value", b"data:   \n\n", [M("  ")]),
    Vector("only-spaces line is a field, not blank", b"data: x\n \n  \n\n", [M("x")]),
    Vector("nul in data kept", b"data:\x00\n\n\n\n", [M("\x00")]),
    Vector(
        "wpt format-field-parse",
        b"data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n\n",
        [M("\x00\n 2\n1\n3\n\n4")],
    ),
    Vector("unknown fields ignored", b"foo: bar\ndata: x\nDATA: y\ndata : z\n\n", [M("x")]),
    Vector("no data, nothing dispatched", b"Data: x\n\nevent: e\n\n\n\n", []),
    Vector("empty stream", b"", []),
    # Comments.
    Vector("comment", b":comment\ndata: x\n:\n: another\n\n", [M("x")]),
    Vector("comment alone does not dispatch", b": hi\n\n", []),
    # Event type.
    Vector("event type", b"event: add\ndata: 1\n\n", [M("1", "add")]),
    Vector("event type resets after dispatch", b"event: add\ndata: 1\n\ndata: 2\n\n", [M("1", "add"), M("2")]),
    Vector("event type resets without data", b"event: add\n\ndata: 2\n\n", [M("2")]),
    Vector("empty event type is message", b"event\ndata: 1\n\nevent: \ndata: 2\n\n", [M("1"), M("2")]),
    Vector("last event type wins", b"event: a\nevent: b\ndata: 1\n\n", [M("1", "b")]),
    # Last event ID.
    Vector("id", b"id: 1\ndata: a\n\n", [M("a", id="1")], last_event_id="1"),
    Vector("id persists", b"id: 1\ndata: a\n\ndata: b\n\n", [M("a", id="1"), M("b", id="1")], "1"),
    Vector("id with nul ignored", b"id: 1\ndata: a\n\nid: a\x00b\ndata: b\n\n", [M("a", id="1"), M("b", id="1")], "1"),
    Vector("id without value resets", b"id: 1\ndata: a\n\nid\ndata: b\n\n", [M("a", id="1"), M("b")], ""),
    Vector("id: empty resets", b"id: 1\ndata: a\n\nid:\ndata: b\n\n", [M("a", id="1"), M("b")], ""),
    Vector("id keeps inner spaces", b"id:  x \ndata: a\n\n", [M("a", id=" x ")], " x "),
    Vector("id-only event sets last id", b"id: 5\n\n", [], "5"),
    Vector("id after data in same event", b"data: a\nid: 7\n\n", [M("a", id="7")], "7"),
    Vector("id of unfinished event not applied", b"id: 1\ndata: a\n\nid: 2\ndata: b\n", [M("a", id="1")], "1"),
    # Retry.
    Vector("retry", b"retry: 1000\n", [], retry=1000),
    Vector("retry no space", b"retry:3000\ndata: x\n\n", [M("x")], retry=3000),
    Vector("retry bogus suffix ignored", b"retry: 1000x\n", []),
    Vector("retry empty ignored", b"retry:\nretry\n", []),
    Vector("retry keeps last valid", b"retry: 3000\nretry: 1000x\nretry: -1\nretry: +1\n", [], retry=3000),
    Vector("retry two spaces ignored", b"retry:  1000\n", []),
    Vector("retry non-ascii digits ignored", "retry: \u0661\u0662\nretry: \u00b2\n".encode(), []),
    Vector("retry leading zeros", b"retry: 0007\n", [], retry=7),
    Vector("retry zero", b"retry: 0\n", [], retry=0),
    # issue 12: clamped, never an int that overflows a float (309+ digits did) or parks a source
    Vector("retry largest kept", b"retry: 2147483647\n", [], retry=2**31 - 1),
    Vector("retry one past the largest", b"retry: 2147483648\n", [], retry=2**31 - 1),
    Vector("retry twenty digits", b"retry: " + b"1" * 20 + b"\n", [], retry=2**31 - 1),
    Vector("retry huge", b"retry: " + b"9" * 30 + b"\n", [], retry=2**31 - 1),
    Vector("retry 400 digits", b"retry: " + b"9" * 400 + b"\n", [], retry=2**31 - 1),
    Vector("retry 5000 digits (past int()'s limit)", b"retry: " + b"9" * 5000 + b"\n", [], retry=2**31 - 1),
    Vector("retry many leading zeros", b"retry: " + b"0" * 400 + b"12\n", [], retry=12),
    # Line ends.
    Vector("lone cr", b"data: a\rdata: b\r\r", [M("a\nb")]),
    Vector("cr cr is a blank line", b"data: x\r\rdata: y\r\r", [M("x"), M("y")]),
    Vector("mixed line ends", b"data: a\rdata: b\ndata: c\r\n\n", [M("a\nb\nc")]),
    Vector("wpt format-newlines", b"data:test\r\ndata\ndata:test\r\n\r", [M("test\n\ntest")]),
    Vector("crlf then lf", b"data: a\r\n\ndata: b\n\r\n", [M("a"), M("b")]),
    Vector("lf cr is two line ends", b"data: a\n\rdata: b\r\n\r\n", [M("a"), M("b")]),
    # End of stream.
    Vector("unfinished event discarded", b"data: a\n\ndata: b\n", [M("a")]),
    Vector("unfinished line discarded", b"data: a\n\ndata: b", [M("a")]),
    Vector("wpt bom + unfinished", b"\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3", [M("1"), M("2")]),
    # BOM and UTF-8.
    Vector("bom stripped", b"\xef\xbb\xbfdata: x\n\n", [M("x")]),
    Vector("second bom is data (wpt format-bom-2)", b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3", [M("2")]),
    Vector("bom later is data", b"data: \xef\xbb\xbfx\n\n\xef\xbb\xbfdata: y\n\n", [M("\ufeffx")]),
    Vector("utf-8", "data: ok\u2026 \U0001f600 \u00e9\n\n".encode(), [M("ok\u2026 \U0001f600 \u00e9")]),
    Vector("invalid byte", b"data: \xff\n\n", [M("\ufffd")]),
    Vector("truncated sequence", b"data: \xe2\x82A\n\n", [M("\ufffdA")]),
    Vector("encoded surrogate", b"data: \xed\xa0\x80\n\n", [M("\ufffd" * 3)]),
    Vector("truncated sequence at eol", b"data: \xf0\x9f\n\n", [M("\ufffd")]),
    # Limits (in characters; line length excludes its line end).
    Vector("line at limit", b"data: 12\n\n", [M("12")], limits=lim(8)),
    Vector(
        "line over limit",
        b"data: 123\n\ndata: ok\n\n",
        [Rejection("line-too-long", 9), M("ok")],
        limits=lim(8),
    ),
    Vector(
        "line over limit drops the event's data and type, its id and retry still count",
        b"id: 1\nretry: 5\nevent: e\ndata: a\ndata: 123456789\nid: 2\nretry: 6\ndata: c\n\ndata: d\n\n",
        [Rejection("line-too-long", 9), M("d", id="2")],
        "2",
        6,
        limits=lim(8),
    ),
    Vector(
        "a rejected event's id moves the last event id on (a reconnect does not ask for it again)",
        b"id: 1\nretry: 5\ndata: a\n\nid: 2\nretry: 6\n:123456789\n\ndata: b\n\n",
        [M("a", id="1"), Rejection("line-too-long", 9), M("b", id="2")],
        "2",
        6,
        limits=lim(8),
    ),
    Vector(
        "long line then blank line",
        b"data: 123456789\r\n\r\ndata: ok\r\n\r\n",
        [Rejection("line-too-long", 9), M("ok")],
        limits=lim(8),
    ),
    Vector("long unfinished line", b"data: 123456789", [Rejection("line-too-long", 9)], limits=lim(8)),
    Vector(
        "one rejection per event",
        b"data: 123456789\ndata: 123456789\ndata: x\n\ndata: 123456789\n\n",
        [Rejection("line-too-long", 9), Rejection("line-too-long", 9)],
        limits=lim(8),
    ),
    Vector("limit counts characters", "data: \u00e9\u00e9\n\n".encode(), [M("\u00e9\u00e9")], limits=lim(8)),
    Vector("event at limit", b"data: abc\ndata: d\n\n", [M("abc\nd")], limits={"max_event": 5}),
    Vector(
        "event over limit",
        b"event: e\ndata: abc\ndata: de\ndata: f\n\ndata: ok\n\n",
        [Rejection("event-too-large", 6), M("ok")],
        limits={"max_event": 5},
    ),
    Vector(
        "event over limit then long line",
        b"data: abc\ndata: de\ndata: 123456789012\n\ndata: ok\n\n",
        [Rejection("event-too-large", 6), M("ok")],
        limits={"max_line": 10, "max_event": 5},
    ),
]


def parse(chunks: list[bytes], **limits: int) -> tuple[list[Message | Rejection], EventStreamParser]:
    parser = EventStreamParser(**limits)
    out: list[Message | Rejection] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    out += parser.close()
    return out, parser


def check(vector: Vector, chunks: list[bytes]) -> None:
    assert b"".join(chunks) == vector.stream
    out, parser = parse(chunks, **vector.limits)
    assert out == vector.expected, chunks
    assert parser.last_event_id == vector.last_event_id
    assert parser.retry == vector.retry
    reasons = [r.reason for r in vector.expected if isinstance(r, Rejection)]
    assert parser.rejected == collections.Counter(reasons)


by_name = pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])


@by_name
def test_vector_whole(vector: Vector) -> None:
    check(vector, [vector.stream])


@by_name
def test_vector_split_once_everywhere(vector: Vector) -> None:
    for i in range(len(vector.stream) + 1):
        check(vector, [vector.stream[:i], vector.stream[i:]])


@by_name
def test_vector_byte_by_byte(vector: Vector) -> None:
    check(vector, [vector.stream[i : i + 1] for i in range(len(vector.stream))])


@by_name
@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 16)))
def test_vector_random_chunks(vector: Vector, cuts: list[int]) -> None:
    bounds = sorted({c % (len(vector.stream) + 1) for c in cuts})
    edges = [0, *bounds, len(vector.stream)]
    check(vector, [vector.stream[a:b] for a, b in zip(edges, edges[1:])])


def test_cr_at_chunk_end() -> None:
    """A CR closing one read and an LF opening the next are a single line end."""
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the CRLF's LF, not a blank line
    assert parser.feed(b"\r") == [M("a")]  # a blank line
    assert parser.feed(b"data: b\r") == []
    assert parser.feed(b"data: c\r") == []  # CR followed by other text ended "data: b"
    assert parser.feed(b"\r") == [M("b\nc")]


def test_close_starts_a_new_stream() -> None:
    """A reconnect keeps last_event_id and retry, nothing else."""
    parser = EventStreamParser()
    assert parser.feed(b"\xef\xbb\xbfid: 1\nretry: 5\ndata: a\n\nid: 2\nevent: e\ndata: partial\n\xe2\x82") == [
        M("a", id="1")
    ]
    assert parser.close() == []
    assert (parser.last_event_id, parser.retry) == ("1", 5)
    # New stream: the BOM is stripped again, no stale bytes, event type or data leak in.
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == [M("b", id="1")]
    parser.feed(b"data: c\r")
    parser.close()
    assert parser.feed(b"\ndata: d\n\n") == [M("d", id="1")]


@pytest.mark.parametrize("before", [False, True], ids=["new-parser", "after-a-stream"])
def test_a_last_event_id_set_before_a_stream_survives_its_first_blank_line(before: bool) -> None:
    """A cursor set between streams (Settings.last_event_id, a lease's resume_after) is what the
    request resent: a comment block or retry: before the first event must not blank it or set it back."""
    parser = EventStreamParser()
    if before:
        parser.feed(b"id: 7\ndata: x\n\n")
        parser.close()
    parser.last_event_id = "42"
    assert parser.feed(b": sse-daemon stream open\n\nretry: 10\n\n") == []
    assert parser.last_event_id == "42"
    assert parser.feed(b"data: y\n\n") == [M("y", id="42")]


def test_close_of_unfinished_event_dispatches_nothing() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\ndata: b\n") == []
    assert parser.close() == []
    assert parser.last_event_id == ""


def _feed_in(parser: EventStreamParser, stream: bytes, size: int) -> list[Message | Rejection]:
    out: list[Message | Rejection] = []
    for i in range(0, len(stream), size):
        out += parser.feed(stream[i : i + size])
        assert parser._pending_size <= parser.max_line + size
        assert parser._data_size <= parser.max_event + size
    return out


def test_oversized_line_is_not_buffered() -> None:
    parser = EventStreamParser(max_line=MiB, max_event=MiB)
    stream = b"data: " + b"x" * (3 * MiB) + b"\n\ndata: after\n\n"
    out = _feed_in(parser, stream, KiB)
    assert out == [Rejection("line-too-long", MiB + 1), M("after")]
    assert parser.rejected == {"line-too-long": 1}


def test_oversized_event_is_not_buffered() -> None:
    parser = EventStreamParser(max_line=MiB, max_event=MiB)
    stream = b"data: 0123456789abcdef\n" * (3 * MiB // 23) + b"\ndata: after\n\n"
    out = _feed_in(parser, stream, KiB)
    assert len(out) == 2 and out[1] == M("after")
    assert out[0].reason == "event-too-large" and MiB < out[0].size <= MiB + 17
    assert parser.rejected == {"event-too-large": 1}


def test_long_line_in_small_chunks_is_linear() -> None:
    """Joining the pending pieces once per line, not once per read, keeps this fast."""
    parser = EventStreamParser(max_line=2 * MiB)
    payload = "y" * MiB
    out = _feed_in(parser, encode_event(payload), 16)
    assert out == [M(payload)]


def test_one_mib_payload_in_seven_byte_chunks() -> None:
    """A payload exactly at the default event limit, multi-line and chunked badly, arrives whole."""
    rng = random.Random(7)
    n_lines = MiB // 60
    text = "".join(rng.choices("abc \u00e9:", k=MiB - n_lines + 1))
    cuts = sorted(rng.sample(range(len(text) + 1), n_lines - 1))
    payload = "\n".join(text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]))
    assert len(payload) == MiB
    out = _feed_in(EventStreamParser(), encode_event(payload, id="42", event="big"), 7)
    assert out == [M(payload, "big", "42")]
    assert EventStreamParser().feed(encode_event(payload + "!")) == [Rejection("event-too-large", MiB + 1)]


# Encoder.


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "hello"}, b"data: hello\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": "a\nb\r\nc\rd"}, b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
        ({"data": "a\n"}, b"data: a\ndata: \n\n"),
        ({"data": " x"}, b"data:  x\n\n"),
        ({"data": "x", "id": "7", "event": "add", "retry": 1500}, b"retry: 1500\nevent: add\nid: 7\ndata: x\n\n"),
        ({"data": "x", "id": ""}, b"id: \ndata: x\n\n"),
        ({"data": "\u00e9\u2026", "event": "caf\u00e9"}, "event: caf\u00e9\ndata: \u00e9\u2026\n\n".encode()),
    ],
)
def test_encode_event_bytes(kwargs: dict[str, Any], expected: bytes) -> None:
    assert encode_event(**kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id": "a\nb"},
        {"id": "a\rb"},
        {"id": "a\x00b"},
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"retry": -1},
        {"id": "\ud800"},  # a lone surrogate has no UTF-8 form (UnicodeEncodeError)
    ],
)
def test_encode_event_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)


def test_encode_comment() -> None:
    assert encode_comment() == b":\n\n"
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert encode_comment("a\r\n\nb") == b": a\n:\n: b\n\n"
    assert parse([encode_comment("a\nb") + encode_event("x")])[0] == [M("x")]


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


ids = st.text().filter(lambda s: not set(s) & set("\r\n\x00"))
names = st.text().filter(lambda s: not set(s) & set("\r\n"))


@settings(max_examples=200, deadline=None)
@given(
    data=st.text(alphabet=st.one_of(st.sampled_from("\r\n :\ufeff\x00"), st.characters(exclude_categories=["Cs"]))),
    id=st.none() | ids,
    event=st.none() | names,
    retry=st.none() | st.integers(min_value=0, max_value=2**40),
    seed=st.integers(),
)
def test_encode_parse_round_trip(data: str, id: str | None, event: str | None, retry: int | None, seed: int) -> None:
    stream = encode_event(data, id=id, event=event, retry=retry)
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(4)))
    edges = [0, *cuts, len(stream)]
    out, parser = parse([stream[a:b] for a, b in zip(edges, edges[1:])])
    assert out == [M(_normalise(data), event or "message", id or "")]
    assert parser.retry == (None if retry is None else min(retry, MAX_RETRY))


# A literal, character-at-a-time transcription of the standard, as an oracle.


def reference_parse(stream: bytes) -> tuple[list[Message], str, int | None]:
    text = codecs.decode(stream, "utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines, line, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c in "\r\n":
            lines.append("".join(line))
            line = []
            if c == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
        else:
            line.append(c)
        i += 1
    out: list[Message] = []
    data, event_type, id_buffer, last_id, retry = "", "", "", "", None
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            out.append(Message(data, event_type or "message", last_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                id_buffer = value
        elif name == "retry":
            if value and all(c in "0123456789" for c in value):
                retry = min(int(value), MAX_RETRY)  # this parser's one departure: a bound
    return out, last_id, retry


pieces = st.sampled_from(
    ["data", "id", "event", "retry", ":", " ", "\r", "\n", "\r\n", "\x00", "x", "1", "\ufeff", "\u00e9", "\xff"]
)


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(pieces, max_size=60), seed=st.integers())
def test_matches_reference(parts: list[str], seed: int) -> None:
    stream = "".join(parts).encode("utf-8").replace("\xff".encode(), b"\xff")  # \xff: an invalid byte
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(6)))
    edges = [0, *cuts, len(stream)]
    out, parser = parse([stream[a:b] for a, b in zip(edges, edges[1:])])
    expected, last_id, retry = reference_parse(stream)
    assert out == expected
    assert (parser.last_event_id, parser.retry) == (last_id, retry)
