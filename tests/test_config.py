"""Configuration: every error names file, line, connector and option, all at once."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.load import load_files
from sse_daemon.config.statements import load_statements
from sse_daemon.config.validate import validate
from sse_daemon.config.values import OptionError, parse_headers
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.events.schema import AttrType

pytestmark = pytest.mark.reactor_free

GOOD = """\
streams:
  Readings: "sensor string, value double"
sources:
  In:
    type: http
    stream: Readings
    receiver.url: http://127.0.0.1:8020/publish
sinks:
  Out:
    type: sse-server
    stream: Readings
    server.port: '8020'
    server.host: 127.0.0.1
  Other:
    type: sse-server
    server.port: 8020
    server.host: 127.0.0.1
    server.path: /other/
    schema: "sensor string"
  Logged:
    type: log
    stream: Readings
routes:
  - {from: Readings, to: Other}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(load_yaml(textwrap.dedent(text), "conf.yaml"))
    return [str(issue) for issue in caught.value.issues]


def test_good_config_is_typed_and_defaulted() -> None:
    config = validate(load_yaml(GOOD, "good.yaml"))
    out = next(c for c in config.sinks if c.name == "Out")
    assert out.options.server_port == 8020  # the spec's quoted number
    assert out.options.server_path == "/Out"  # default path is the sink's name
    assert out.options.heartbeat_interval == 15.0
    assert out.options.history_size == 1000
    assert out.options.worker_count == 1
    other = next(c for c in config.sinks if c.name == "Other")
    assert other.options.server_path == "/other"
    assert other.stream == "Other"
    assert config.streams["Other"].schema.names == ("sensor",)
    assert config.streams["Readings"].schema.attributes[1].type is AttrType.DOUBLE
    assert [(r.source, r.target) for r in config.routes] == [("Readings", "Other")]
    ingest = config.sources[0]
    assert (ingest.options.receiver_url.host, ingest.options.receiver_url.port, ingest.options.receiver_url.path) == ("127.0.0.1", 8020, "/publish")
    summary = config.summary()
    assert "Out: sse-server on 127.0.0.1:8020/Out <- stream Readings" in summary
    assert "Readings -> Other" in summary


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load_files([str(root / "etc" / "sse-daemon.yaml")])
    sink = next(c for c in config.sinks if c.name == "PublishStream")
    assert (sink.options.server_port, sink.options.server_path) == (8020, "/testsse")


