"""The original mapper's options (map.enclosing.element, map.attributes.<attr>, map.payload,
map.validate.json, map.type text) in both directions, and the raw sink format (sse.format: raw)."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.mapping.jsonpath import MISSING, JsonPathError, parse_path
from sse_daemon.mapping.mappers import IMapper, JsonMapper, MapperConfigError, MappingError, MappingOptions, TextMapper, make_mapper, parse_template
from sse_daemon.bus.memory import MemoryBus
from sse_daemon.events.schema import Event, parse_schema
from sse_daemon.connectors.sink import SseSink, SseSinkService
from sse_daemon.config.statements import load_statements

from .conftest import raw_request, sleep, subscribe, wait_for

STOCK = parse_schema("symbol string, price float, volume long")


def json_mapper(**options) -> JsonMapper:
    return JsonMapper(STOCK, **options)


# --------------------------------------------------------------------------- JSONPath subset


@pytest.mark.reactor_free
@pytest.mark.parametrize(
    "text, steps",
    [
        ("$", ()),
        ("$.portfolio", ("portfolio",)),
        ("$.portfolio.stock", ("portfolio", "stock")),
        ("portfolio.stock", ("portfolio", "stock")),  # $ is optional, as in the original's paths
        ("$.stocks[1].price", ("stocks", 1, "price")),
        ("$[0]", (0,)),
        ("$['first name'].x-y", ("first name", "x-y")),
        ('$["a.b"]', ("a.b",)),
    ],
)
def test_json_paths(text: str, steps: tuple) -> None:
    assert parse_path(text).steps == steps
    assert parse_path(text).text == text


@pytest.mark.reactor_free
@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected a JSONPath such as '$.portfolio.stock' or 'stock.price[0]', found ''"),
        ("$.a..b", "expected '.name', '[index]' or ['name'] at '..b' in '$.a..b' (only dotted names and array indexes are supported)"),
        ("$.a[*]", "expected '.name', '[index]' or ['name'] at '[*]' in '$.a[*]' (only dotted names and array indexes are supported)"),
        ("$..a", "expected '.name', '[index]' or ['name'] at '..a' in '$..a' (only dotted names and array indexes are supported)"),
        ("1abc", "expected a JSONPath starting with '$' or a name, found '1abc'"),
    ],
)
def test_json_paths_outside_the_subset(text: str, message: str) -> None:
    with pytest.raises(JsonPathError) as caught:
        parse_path(text)
    assert str(caught.value) == message


@pytest.mark.reactor_free
def test_json_path_find() -> None:
    document = {"a": [{"b": 1}, {"b": None}], "c": {"d": "x"}}
    assert parse_path("$.a[0].b").find(document) == 1
    assert parse_path("$.a[1].b").find(document) is None  # a JSON null is found, and is null
    assert parse_path("$.a[2].b").find(document) is MISSING
    assert parse_path("$.c.d.e").find(document) is MISSING
    assert parse_path("$.c[0]").find(document) is MISSING
    assert parse_path("$").find(document) is document
    assert parse_path("$.x") == parse_path("x")  # equal paths, whatever their spelling


# --------------------------------------------------------------------------- source side (decode)


@pytest.mark.reactor_free
def test_enclosing_element_selects_one_event_or_an_array() -> None:
    mapper = json_mapper(enclosing=parse_path("$.portfolio"))
    one = '{"portfolio": {"event": {"symbol": "A", "price": 1.5, "volume": 1}}, "other": 1}'
    many = '{"portfolio": [{"symbol": "A", "price": 1, "volume": 1}, {"event": {"symbol": "B", "price": 2, "volume": 2}}]}'
    assert mapper.decode(one) == [{"symbol": "A", "price": 1.5, "volume": 1}]
    assert mapper.decode(many) == [{"symbol": "A", "price": 1.0, "volume": 1}, {"symbol": "B", "price": 2.0, "volume": 2}]
    nested = json_mapper(enclosing=parse_path("$.data[1].stocks"))
    assert nested.decode('{"data": [{}, {"stocks": [{"symbol": "C", "price": 3, "volume": 3}]}]}') == [
        {"symbol": "C", "price": 3.0, "volume": 3}
    ]
    assert json_mapper(enclosing=parse_path("$")).decode('{"symbol": "D", "price": 4, "volume": 4}') == [
        {"symbol": "D", "price": 4.0, "volume": 4}
    ]


@pytest.mark.reactor_free
def test_a_message_without_the_enclosing_element_is_rejected() -> None:
    with pytest.raises(MappingError) as caught:
        json_mapper(enclosing=parse_path("$.portfolio")).decode('{"portfolo": {}}')
    assert (caught.value.reason, str(caught.value)) == ("no-enclosing-element", "the enclosing element $.portfolio is not in the payload")


PORTFOLIO_PATHS = {"symbol": parse_path("stock.company.symbol"), "price": parse_path("$.stock.price"), "volume": parse_path("stock.volume")}


@pytest.mark.reactor_free
def test_attribute_paths_over_one_event_and_an_array() -> None:
    """The original's test 11: enclosing element plus a path per attribute, for an object and an array."""
    mapper = json_mapper(enclosing=parse_path("portfolio"), attributes=PORTFOLIO_PATHS)
    single = '{"portfolio": {"stock": {"volume": 100, "company": {"symbol": "WSO2"}, "price": 56.6}}}'
    array = ('{"portfolio": [{"stock": {"volume": 200, "company": {"symbol": "IBM"}, "price": 57}},'
             ' {"stock": {"volume": 300, "company": {"symbol": "XYZ"}, "price": 58.5}}]}')
    assert mapper.decode(single) == [{"symbol": "WSO2", "price": 56.6, "volume": 100}]
    assert mapper.decode(array) == [
        {"symbol": "IBM", "price": 57.0, "volume": 200},
        {"symbol": "XYZ", "price": 58.5, "volume": 300},
    ]


