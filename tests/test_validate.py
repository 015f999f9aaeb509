"""validate.py: the one check every value passes where it enters a stream (pure vectors), and
that what passes really is encodable by every mapper and by the Redis bus's fields."""

from __future__ import annotations

import json
import math

import pytest

from sse_daemon.mapping.mappers import JsonMapper, MappingError, TextMapper, parse_template
from sse_daemon.bus.redis import entry_args, event_from_entry
from sse_daemon.events.schema import Event, parse_schema
from sse_daemon.events.validate import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_DOCUMENT_DEPTH,
    REASONS,
    InvalidValue,
    check_steps,
    check_value,
    check_values,
    load_json,
    nesting,
    show_path,
)

pytestmark = pytest.mark.reactor_free


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


# (JSON text of one value, reason or None, a piece of the message or path)
VALUE_VECTORS = [
    ('"plain"', None, ""),
    ('"caf\\u00e9 \\ud83d\\ude00"', None, ""),  # a surrogate pair is one character: fine
    ('"x\\ud800"', "invalid-unicode", "U+D800"),
    ('"\\udc00 at the start"', "invalid-unicode", "U+DC00"),
    ('{"a": ["ok", "\\udbff"]}', "invalid-unicode", ".a[1]"),
    ('{"\\ud800": 1}', "invalid-unicode", "key"),
    ('{"a": {"\\udfff": 1}}', "invalid-unicode", '.a["\\udfff"]'),
    ("1e400", "non-finite-number", "inf"),
    ("-1e400", "non-finite-number", "-inf"),
    ('{"a": {"b": [0, 1e400]}}', "non-finite-number", ".a.b[1]"),
    ("1e308", None, ""),
    ("1e-400", None, ""),  # underflows to 0.0: finite
    ("0.1", None, ""),
    (str(INT_MAX), None, ""),
    (str(INT_MIN), None, ""),
    (str(INT_MAX + 1), "number-out-of-range", "outside"),
    (str(INT_MIN - 1), "number-out-of-range", "outside"),
    ("1" + "0" * 400, "number-out-of-range", "401 digits"),
    ('{"id": ' + "9" * 5000 + "}", "number-out-of-range", ".id"),  # past CPython's own 4300-digit guard
    ("true", None, ""),
    ("null", None, ""),
    (nested(MAX_DEPTH), None, ""),
    (nested(MAX_DEPTH + 1), "too-deep", f"deeper than {MAX_DEPTH}"),
    ('{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH, None, ""),
    ('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "too-deep", ".a.a"),
]


@pytest.mark.parametrize(("text", "reason", "piece"), VALUE_VECTORS)
def test_check_value_vectors(text: str, reason: str | None, piece: str) -> None:
    value = load_json(text)
    if reason is None:
        check_value(value)
        return
    with pytest.raises(InvalidValue) as caught:
        check_value(value)
    assert caught.value.reason == reason and reason in REASONS
    assert piece in str(caught.value) + caught.value.at


@pytest.mark.parametrize(("text", "reason", "piece"), VALUE_VECTORS)
def test_check_steps_finds_what_check_value_finds(text: str, reason: str | None, piece: str) -> None:
    value = load_json(text)
    if reason is None:
        assert sum(check_steps(value, step=2)) >= 1
        return
    with pytest.raises(InvalidValue) as caught:
        list(check_steps(value, step=2))
    assert caught.value.reason == reason and piece in str(caught.value) + caught.value.at


@pytest.mark.parametrize("value", [
    [{}] * 10_000,  # one long array of empty objects: each counts
    {f"k{i}": [0] * 9 for i in range(1_000)},  # many small arrays
    [[[[[[[[]]]]]]]] * 1_500,  # nested
    list(range(10_000)),  # one long array of scalars: walked in pieces
])
def test_check_steps_walks_a_large_value_in_bounded_steps(value: object) -> None:
    """No step walks more than twice ``step`` items, however the value is shaped: a caller that takes one step
    per reactor turn is never held for the whole value (a megabyte of empty objects took about 0.3 s)."""
    steps = list(check_steps(value, step=100))
    assert len(steps) >= 90 and max(steps) <= 200, (len(steps), max(steps))
    assert list(check_steps(value, step=0))[:-1] == [], "step 0: no step before the end (check_value)"


@pytest.mark.parametrize(("text", "depth"), [
    ("", 0), ("1", 0), ("[]", 1), ('{"a":[{}]}', 3), ('["[[[[", "{{{"]', 1), ('["\\"[[["]', 1),
    ('["\\\\", [[]]]', 3), ('{"k\\\\\\"[": [1]}', 2), (nested(100_000), 100_000),
])
def test_nesting_counts_brackets_outside_strings_without_recursion(text: str, depth: int) -> None:
    assert nesting(text) == depth


def test_load_json_refuses_what_json_loads_would_choke_on() -> None:
    for deep in (nested(MAX_DOCUMENT_DEPTH + 1), nested(960), nested(100_000), '{"a":' * 100_000):
        with pytest.raises(InvalidValue) as caught:
            load_json(deep)  # json.loads: RecursionError (a 500 before), or silently accepted near 960
        assert caught.value.reason == "too-deep"
    assert load_json(nested(MAX_DOCUMENT_DEPTH)) is not None
    assert load_json('["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]') == ["[" * 68]
    for constant in ("NaN", "Infinity", "-Infinity", '{"a": [NaN]}'):
        with pytest.raises(InvalidValue) as caught:
            load_json(constant)
        assert caught.value.reason == "non-finite-number"
    assert math.isinf(load_json("1e400")), "infinity comes back; check_value refuses it where it is carried"
    with pytest.raises(ValueError):
        load_json("{not json")
    with pytest.raises(ValueError, match=r"byte order mark \(U\+FEFF\)"):
        load_json('\ufeff{"a": 1}')  # a publisher's editor saved one: said so, not "Expecting value: char 0"



@pytest.mark.parametrize("text", ['{"a":1}', ' {"a":1}', '{"a":1} ', '{"a":1}\n', '\t[1, 2]\r\n', '"x"', "[]", "0", "-1.5e3",
                                  "1 2", '{"a":1}{"b":2}', "", " ", "nul", "[1,", '{"a":1', '"\\ud800"', '{"a":"\x01"}'])
def test_load_json_reads_what_json_loads_reads_and_fails_as_it_fails(text: str) -> None:
    """The C scanner at once for a bare value; whitespace around it, or anything else, through the whole decoder."""
    try:
        expected: object = json.loads(text)
    except json.JSONDecodeError as e:
        with pytest.raises(json.JSONDecodeError) as caught:
            load_json(text)
        assert str(caught.value) == str(e)
    else:
        assert load_json(text) == expected


def test_check_values_names_the_attribute_and_the_path() -> None:
    with pytest.raises(InvalidValue) as caught:
        check_values({"ok": 1, "o": {"list": [{"deep": "\ud800"}]}})
    assert caught.value.reason == "invalid-unicode"
    assert str(caught.value).startswith("attribute 'o' at .list[0].deep: ")
    assert show_path(("a", 2, "b c", "x")) == '.a[2]["b c"].x'
    assert show_path(tuple(range(20))).startswith("...[8]")


# Every value that passes is encodable by every mapper and by the Redis bus; mapping it back gives it again.
PASSING = ['"x\\u00e9\\ud83d\\ude00"', "1e308", "-0.0", str(INT_MAX), str(INT_MIN), nested(MAX_DEPTH - 1, '{"k": null}'),
           '{"a": [true, false, null, 1.5, "s", {"b": []}]}', '"line\\nbreak\\r\\u0000nul"']


@pytest.mark.parametrize("text", PASSING)
def test_what_passes_is_encodable_everywhere(text: str) -> None:
    value = load_json(text)
    check_value(value)
    event = Event({"o": value, "s": "text"}, id="up-1", type="tick")
    schema = parse_schema("o object, s string")
    outputs = [
        JsonMapper(schema).encode(event),
        JsonMapper(schema, payload=parse_template('{"x": {{o}}, "y": "{{o}}"}'), validate_json=True).encode(event),
        TextMapper(schema, payload=parse_template("{{o}} / {{s}}")).encode(event),
    ]
    for output in outputs:
        output.encode("utf-8")  # no UnicodeEncodeError
    assert json.loads(outputs[0])["event"]["o"] == value
    back = event_from_entry("1-0", [field.decode("utf-8") for field in entry_args(event)])
    assert back.values == event.values


# Mapping: the whole message is refused, naming the element, the attribute, the path and the reason.
SCHEMA = parse_schema("param1 string, o object, d double")
MAPPER_VECTORS = [
    ('{"param1": "x\\ud800", "o": null, "d": null}', "invalid-unicode", "the payload: attribute 'param1'"),
    ('{"param1": "a", "o": {"a": 1e400}, "d": null}', "non-finite-number", "attribute 'o' at .a"),
    ('{"param1": "a", "o": -1e400, "d": null}', "non-finite-number", "attribute 'o'"),
    ('{"param1": "a", "o": null, "d": 1e400}', "non-finite-number", "attribute 'd'"),
    ('{"param1": "a", "o": null, "d": ' + "1" * 400 + "}", "number-out-of-range", "attribute 'd'"),
    ('{"param1": "a", "o": null, "d": 1' + "0" * 400 + ".0}", "non-finite-number", "attribute 'd'"),
    ('{"param1": ' + "9" * 30 + ', "o": null, "d": null}', "number-out-of-range", "attribute 'param1'"),
    ('{"param1": "a", "o": ' + nested(958) + ', "d": null}', "too-deep", "the payload: the JSON nests 959"),
    ('{"param1": "a", "o": ' + nested(40) + ', "d": null}', "too-deep", "attribute 'o' at ...[0][0]"),
    ('{"param1": "a", "o": ' + nested(100_000) + ', "d": null}', "too-deep", "the payload"),
    ('[{"param1": "a", "o": 1, "d": 1}, {"param1": "b", "o": 1, "d": 1}, {"param1": "c", "o": [1e400], "d": 1}]',
     "non-finite-number", "element 2: attribute 'o' at [0]"),
    ('{"param1": "a", "o": NaN, "d": null}', "non-finite-number", "NaN"),
]
INT_VECTORS = [  # the schema's own ranges: refused as number-out-of-range too (wrong-type before)
    ('{"n": 2147483648, "l": 1, "f": 1}', "number-out-of-range", "attribute 'n': 2147483648 is out of range for int"),
    ('{"n": 1, "l": 9223372036854775808, "f": 1}', "number-out-of-range", "out of range for long"),
    ('{"n": 1, "l": 1, "f": 1e39}', "number-out-of-range", "out of range for float"),
    ('{"n": 1.5, "l": 1, "f": 1}', "wrong-type", "expected an integer"),
]


@pytest.mark.parametrize(("payload", "reason", "message"), MAPPER_VECTORS)
def test_the_json_mapper_refuses_the_whole_message(payload: str, reason: str, message: str) -> None:
    with pytest.raises(MappingError) as caught:
        JsonMapper(SCHEMA).decode(payload)
    assert caught.value.reason == reason
    assert message in str(caught.value)


@pytest.mark.parametrize(("payload", "reason", "message"), INT_VECTORS)
def test_numbers_beyond_their_type_are_out_of_range(payload: str, reason: str, message: str) -> None:
    with pytest.raises(MappingError) as caught:
        JsonMapper(parse_schema("n int, l long, f float")).decode(payload)
    assert caught.value.reason == reason and message in str(caught.value)


def test_the_mapper_counts_events_before_mapping_any() -> None:
    mapper = JsonMapper(parse_schema("n int"))
    assert len(mapper.decode(json.dumps([{"n": i} for i in range(5)]), max_events=5)) == 5
    with pytest.raises(MappingError) as caught:
        mapper.decode(json.dumps([{"n": i} for i in range(6)]) , max_events=5)
    assert caught.value.reason == "too-many-events" and "6 events" in str(caught.value)
    assert TextMapper(parse_schema("t string")).decode("x" * 10, max_events=1) == [{"t": "x" * 10}]


def test_redis_fields_refuse_what_no_reader_could_decode() -> None:
    for values, reason in (({"o": math.inf}, "non-finite-number"), ({"o": "\ud800"}, "invalid-unicode"),
                           ({"o": load_json(nested(MAX_DEPTH + 1))}, "too-deep"), ({"o": 2**70}, "number-out-of-range")):
        with pytest.raises(InvalidValue) as caught:
            entry_args(Event(values))
        assert caught.value.reason == reason
    with pytest.raises(InvalidValue) as caught:
        entry_args(Event({"n": 1}, id="\ud800"))
    assert caught.value.reason == "invalid-unicode"
    # read back: an entry an older version wrote with Infinity, or nested too deep, is refused (the reader skips it)
    for stored, reason in (('{"o":Infinity}', "non-finite-number"), ('{"o":1e400}', "non-finite-number"),
                           ('{"o":' + nested(5000) + "}", "too-deep"), ('{"o":"\\ud800"}', "invalid-unicode")):
        with pytest.raises(InvalidValue) as caught:
            event_from_entry("1-0", ["v", stored, "g", "0"])
        assert caught.value.reason == reason and str(caught.value).startswith("entry 1-0: ")
    with pytest.raises(ValueError):
        event_from_entry("1-0", ["v", b"\xff\xfe", "g", "0"])  # bytes: the client could not decode it as UTF-8