def test_all_errors_reported_together_with_file_line_connector_option() -> None:
    found = errors("""\
        sources:
          In:
            type: http
            schema: "a string"
            receiver.url: ftp://nowhere
            max.body.sise: 3
        sinks:
          S:
            type: sse-server
            schema: "a string"
            server.port: abc
            worker.count: 0
          T:
            type: sse-servr
        """)
    assert found == [
        "conf.yaml:5: source 'In': option 'receiver.url': expected an http:// or https:// URL, found 'ftp://nowhere'",
        "conf.yaml:6: source 'In': option 'max.body.sise': unknown option 'max.body.sise'; did you mean 'max.body.size'?",
        "conf.yaml:11: sink 'S': option 'server.port': expected an integer, found 'abc'",
        "conf.yaml:12: sink 'S': option 'worker.count': expected an integer from 1 to 64, found 0",
        "conf.yaml:14: sink 'T': option 'type': unknown sink type 'sse-servr'; did you mean 'sse-server'?",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n", r"conf.yaml:2: sink 'S': option 'server.port': 'server.port' is required"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a strin'\n    server.port: 1\n", r"conf.yaml:4: sink 'S': option 'schema': attribute 'a': unknown type 'strin'"),
        ("sinks:\n  S:\n    type: sse-server\n    server.port: 1\n", r"conf.yaml:2: sink 'S': stream 'S' has no schema"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 70000\n", r"conf.yaml:5: sink 'S': option 'server.port': expected an integer from 0 to 65535, found 70000"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 1\n    heartbeat.interval: -1\n", r"conf.yaml:6: .*'heartbeat.interval': expected a number of at least 0, found -1"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 1\n    heartbeat.interval: .inf\n", r"conf.yaml:6: .*'heartbeat.interval': expected a finite number \(0 turns a limit or a deadline off\), found inf"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 1\n    server.head.timeout: 'inf'\n", r"conf.yaml:6: .*'server.head.timeout': expected a finite number"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 1\n    flush.interval: 5\n", r"conf.yaml:6: .*'flush.interval': expected at most 1 second"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 1\n    server.port: 2\n", r"conf.yaml:6: sink 'S': 'server.port' is given twice \(first on line 5\)"),
        ("sinks:\n  S:\n    type: http\n", r"conf.yaml:3: sink 'S': option 'type': unknown sink type 'http'.*\('http' is a source type\)"),
        ("sinks:\n  S:\n    schema: 'a string'\n", r"conf.yaml:2: sink 'S': option 'type': 'type' is required: one of log, sse-server"),
        ("sinks:\n  S: [1, 2]\n", r"conf.yaml:2: sink 'S': expected a mapping"),
        ("sink:\n  S: {}\n", r"conf.yaml:1: the top level: unknown key 'sink'; did you mean 'sinks'\?"),
        ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 1\n    headers: \"'X-A'\"\n", r"conf.yaml:6: .*'headers': expected 'Name:value'"),
        ("sinks: {S: {type: log, schema: 'a string'}}\nroutes:\n  - {from: S, to: Nope}\n", r"conf.yaml:3: route: option 'to': unknown stream 'Nope'"),
        ("sinks:\n  S: {type: log, schema: 'a string'}\n  T: {type: log, schema: 'b int'}\nroutes:\n  - {from: S, to: T}\n", r"conf.yaml:5: route: stream T \(b int\) cannot take events of S \(a string\): 'b' is missing from S"),
        ("sinks:\n  S: {type: log, schema: 'a string'}\n  T: {type: log, schema: 'a int'}\nroutes:\n  - {from: S, to: T}\n", r"'a' is string in S but int in T"),
        ("sinks:\n  S: {type: log, schema: 'a string'}\n  T: {type: log, schema: 'a string'}\nroutes:\n  - {from: S, to: T}\n  - {from: T, to: S}\n", r"routes form a loop: S -> T -> S"),
        ("sinks:\n  S: {type: log, schema: 'a string'}\n  T: {type: log, schema: 'a string'}\nroutes:\n  - {from: S, to: T, where: a = 'x'}\n  - {from: S, to: T, where: \"a = 'x'\"}\n",
         r"conf.yaml:6: route: the route S -> T where a == 'x' is already written at .*conf.yaml:5: its events would be routed twice"),
        ("streams:\n  S: 'a string'\nsinks:\n  L: {type: log, stream: S, schema: 'a int'}\n", r"conf.yaml:4: sink 'L': option 'schema': stream 'S' is already declared as \(a string\)"),
        ("sinks:\n  A: {type: sse-server, schema: 'a string', server.port: 9, server.path: x}\n  B: {type: sse-server, schema: 'a string', server.port: 9, server.path: /x/}\n", r"conf.yaml:3: sink 'B': option 'server.port': port 9 path /x is already served by sink 'A'"),
        ("sinks:\n  A: {type: sse-server, schema: 'a string', server.port: 9}\n  B: {type: sse-server, schema: 'a string', server.port: 9, server.host: '::'}\n", r"port 9 is already bound on 0.0.0.0 by sink 'A'"),
        ("sinks:\n  A: {type: log, schema: 'a string'}\nsources:\n  A: {type: http, schema: 'a string', receiver.url: 'http://x:1/'}\n", r"conf.yaml:4: source 'A': the name 'A' is already used"),
        ("sinks:\n  S: {type: log\n", r"conf.yaml:3: YAML syntax error"),
        ("", r"conf.yaml:1: the file is empty"),
        ("streams: {S: {schema: " + "[" * 2000 + "]" * 2000 + "}}\n", r"conf.yaml: the YAML nests too deep"),  # was a RecursionError
        ("sinks: {A: {type: log, stream: S, headers: " + "{a: " * 400 + "1" + "}" * 400 + "}}\n", r"the YAML nests too deep"),
    ],
)
def test_error_cases_name_file_line_and_option(text: str, expected: str) -> None:
    found = errors(text)
    assert any(re.search(expected, line) for line in found), found


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the file"):
        load_files([str(tmp_path / "nope.yaml")])