@pytest.mark.reactor_free
def test_attribute_paths_missing_values_reject_or_become_null() -> None:
    payload = '{"portfolio": [{"stock": {"company": {"symbol": "A"}, "price": null, "volume": 1}}, {"stock": {"company": {"symbol": "B"}, "volume": 2}}]}'
    strict = json_mapper(enclosing=parse_path("$.portfolio"), attributes=PORTFOLIO_PATHS)
    with pytest.raises(MappingError) as caught:
        strict.decode(payload)
    assert (caught.value.reason, str(caught.value)) == ("missing-attribute", "element 1: attribute 'price' is missing (nothing at $.stock.price)")
    lenient = json_mapper(enclosing=parse_path("$.portfolio"), attributes=PORTFOLIO_PATHS, fail_on_missing=False)
    assert lenient.decode(payload) == [
        {"symbol": "A", "price": None, "volume": 1},  # a JSON null is a null, in both modes
        {"symbol": "B", "price": None, "volume": 2},
    ]


@pytest.mark.reactor_free
def test_attributes_without_a_path_are_read_from_their_name_and_types_follow_the_usual_rules() -> None:
    mapper = json_mapper(attributes={"symbol": parse_path("$.name[0]")})
    assert mapper.decode('{"name": ["X", "Y"], "price": 1, "volume": 2}') == [{"symbol": "X", "price": 1.0, "volume": 2}]
    with pytest.raises(MappingError) as caught:
        mapper.decode('[{"name": ["X"], "price": 1, "volume": 2}, {"name": ["Y"], "price": "1", "volume": 2}]')
    assert str(caught.value) == "element 1: attribute 'price' (at $.price): expected a number (float), found a string '1'"


