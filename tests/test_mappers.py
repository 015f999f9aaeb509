"""The JSON mapper and the schema's conversion rules (pure; no reactor)."""

from __future__ import annotations

import math
from typing import Sequence

import pytest
from zope.interface.verify import verifyObject

from sse_daemon.bus.memory import IBus, MemoryBus
from sse_daemon.mapping.jsonpath import parse_path
from sse_daemon.mapping.mappers import IMapper, JsonMapper, MappingError, TextMapper
from sse_daemon.events.schema import AttrType, ConversionError, Event, SchemaError, convert, parse_schema

pytestmark = pytest.mark.reactor_free

STOCK = parse_schema("symbol string, price float, volume long")


def test_interfaces_are_provided() -> None:
    assert verifyObject(IMapper, JsonMapper(STOCK))
    assert verifyObject(IMapper, TextMapper(parse_schema("s string")))
    assert verifyObject(IBus, MemoryBus())


@pytest.mark.parametrize(
    "text, names",
    [("param1 string", ("param1",)), ("(a int, b BOOL)", ("a", "b")), (" x object ,y double ", ("x", "y"))],
)
def test_parse_schema(text, names) -> None:
    assert parse_schema(text).names == names


@pytest.mark.parametrize(
    "text, message",
    [("", "at least one"), ("a", "expected '<name> <type>'"), ("a strin", "unknown type 'strin'"),
     ("a int, a int", "declared twice"), ("1a int", "not a valid attribute name"), (5, "expected a schema")],
)
def test_bad_schemas(text, message) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_schema(text)


@pytest.mark.parametrize(
    "value, attr_type, expected",
    [
        ("x", AttrType.STRING, "x"), (123, AttrType.STRING, "123"), (1.5, AttrType.STRING, "1.5"),
        (True, AttrType.STRING, "true"), (7, AttrType.INT, 7), (100.0, AttrType.INT, 100),
        (2**40, AttrType.LONG, 2**40), (55, AttrType.DOUBLE, 55.0), (55.6, AttrType.FLOAT, 55.6),
        (False, AttrType.BOOL, False), ({"a": [1]}, AttrType.OBJECT, {"a": [1]}), (None, AttrType.INT, None),
    ],
)
def test_convert(value, attr_type, expected) -> None:
    result = convert(value, attr_type)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    "value, attr_type",
    [({"a": 1}, AttrType.STRING), ("1", AttrType.INT), (True, AttrType.INT), (1.5, AttrType.LONG),
     (2**31, AttrType.INT), (2**63, AttrType.LONG), ("1.0", AttrType.DOUBLE), (True, AttrType.FLOAT),
     (1e39, AttrType.FLOAT), ("true", AttrType.BOOL), (1, AttrType.BOOL)],
)
def test_convert_rejects(value, attr_type) -> None:
    with pytest.raises(ConversionError):
        convert(value, attr_type)


@pytest.mark.parametrize("text", ["3.4028235E38", "-3.4028235e38", "3.4028235677973362e38"])
def test_a_float_takes_what_a_32_bit_float_holds_as_its_producers_write_it(text) -> None:
    """Java writes Float.MAX_VALUE as 3.4028235E38, a little above the exact value: it is a 32-bit float (it rounds
    to the largest one), and was refused as out of range. From 2**128 - 2**103 on, a value rounds to infinity."""
    assert convert(float(text), AttrType.FLOAT) == float(text)
    with pytest.raises(ConversionError, match="out of range"):
        convert(math.copysign(2.0**128 - 2.0**103, float(text)), AttrType.FLOAT)


@pytest.mark.parametrize(
    "payload",
    [
        '{"event":{"symbol":"WSO2","price":55.6,"volume":100}}',
        '{"symbol":"WSO2","price":55.6,"volume":100}',
        '{"symbol":"WSO2","price":55.6,"volume":100,"extra":"ignored"}',
    ],
)
def test_decode_wrapped_bare_and_extra_keys(payload) -> None:
    assert JsonMapper(STOCK).decode(payload) == [{"symbol": "WSO2", "price": 55.6, "volume": 100}]


def test_decode_array_of_either() -> None:
    payload = '[{"event":{"symbol":"A","price":1,"volume":1}},{"symbol":"B","price":2.5,"volume":2}]'
    assert JsonMapper(STOCK).decode(payload) == [
        {"symbol": "A", "price": 1.0, "volume": 1},
        {"symbol": "B", "price": 2.5, "volume": 2},
    ]
    assert JsonMapper(STOCK).decode("[]") == []


@pytest.mark.parametrize(
    "payload, reason, message",
    [
        ("{nope", "invalid-json", "not valid JSON"),
        ('{"symbol":"A","price":NaN,"volume":1}', "non-finite-number", "NaN"),
        ("12", "not-an-object", "expected a JSON object"),
        ('{"symbol":"A","price":1}', "missing-attribute", "attribute 'volume' is missing"),
        ('{"symbol":"A","price":"x","volume":1}', "wrong-type", "attribute 'price': expected a number"),
        ('[{"symbol":"A","price":1,"volume":1}, 5]', "not-an-object", "element 1"),
        ('[{"symbol":"A","price":1,"volume":1}, {"symbol":"B"}]', "missing-attribute", "element 1: attribute 'price'"),
    ],
)
def test_decode_rejects_whole_message(payload, reason, message) -> None:
    with pytest.raises(MappingError, match=message) as caught:
        JsonMapper(STOCK).decode(payload)
    assert caught.value.reason == reason