def test_several_files_are_merged_and_names_stay_unique(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("streams:\n  S: 'a string'\nsinks:\n  L: {type: log, stream: S}\n")
    (tmp_path / "b.yaml").write_text("sinks:\n  L: {type: log, stream: S}\n")
    with pytest.raises(ConfigError) as caught:
        load_files([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    assert str(caught.value.issues[0]).startswith(f"{tmp_path / 'b.yaml'}:2: sink 'L': the name 'L' is already used by a connector at {tmp_path / 'a.yaml'}:4")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("'Content-Type:text/plain','X-A:b'", (("Content-Type", "text/plain"), ("X-A", "b"))),
        ("X-A:b,X-B: c d", (("X-A", "b"), ("X-B", "c d"))),
        ("'X-Url:http://a/b'", (("X-Url", "http://a/b"),)),
        ("", ()),
        ({"X-A": "b"}, (("X-A", "b"),)),
    ],
)
def test_headers_formats(text, expected) -> None:
    assert parse_headers(text) == expected


@pytest.mark.parametrize("text", ["'X A:b'", "'X-A'", 5, "'X-A:b\nc'"])
def test_bad_headers(text) -> None:
    with pytest.raises(OptionError):
        parse_headers(text)




HUGE = "9" * 5000  # more digits than Python reads as an int (4300)
SINK = "sinks:\n  S:\n    type: sse-server\n    schema: 'a int'\n    server.port: 0\n    {option}\n"


@pytest.mark.parametrize("option, expected", [
    (f"history.size: {HUGE}", "conf.yaml:6: sink 'S': option 'history.size': expected an integer, found one of 5000 digits"),
    (f"history.size: '{HUGE}'", "conf.yaml:6: sink 'S': option 'history.size': expected an integer, found one of 5000 digits"),
    ("history.size: 2020-13-45", "conf.yaml:6: sink 'S': option 'history.size': expected an integer, found '2020-13-45'"),
    ("server.path: !!python/name:os.system", "conf.yaml:6: YAML error: could not determine a constructor for the tag "
                                        "'tag:yaml.org,2002:python/name:os.system'"),
])
def test_values_yaml_cannot_construct_are_located_errors(option: str, expected: str) -> None:
    """Seen: an integer of thousands of digits, a date that is none or an unknown tag ended --check in a traceback."""
    assert expected in errors(SINK.format(option=option))


def test_a_date_that_is_none_is_text_and_huge_numbers_in_statements_are_errors() -> None:
    """Seen: these ended in tracebacks too (a 1.5L literal as well: the L was read as an integer's)."""
    from sse_daemon.config.statements import load_statements

    assert validate(load_yaml(SINK.format(option="server.path: 2020-13-45"), "conf.yaml")).sinks[0].options.server_path == "/2020-13-45"
    with pytest.raises(ConfigError, match="conf.sql:1: sink 'S': option 'history.size': expected an integer, found inf"):
        validate(load_statements(f"CREATE SINK S WITH (type='sse-server', server.port=0, history.size={HUGE}) (a int);", "conf.sql"))
    routed = validate(load_statements(f"CREATE STREAM T (a int); CREATE SINK S WITH (type='log') (a int);\n"
                                      f"INSERT INTO T SELECT * FROM S WHERE a < {HUGE};", "conf.sql"))
    assert routed.routes[0].where.matches({"a": 1}) is True
    suffixed = validate(load_statements("CREATE STREAM T (a int); CREATE SINK S WITH (type='log') (a int);\n"
                                        "INSERT INTO T SELECT * FROM S WHERE a < 1.5L;", "conf.sql"))  # a suffix is ignored
    assert suffixed.routes[0].where.matches({"a": 1}) is True


@pytest.mark.parametrize("name, text", [
    ("conf.yaml", "sinks:\n  S: {type: log, schema: a string}\n"),
    ("conf.sql", "CREATE SINK S WITH (type='log') (a string);\n"),
    ("conf.siddhi", "@sink(type='log', prefix='p')\ndefine stream S (a string);\n"),
])
def test_a_byte_order_mark_is_read_alike_by_every_front_end(tmp_path: Path, name: str, text: str) -> None:
    """Seen: a file saved with a UTF-8 BOM (Windows editors, SQL tools) loaded as YAML but was a syntax error
    ("unexpected character '\\ufeff'", an invisible one) as statements or a Siddhi app."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [s.name for s in load_files([str(path)]).sinks] == ["S"]


@pytest.mark.parametrize("option, attribute, expected", [
    ("priority: OFF", "priority", "off"),  # Siddhi's level, as migration.md lists it
    ("priority: off", "priority", "off"),
    ("prefix: no", "prefix", "no"),
    ("prefix: On", "prefix", "On"),
])
def test_yaml_reads_yes_no_on_off_as_the_text_written(option: str, attribute: str, expected: str) -> None:
    """Seen: YAML 1.1 made 'priority: OFF' the boolean false ("expected a string, found False"), while
    priority='OFF' loaded from statements and Siddhi apps; only true and false are booleans, as in YAML 1.2."""
    config = validate(load_yaml(f"sinks:\n  S: {{type: log, schema: a string, {option}}}\n", "conf.yaml"))
    assert getattr(config.sinks[0].options, attribute) == expected


@pytest.mark.parametrize("value, expected", [("yes", True), ("On", True), ("NO", False), ("off", False), ("true", True)])
def test_a_boolean_option_still_takes_yes_no_on_off(value: str, expected: bool) -> None:
    """What YAML 1.1 read as booleans stays one for a boolean option, in YAML and in statements alike."""
    yaml_config = validate(load_yaml(f"sinks:\n  S: {{type: log, schema: a string, map.validate.json: {value}}}\n", "conf.yaml"))
    sql_config = validate(load_statements(f"CREATE SINK S WITH (type='log', map.validate.json='{value}') (a string);", "conf.sql"))
    assert yaml_config.sinks[0].options.map_validate_json is sql_config.sinks[0].options.map_validate_json is expected


def test_an_unknown_stream_when_none_is_defined_says_so() -> None:
    """Seen: "unknown stream 'Readings'; expected one of: " and nothing after it."""
    assert errors("routes:\n  - {from: Readings, to: High}\n") == [
        "conf.yaml:2: route: option 'from': unknown stream 'Readings'; none is defined",
        "conf.yaml:2: route: option 'to': unknown stream 'High'; none is defined",
    ]