@pytest.mark.reactor_free
def test_text_mapper_in_and_out() -> None:
    mapper = TextMapper(parse_schema("line string"))
    assert verifyObject(IMapper, mapper) and mapper.content_type == "text/plain; charset=utf-8"
    assert mapper.decode('{"not": "parsed"}\nsecond line') == [{"line": '{"not": "parsed"}\nsecond line'}]
    assert mapper.encode(Event({"line": "hello"})) == "hello"
    assert TextMapper(parse_schema("n int")).encode(Event({"n": 7})) == "7"
    assert TextMapper(parse_schema("n int")).encode(Event({"n": None})) == "null"
    template = TextMapper(STOCK, payload=parse_template('{{symbol}} "costs" {{price}} ({{volume}})'))
    assert template.encode(Event({"symbol": 'W"S', "price": 50.0, "volume": None})) == 'W"S "costs" 50.0 (null)'


# --------------------------------------------------------------------------- sink side (encode)

EVENT = Event({"symbol": "WSO2", "price": 55.6, "volume": 100})


@pytest.mark.reactor_free
def test_output_enclosing_element_wraps_the_event() -> None:
    """The original's TC3."""
    assert json_mapper(enclosing=parse_path("$.portfolio.company")).encode(EVENT) == (
        '{"portfolio":{"company":{"event":{"symbol":"WSO2","price":55.6,"volume":100}}}}'
    )
    assert json_mapper(enclosing=parse_path("$")).encode(EVENT) == '{"event":{"symbol":"WSO2","price":55.6,"volume":100}}'


@pytest.mark.reactor_free
def test_payload_template_renders_json_values_and_string_content() -> None:
    template = parse_template('{"stock": "{{symbol}}", "price": {{price}}, "volume": {{ volume }}, "note": "{{symbol}} at {{price}}"}')
    mapper = json_mapper(payload=template)
    assert mapper.encode(Event({"symbol": "WSO2", "price": 50.0, "volume": 100000})) == (
        '{"stock": "WSO2", "price": 50.0, "volume": 100000, "note": "WSO2 at 50.0"}'
    )
    tricky = mapper.encode(Event({"symbol": 'A "quoted"\nname', "price": None, "volume": None}))
    assert tricky == '{"stock": "A \\"quoted\\"\\nname", "price": null, "volume": null, "note": "A \\"quoted\\"\\nname at null"}'
    assert json.loads(tricky)["stock"] == 'A "quoted"\nname'  # a quoted slot keeps the JSON valid
    unquoted_string = json_mapper(payload=parse_template("[{{symbol}}]")).encode(EVENT)
    assert unquoted_string == '["WSO2"]'  # an unquoted slot takes the value as JSON


@pytest.mark.reactor_free
def test_payload_template_keeps_its_text_inside_the_enclosing_element() -> None:
    """The original's TC5: the template's own whitespace is kept."""
    template = parse_template('{\n  "name": "{{symbol}}",\n  "v": {{volume}}\n}')
    mapper = json_mapper(payload=template, enclosing=parse_path("$.portfolio"))
    assert mapper.encode(EVENT) == '{"portfolio":{\n  "name": "WSO2",\n  "v": 100\n}}'


@pytest.mark.reactor_free
def test_object_attributes_in_templates_and_default_output() -> None:
    schema = parse_schema("name string, data object")
    event = Event({"name": "n", "data": {"a": [1, 2], "b": None}})
    assert JsonMapper(schema).encode(event) == '{"event":{"name":"n","data":{"a":[1,2],"b":null}}}'
    assert JsonMapper(schema, payload=parse_template('{"d": {{data}}, "t": "{{data}}"}')).encode(event) == (
        '{"d": {"a":[1,2],"b":null}, "t": "{\\"a\\":[1,2],\\"b\\":null}"}'
    )