def run_steps(steps) -> tuple[int, object]:
    """How many steps a decode_steps generator took before its end, and what it returned."""
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return count, done.value
        count += 1


def test_decode_steps_spreads_a_large_payload_and_maps_as_decode_does() -> None:
    """The parse is one step; then the events and the values walked inside them, ``budget`` at a time, whether
    the work is many events or one large value (mapped through map.attributes too)."""
    many = '[' + ','.join(f'{{"symbol":"S{i}","price":{i}.5,"volume":{i}}}' for i in range(3000)) + ']'
    steps, rows = run_steps(JsonMapper(STOCK).decode_steps(many, 10_000, budget=500))
    assert rows == JsonMapper(STOCK).decode(many) and steps >= 3000 * 5 // 500
    schema = parse_schema("o object, n int")
    one = '{"x": {"o": [' + ",".join(["{}"] * 3000) + '], "n": 1}}'
    for mapper in (JsonMapper(schema), JsonMapper(schema, attributes={"o": parse_path("$.x.o"), "n": parse_path("$.x.n")})):
        payload = one if mapper._paths else '{"o": [' + ",".join(["{}"] * 3000) + '], "n": 1}'
        steps, rows = run_steps(mapper.decode_steps(payload, budget=500))
        assert rows == mapper.decode(payload) == [{"o": [{}] * 3000, "n": 1}]
        assert steps >= 6000 // 1000, steps  # each step walks at most about twice the budget
    assert run_steps(JsonMapper(STOCK).decode_steps('{"symbol":"A","price":1,"volume":1}'))[0] == 0, "a small one: one step"
    assert run_steps(TextMapper(parse_schema("s string")).decode_steps("x" * 100_000)) == (0, [{"s": "x" * 100_000}])


@pytest.mark.parametrize(
    "payload, reason, message",
    [
        ('[{"symbol":"A","price":1,"volume":1}, {"symbol":"B"}]', "missing-attribute", "element 1: attribute 'price'"),
        ('{"symbol":"A","price":[' + ",".join(["{}"] * 3000) + '],"volume":1}', "wrong-type", "attribute 'price': expected a number"),
        ('{"symbol":"A","price":1,"volume":1,"o":[' + ",".join(["{}"] * 3000) + '],"x":"\\ud800"}', None, ""),
    ],
)
def test_decode_steps_refuses_as_decode_does(payload, reason, message) -> None:
    mapper = JsonMapper(STOCK)
    if reason is None:
        assert run_steps(mapper.decode_steps(payload, budget=100))[1] == mapper.decode(payload)
        return
    with pytest.raises(MappingError, match=message) as caught:
        run_steps(mapper.decode_steps(payload, budget=100))
    assert caught.value.reason == reason


def test_missing_attribute_may_be_null() -> None:
    assert JsonMapper(STOCK, fail_on_missing=False).decode('{"symbol":"A"}') == [
        {"symbol": "A", "price": None, "volume": None}
    ]
    # an explicit null is accepted either way
    assert JsonMapper(STOCK).decode('{"symbol":null,"price":null,"volume":null}') == [
        {"symbol": None, "price": None, "volume": None}
    ]


def test_schema_with_an_event_attribute_is_not_unwrapped() -> None:
    schema = parse_schema("event object")
    assert JsonMapper(schema).decode('{"event":{"a":1}}') == [{"event": {"a": 1}}]


def test_encode_in_schema_order_with_null() -> None:
    event = Event({"volume": 100, "price": 50.0, "symbol": "WSO2 \"é\""})
    assert JsonMapper(STOCK).encode(event) == '{"event":{"symbol":"WSO2 \\"é\\"","price":50.0,"volume":100}}'
    assert JsonMapper(STOCK).encode(Event({"symbol": None, "price": None, "volume": 100000})) == (
        '{"event":{"symbol":null,"price":null,"volume":100000}}'
    )


def test_round_trip() -> None:
    mapper = JsonMapper(parse_schema("s string, i int, d double, b bool, o object"))
    values = {"s": "line1\nline2", "i": -3, "d": 0.1, "b": True, "o": {"k": [1, None]}}
    assert mapper.decode(mapper.encode(Event(values))) == [values]


def test_bus_delivers_in_order_and_isolates_failures() -> None:
    bus = MemoryBus()
    seen: list[object] = []

    def broken(events: Sequence[Event]) -> None:
        raise RuntimeError("boom")

    bus.subscribe("S", broken)
    subscription = bus.subscribe("S", lambda events: seen.extend(e.values["n"] for e in events))
    bus.subscribe("T", lambda events: seen.append("wrong stream"))
    bus.publish("S", [Event({"n": 1}), Event({"n": 2})])
    assert seen == [1, 2]
    assert bus.failures["S"] == 1, "one call for the publish's two events"
    subscription.cancel()
    subscription.cancel()
    bus.publish("S", [Event({"n": 3})])
    assert seen == [1, 2]
    assert bus.subscriber_count("S") == 1