@pytest.mark.reactor_free
def test_validate_json_drops_an_invalid_output() -> None:
    """The original's TC6 and TC7: a single-quoted template is refused when validated, sent when not."""
    template = parse_template("{'symbol': '{{symbol}}'}")
    # not in a JSON string literal (single quotes are not JSON), so the slot takes the JSON value
    assert json_mapper(payload=template).encode(EVENT) == "{'symbol': '\"WSO2\"'}"
    with pytest.raises(MappingError) as caught:
        json_mapper(payload=template, validate_json=True).encode(EVENT)
    assert caught.value.reason == "invalid-json"
    assert str(caught.value).startswith("the output is not valid JSON (Expecting property name enclosed in double quotes")
    good = parse_template('{"symbol": "{{symbol}}"}')
    assert json_mapper(payload=good, validate_json=True).encode(EVENT) == '{"symbol": "WSO2"}'
    text = TextMapper(parse_schema("doc string"), payload=parse_template("{{doc}}"), validate_json=True)
    assert text.encode(Event({"doc": "[1]"})) == "[1]"
    with pytest.raises(MappingError):
        text.encode(Event({"doc": "not json"}))


@pytest.mark.reactor_free
def test_template_syntax() -> None:
    assert parse_template("no placeholders").parts == ("no placeholders",)
    assert [s.name for s in parse_template("{{a}}{{ b }}").slots] == ["a", "b"]
    assert parse_template('{"a": {"b": 1}}').parts == ('{"a": {"b": 1}}',)  # "}}" alone is JSON
    with pytest.raises(ValueError, match=re.escape("'{{' is not closed by '}}' at '{{b'")):
        parse_template("{{a}} {{b")


@pytest.mark.reactor_free
def test_make_mapper_reports_every_problem_with_its_option() -> None:
    options = mapping_options(
        map_type="text",
        payload=parse_template("{{symbl}} {{x}}"),
        enclosing=parse_path("$.a"),
        attributes={"volum": parse_path("$.v")},
    )
    with pytest.raises(MapperConfigError) as caught:
        make_mapper(options, STOCK, "sink")
    assert caught.value.problems == [
        ("map.payload", "unknown attribute {{symbl}} in the template; did you mean 'symbol'?"),
        ("map.payload", "unknown attribute {{x}} in the template; expected one of: symbol, price, volume"),
        ("map.attributes.volum", "unknown attribute 'volum'; did you mean 'volume'?"),
        ("map.enclosing.element", "applies only with map.type json"),
        ("map.attributes.volum", "applies only with map.type json"),
    ]
    assert isinstance(make_mapper(mapping_options(map_type="json"), STOCK), JsonMapper)
    assert isinstance(make_mapper(mapping_options(map_type="text"), parse_schema("s string"), "source"), TextMapper)


def mapping_options(**given: Any) -> MappingOptions:
    """What the map.* options give a mapper, with the tables' defaults for the rest."""
    defaults: dict[str, Any] = {"map_type": "json", "enclosing": None, "attributes": {}, "payload": None,
                                "validate_json": False, "fail_on_missing": True}
    return MappingOptions(**{**defaults, **given})


# --------------------------------------------------------------------------- configuration

MAPPED = """\
sources:
  In:
    type: http
    schema: "symbol string, price float, volume long"
    receiver.url: http://127.0.0.1:0/in
    map.enclosing.element: $.portfolio
    map.attributes.symbol: stock.company.symbol
    map.attributes.price: $.stock.price
sinks:
  Out:
    type: sse-server
    stream: In
    server.port: 0
    server.host: 127.0.0.1
    map.payload: '{"s": "{{symbol}}"}'
    map.enclosing.element: $.wrapped
    map.validate.json: 'true'
    sse.format: raw
  Log:
    type: log
    stream: In
    map.type: text
    map.payload: "{{symbol}}: {{price}}"
"""


@pytest.mark.reactor_free
def test_mapping_options_are_read_and_defaulted() -> None:
    config = validate(load_yaml(MAPPED, "conf.yaml"))
    source = config.sources[0]
    assert source.options.map_enclosing_element == parse_path("$.portfolio")
    assert source.options.map_attributes == {"symbol": parse_path("stock.company.symbol"), "price": parse_path("stock.price")}
    out, log = config.sinks
    assert (out.options.map_payload.text, out.options.map_enclosing_element.steps, out.options.map_validate_json, out.options.sse_format) == (
        '{"s": "{{symbol}}"}', ("wrapped",), True, "raw")
    assert (log.options.map_type, log.options.map_enclosing_element, log.options.map_validate_json) == ("text", None, False)
    plain = validate(load_yaml("sources:\n  In: {type: http, schema: 'a string', receiver.url: 'http://x:1/'}\n"
                               "sinks:\n  Out: {type: sse-server, stream: In, server.port: 2}\n", "conf.yaml"))
    source, sink = plain.sources[0], plain.sinks[0]
    assert (source.options.map_type, source.options.map_enclosing_element, source.options.map_attributes, source.options.map_fail_on_missing_attribute) == (
        "json", None, {}, True)
    assert (sink.options.map_payload, sink.options.map_enclosing_element, sink.options.map_validate_json, sink.options.sse_format) == (None, None, False, "sse")


@pytest.mark.reactor_free
def test_mapping_options_in_statements_equal_the_yaml_form() -> None:
    statements = """\
CREATE SOURCE In WITH (type='http', receiver.url='http://127.0.0.1:0/in', map.enclosing.element='$.portfolio',
    map.attributes.symbol='stock.company.symbol', map.attributes.price='$.stock.price') (symbol string, price float, volume long);
CREATE SINK Out WITH (type='sse-server', stream='In', server.port=0, server.host='127.0.0.1', map.payload='{"s": "{{symbol}}"}',
    map.enclosing.element='$.wrapped', map.validate.json='true', sse.format='raw');
CREATE SINK Log WITH (type='log', stream='In', map.type='text', map.payload="{{symbol}}: {{price}}");
"""
    assert validate(load_statements(statements, "conf.sql")) == validate(load_yaml(MAPPED, "conf.yaml"))


SINK_WITH = "sinks:\n  S:\n    type: {type}\n    schema: \"{schema}\"\n    server.port: 1\n{options}"
SOURCE_WITH = "sources:\n  S:\n    type: {type}\n    schema: \"{schema}\"\n    receiver.url: http://127.0.0.1:1/\n{options}"


def mapping_errors(template: str, schema: str = "symbol string, price float", type: str = "", **options: str) -> list[str]:
    text = template.format(
        type=type or ("sse-server" if template is SINK_WITH else "http"), schema=schema,
        options="".join(f"    {k}: {v}\n" for k, v in options.items()),
    )
    with pytest.raises(ConfigError) as caught:
        validate(load_yaml(text, "conf.yaml"))
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.reactor_free
@pytest.mark.parametrize(
    "template, schema, type, options, expected",
    [
        (SOURCE_WITH, "symbol string, price float", "", {"map.attributes.prise": "$.p"},
         "conf.yaml:6: source 'S': option 'map.attributes.prise': unknown attribute 'prise'; did you mean 'price'?"),
        (SOURCE_WITH, "symbol string, price float", "sse", {"map.attributes.symbol": "$.a..b"},
         "conf.yaml:6: source 'S': option 'map.attributes.symbol': expected '.name', '[index]' or ['name'] at '..b' in '$.a..b' (only dotted names and array indexes are supported)"),
        (SOURCE_WITH, "symbol string, price float", "", {"map.attribute.symbol": "$.a"},
         "conf.yaml:6: source 'S': option 'map.attribute.symbol': unknown option 'map.attribute.symbol'; did you mean 'map.attributes.<attr>'?"),
        (SOURCE_WITH, "symbol string, price float", "", {"map.attributes.": "$.a"},
         "conf.yaml:6: source 'S': option 'map.attributes.': unknown option 'map.attributes.'; did you mean 'map.attributes.<attr>'?"),
        (SOURCE_WITH, "symbol string, price float", "", {"map.type": "text"},
         "conf.yaml:6: source 'S': option 'map.type': map.type text maps each message to one string attribute; the schema must be exactly one, found (symbol string, price float)"),
        (SOURCE_WITH, "n int", "sse", {"map.type": "text"},
         "conf.yaml:6: source 'S': option 'map.type': map.type text maps each message to one string attribute; the schema must be exactly one, found (n int)"),
        (SOURCE_WITH, "line string", "", {"map.type": "text", "map.enclosing.element": "$.a"},
         "conf.yaml:7: source 'S': option 'map.enclosing.element': applies only with map.type json"),
        (SOURCE_WITH, "line string", "", {"map.type": "xml"},
         "conf.yaml:6: source 'S': option 'map.type': expected one of json, text, found 'xml'"),
        (SOURCE_WITH, "line string", "", {"map.payload": "x"},
         "conf.yaml:6: source 'S': option 'map.payload': unknown option 'map.payload'"),
        (SINK_WITH, "symbol string, price float", "", {"map.payload": "'{\"s\": {{symbl}}}'"},
         "conf.yaml:6: sink 'S': option 'map.payload': unknown attribute {{symbl}} in the template; did you mean 'symbol'?"),
        (SINK_WITH, "symbol string, price float", "", {"map.payload": "'{{symbol} x'"},
         "conf.yaml:6: sink 'S': option 'map.payload': '{{' is not closed by '}}' at '{{symbol} x'"),
        (SINK_WITH, "symbol string, price float", "", {"map.enclosing.element": "$.a[0]"},
         "conf.yaml:6: sink 'S': option 'map.enclosing.element': expected a path of names such as '$.portfolio.company' (an output cannot be wrapped in an array index), found '$.a[0]'"),
        (SINK_WITH, "symbol string, price float", "", {"map.attributes.symbol": "$.a"},
         "conf.yaml:6: sink 'S': option 'map.attributes.symbol': unknown option 'map.attributes.symbol'"),
        (SINK_WITH, "symbol string, price float", "", {"map.type": "text"},
         "conf.yaml:6: sink 'S': option 'map.type': map.type text writes the schema's only attribute, or a map.payload template; found (symbol string, price float) and no map.payload"),
        (SINK_WITH, "symbol string", "", {"map.type": "text", "map.enclosing.element": "$.a"},
         "conf.yaml:7: sink 'S': option 'map.enclosing.element': applies only with map.type json"),
        (SINK_WITH, "symbol string", "", {"map.validate.json": "maybe"},
         "conf.yaml:6: sink 'S': option 'map.validate.json': expected true or false, found 'maybe'"),
        (SINK_WITH, "symbol string", "", {"sse.format": "json"},
         "conf.yaml:6: sink 'S': option 'sse.format': expected one of sse, raw, found 'json'"),
        ("sinks:\n  S:\n    type: log\n    schema: \"{schema}\"\n{options}", "symbol string", "", {"sse.format": "raw"},
         "conf.yaml:5: sink 'S': option 'sse.format': unknown option 'sse.format'"),
    ],
)
def test_mapping_option_errors(template: str, schema: str, type: str, options: dict, expected: str) -> None:
    found = mapping_errors(template, schema, type, **options)
    assert any(line.startswith(expected) for line in found), found


@pytest.mark.reactor_free
def test_mapping_errors_in_statements_have_their_line() -> None:
    text = textwrap.dedent("""\
        CREATE SINK S WITH (type='log',
            map.payload='{{nme}}')
            (name string);
        """)
    with pytest.raises(ConfigError) as caught:
        validate(load_statements(text, "conf.sql"))
    assert [str(i) for i in caught.value.issues] == [
        "conf.sql:2: sink 'S': option 'map.payload': unknown attribute {{nme}} in the template; did you mean 'name'?"
    ]


# --------------------------------------------------------------------------- over real sockets

SOCKETS = """\
streams:
  Quotes: "symbol string, price float, volume long"
sources:
  In:
    type: http
    stream: Quotes
    receiver.url: http://127.0.0.1:0/in
    map.enclosing.element: $.portfolio
    map.attributes.symbol: stock.company.symbol
    map.attributes.price: stock.price
    map.attributes.volume: stock.volume
  Lines:
    type: http
    schema: "line string"
    receiver.url: http://127.0.0.1:0/lines
    map.type: text
sinks:
  Raw:
    type: sse-server
    stream: Quotes
    server.host: 127.0.0.1
    server.port: 0
    sse.format: raw
    heartbeat.interval: 0.05
    headers: "'X-Team:sse'"
  Wrapped:
    type: sse-server
    stream: Quotes
    server.host: 127.0.0.1
    server.port: 0
    map.enclosing.element: $.portfolio.company
    map.payload: '{"name": "{{symbol}}", "volume": {{volume}}}'
  RawText:
    type: sse-server
    stream: Lines
    server.host: 127.0.0.1
    server.port: 0
    sse.format: raw
    map.type: text
  Checked:
    type: sse-server
    stream: Lines
    server.host: 127.0.0.1
    server.port: 0
    map.type: text
    map.validate.json: true
  CheckedLog:
    type: log
    stream: Lines
    map.type: text
    map.payload: "{{line}}"
    map.validate.json: true
"""


async def post(port: int, path: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    client = await raw_request(port, b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: %s\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (path.encode(), content_type, len(body), body))
    answer = await client.wait_for(b"}")
    await client.close()
    return answer


async def get(port: int, path: str):
    client = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await client.wait_for(b"\r\n\r\n")
    return client


@pytest_twisted.ensureDeferred
async def test_raw_format_writes_bare_chunks_with_the_mappers_content_type(daemon) -> None:
    """sse.format raw is what the original sink wrote: one chunk per payload, no SSE framing, no heartbeat."""
    service = await daemon(SOCKETS)
    port = service.port_of("In")
    raw = await get(port, "/Raw")
    raw_text = await get(port, "/RawText")
    wrapped = await subscribe(port, "/Wrapped")
    body = (b'{"portfolio": [{"stock": {"company": {"symbol": "WSO2"}, "price": 55.6, "volume": 100}},'
            b' {"stock": {"company": {"symbol": "IBM"}, "price": 75, "volume": 200}}]}')
    assert b'"accepted": 2' in await post(port, "/in", body)
    assert b'"accepted": 1' in await post(port, "/lines", b"just a line", b"text/plain")
    first = b'{"event":{"symbol":"WSO2","price":55.6,"volume":100}}'
    second = b'{"event":{"symbol":"IBM","price":75.0,"volume":200}}'
    expected_body = b"%x\r\n%s\r\n%x\r\n%s\r\n" % (len(first), first, len(second), second)
    await raw.wait_for(expected_body)
    await raw_text.wait_for(b"b\r\njust a line\r\n")
    await wrapped.wait_for(b'data: {"portfolio":{"company":{"name": "IBM", "volume": 200}}}\n\n')
    assert b'data: {"portfolio":{"company":{"name": "WSO2", "volume": 100}}}\n\n' in wrapped.received
    await sleep(0.2)  # four heartbeat intervals: none may arrive on a raw stream
    head, _, rest = bytes(raw.received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/json" in head and b"X-Team: sse" in head and b"Transfer-Encoding: chunked" in head
    assert rest == expected_body  # nothing else: no opening comment, no ids, no heartbeat
    text_head, _, text_rest = bytes(raw_text.received).partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain; charset=utf-8" in text_head and text_rest == b"b\r\njust a line\r\n"
    assert service.sinks["Raw"].sink.counters["events_in"] == 2 and len(service.sinks["Raw"].sink.history) == 0
    for client in (raw, raw_text, wrapped):
        await client.close()



@pytest_twisted.ensureDeferred
async def test_a_raw_sink_writes_no_empty_chunk_which_would_end_its_response(daemon) -> None:
    """A chunk of no bytes is chunked encoding's last chunk: an empty text payload written as one ended every raw
    subscriber's response (and the next payload was garbage after it). It is not sent: counted and logged, as
    any event a sink cannot write."""
    service = await daemon(SOCKETS)
    port = service.port_of("Lines")
    raw_text = await get(port, "/RawText")
    for line in (b"", b"next"):
        assert b'"accepted": 1' in await post(port, "/lines", line, b"text/plain")
    await raw_text.wait_for(b"4\r\nnext\r\n")
    assert bytes(raw_text.received).partition(b"\r\n\r\n")[2] == b"4\r\nnext\r\n"
    assert service.sinks["RawText"].sink.counters["events_unmapped"] == 1
    await raw_text.close()


@pytest.mark.reactor_free
def test_a_raw_sink_starts_no_heartbeat() -> None:
    config = validate(load_yaml(SOCKETS, "conf.yaml"))
    raw = next(c for c in config.sinks if c.name == "Raw")
    clock = Clock()
    sink = SseSink(raw, make_mapper(raw.options.mapping, config.streams["Quotes"].schema), clock)
    service = SseSinkService(sink, MemoryBus(), "Quotes", clock)
    service.startService()
    assert sink.raw and not clock.getDelayedCalls()
    service.stopService()


@pytest_twisted.ensureDeferred
async def test_validate_json_drops_and_counts_instead_of_sending(daemon) -> None:
    service = await daemon(SOCKETS)
    port = service.port_of("Lines")
    checked = await subscribe(port, "/Checked")
    with capturedLogs() as events:
        for line in (b'{"ok": 1}', b"not json", b"[2]"):
            assert b'"accepted": 1' in await post(port, "/lines", line, b"text/plain")
    await checked.wait_for(b"data: [2]\n\n")
    assert re.findall(rb"data: (.*)\n", checked.received) == [b'{"ok": 1}', b"[2]"]
    assert service.sinks["Checked"].sink.counters["events_unmapped"] == 1
    assert service.sinks["CheckedLog"].counters["events_unmapped"] == 1
    logged = [e["payload"] for e in events if e.get("sink") == "CheckedLog" and "payload" in e]
    assert logged == ['{"ok": 1}', "[2]"]
    dropped = [e for e in events if e.get("log_format", "").startswith("sink {sink} dropped an event")]
    assert {e["sink"] for e in dropped} == {"Checked", "CheckedLog"}
    assert all("the output is not valid JSON" in e["reason"] for e in dropped)
    await checked.close()


@pytest_twisted.ensureDeferred
async def test_a_text_source_reads_a_text_sink(daemon) -> None:
    """map.type text end to end: the sink writes the attribute as data, the SSE source maps data to it."""
    upstream = await daemon("""\
        sources:
          Lines: {type: http, schema: "line string", receiver.url: "http://127.0.0.1:0/lines", map.type: text}
        sinks:
          Out: {type: sse-server, stream: Lines, server.host: 127.0.0.1, server.port: 0, map.type: text}
        """)
    port = upstream.port_of("Out")
    downstream = await daemon(f"""\
        sources:
          Back: {{type: sse, schema: "text string", receiver.url: "http://127.0.0.1:{port}/Out", map.type: text}}
        sinks:
          Shown: {{type: log, stream: Back}}
        """)
    received: list[Event] = []
    downstream.bus.subscribe("Back", received.extend)
    await wait_for(lambda: upstream.sinks["Out"].sink.subscribers, what="the source to subscribe")
    assert b'"accepted": 1' in await post(port, "/lines", b"two\nlines", b"text/plain")
    await wait_for(lambda: received, what="the line at the source")
    assert [e.values for e in received] == [{"text": "two\nlines"}]


@pytest.mark.reactor_free
@pytest.mark.parametrize("value", ["x", "é\u2028\"\\\n\x00\t", "\U0001F600", "", 0, -5, 2**62, -(2**63), 1.5, -0.0, 1e-300,
                                   1e300, 0.1 + 0.2, True, False, None, {"a": [1, "b", None]}, [1, 2.5, {"c": True}]])
def test_the_fast_encoding_of_a_value_is_the_encoders_byte_for_byte(value: object) -> None:
    from sse_daemon.mapping.mappers import _ENCODE, _fast_json

    assert _fast_json(value) == _ENCODE(value)
