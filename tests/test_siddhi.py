"""Siddhi apps (.siddhi) as they are: annotations, define stream, queries; what is not supported, named."""

from __future__ import annotations

import json
import re
import socket
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.load import load_files
from sse_daemon.config.siddhi import load_siddhi
from sse_daemon.config.validate import validate
from sse_daemon.daemon.reload import Reloader

from .conftest import TwistdProcess, deadline, raw_request, subscribe, wait_for, write_config

#: the app of issue 15, as a Siddhi user has it
ISSUE_APP = """\
@App:name('TestSse')
@sink(type='sse-server', server.url='http://0.0.0.0:8020/testsse', @map(type='json'))
define stream PublishStream (param1 string);

@source(type='sse', receiver.url='http://localhost:8020/testsse', @map(type='json'))
@sink(type='log', prefix='got')
define stream ListenStream (param1 string);

@sink(type='log')
define stream Shown (param1 string);

@info(name='show')
from ListenStream[param1 != 'skip']
select *
insert into Shown;
"""


def load(text: str, name: str = "app.siddhi"):
    return validate(load_siddhi(textwrap.dedent(text), name))


def errors(text: str, name: str = "app.siddhi") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text, name)
    return [str(issue) for issue in caught.value.issues]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- what an app defines


@pytest.mark.reactor_free
def test_the_issue_app_defines_streams_connectors_and_a_route() -> None:
    config = load(ISSUE_APP)
    assert {name: str(s.schema) for name, s in config.streams.items()} == {
        "PublishStream": "param1 string", "ListenStream": "param1 string", "Shown": "param1 string"}
    (source,) = config.sources
    assert (source.name, source.type, source.stream, source.options.receiver_url.text) == (
        "ListenStream.source", "sse", "ListenStream", "http://localhost:8020/testsse")
    publish, listen_log, shown_log = config.sinks
    assert (publish.name, publish.type, publish.options.server_host, publish.options.server_port, publish.options.server_path,
            publish.options.map_type) == ("PublishStream", "sse-server", "0.0.0.0", 8020, "/testsse", "json")
    assert (listen_log.name, listen_log.type, listen_log.options.prefix) == ("ListenStream.sink", "log", "got : ")
    assert (shown_log.name, shown_log.options.prefix, shown_log.options.priority) == ("Shown", "TestSse : Shown : ", "info")
    (route,) = config.routes
    assert str(route) == "ListenStream -> Shown where param1 != 'skip'"


@pytest.mark.reactor_free
def test_annotations_are_case_insensitive_and_map_onto_the_mapper_options() -> None:
    raw = load_siddhi(textwrap.dedent("""\
        @app:name("Prices")
        @Source(type='HTTP', receiver.url='http://127.0.0.1:8020/in',
                @Map(type='json', fail.on.missing.attribute='false', enclosing.element='$.portfolio',
                     @Attributes(symbol='$.stock.symbol', price='$.stock.price')))
        @SINK(type='sse-server', server.url='http://localhost:8021/prices',
              headers="'X-A:b','X-C:d'", @map(type='json', validate.json='true', @payload('{"p":{{price}}}')))
        @sink(type='log', priority='DEBUG', @map(type='text', @payload('{{symbol}} at {{price}}')))
        define stream Prices (symbol string, price double);

        @source(type='sse', receiver.url='http://localhost:8021/prices', @map(type='json', @attributes('$.s', '$.p')))
        define stream Remote (s string, p double);
        """), "app.siddhi")
    assert raw.issues == []
    config = validate(raw)
    ingest, remote = config.sources
    assert (ingest.name, ingest.type) == ("Prices.source", "http")
    assert ingest.options.map_fail_on_missing_attribute is False
    assert ingest.options.map_enclosing_element.text == "$.portfolio"
    assert {k: v.text for k, v in ingest.options.map_attributes.items()} == {"symbol": "$.stock.symbol", "price": "$.stock.price"}
    assert {k: v.text for k, v in remote.options.map_attributes.items()} == {"s": "$.s", "p": "$.p"}, "positional paths, in schema order"
    sse, log = config.sinks
    assert (sse.name, sse.options.server_host, sse.options.server_port, sse.options.server_path) == (
        "Prices.sink", "127.0.0.1", 8021, "/prices"), "localhost binds the loopback address, as in Siddhi"
    assert sse.options.headers == (("X-A", "b"), ("X-C", "d"))
    assert sse.options.map_validate_json is True and sse.options.map_payload is not None
    assert (log.name, log.options.priority, log.options.map_type, log.options.prefix) == ("Prices.sink2", "debug", "text", "Prices : Prices : ")


@pytest.mark.reactor_free
def test_the_macrometa_spelling_works_inside_annotations_too() -> None:
    config = load("""\
        @App:name('TestSse')
        @App:qlVersion('2')
        @sink(type='sse-server', map.type="json", server.port='8020', server.path='testsse')
        define stream PublishStream (param1 string);
        @source(type='sse-server', map.type="json", receiver.url='http://localhost:8020/testsse')
        define stream ListenStream (param1 string);
        """)
    (sink,), (source,) = config.sinks, config.sources
    assert (sink.options.server_host, sink.options.server_port, sink.options.server_path) == ("0.0.0.0", 8020, "/testsse")
    assert (source.type, source.name) == ("sse", "ListenStream"), "the spec's syntax line calls the source sse-server"


@pytest.mark.reactor_free
def test_siddhi_defaults_for_a_connector_without_url() -> None:
    config = load("""\
        @App:name('Shop')
        @source(type='http', @map(type='json'))
        @sink(type='sse-server', @map(type='json'))
        define stream Orders (id string);
        """)
    (source,), (sink,) = config.sources, config.sinks
    assert source.options.receiver_url.text == "http://0.0.0.0:9763/Shop/Orders"
    assert (sink.options.server_host, sink.options.server_port, sink.options.server_path) == ("0.0.0.0", 8280, "/Shop/Orders")


@pytest.mark.reactor_free
def test_queries_rename_filter_and_define_their_output_streams() -> None:
    config = load("""\
        @sink(type='log')
        define stream Readings (sensor string, value double, ok bool);
        @info(name='high')
        from Readings[value > 2.5 and ok == true and not (sensor is null)]
        select sensor as name, value
        insert into High;
        from High insert into Copy;
        @sink(type='log')
        define stream Copy (name string, value double);
        """)
    assert str(config.streams["High"].schema) == "name string, value double", "inferred from the select, as Siddhi does"
    high, copy = config.routes
    assert str(high) == "Readings -> High select sensor as name, value where ((value > 2.5) and (ok == true)) and not (sensor is null)"
    assert high.outputs(("name", "value")) == (("name", "sensor"), ("value", "value"))
    assert str(copy) == "High -> Copy"


@pytest.mark.reactor_free
def test_an_output_stream_is_inferred_only_from_a_known_input() -> None:
    assert errors("""\
        @sink(type='log')
        define stream A (a string);
        from Nowhere select x insert into B;
        """) == [
        "app.siddhi:3:6: route: option 'from': unknown stream 'Nowhere'; expected one of: A",
        "app.siddhi:3:35: route: option 'to': stream 'B' is not defined, and the query cannot define it: its input stream is unknown",
    ]


@pytest.mark.reactor_free
def test_a_renamed_attribute_must_fit_the_defined_output() -> None:
    assert errors("""\
        @sink(type='log')
        define stream A (a string, n int);
        @sink(type='log')
        define stream B (b int);
        from A select a as b insert into B;
        """) == ["app.siddhi:5:1: route: stream B (b int) cannot take events of A (a string, n int): 'a' (as 'b') is string in A but int in B"]


# --------------------------------------------------------------------------- errors: file, line, column, caret

#: (a query or definition, the construct its error names, the text the caret points at)
UNSUPPORTED = [
    ("from S#window.length(5) select * insert into T;", "windows", "#window"),
    ("from S[a == 'x']#window.time(1 sec) select * insert into T;", "windows", "#window"),
    ("define window W (a string) length(5);", "windows (define window)", "window W"),
    ("from S join S2 on S.a == S2.a select S.a insert into T;", "joins", "join"),
    ("from S as s join S2 as t on s.a == t.a select s.a insert into T;", "joins", "as s"),
    ("from every e1=S -> e2=S2[a == e1.a] select e1.a insert into T;", "patterns", "e1=S"),
    ("from e1=S -> e2=S2 select e1.a insert into T;", "patterns", "=S"),
    ("from e1=S, e2=S2[a == e1.a] select e1.a insert into T;", "sequences", "=S"),
    ("define table Tab (a string);", "tables (define table)", "table"),
    ("from S select a update Tab on Tab.a == a;", "tables (update)", "update"),
    ("define aggregation Agg from S select a, count() as n group by a aggregate every sec ... year;",
     "aggregations (define aggregation)", "aggregation"),
    ("from S select a, count() as n insert into T;", "aggregations (the aggregate function count(...))", "() as"),
    ("from S select a group by a insert into T;", "aggregations (group by, having)", "group"),
    ("partition with (a of S) begin from S select * insert into T; end;", "partitions", "partition"),
    ("define function concat[javascript] return string { return data[0]; };", "functions (define function)", "function"),
    ("from S[str:length(a) > 3] select * insert into T;", "functions (str:length(...))", ":length"),
    ("from S select upper(a) as b insert into T;", "functions (upper(...))", "(a)"),
    ("from S select a, sum (n) as total insert into T;", "aggregations (the aggregate function sum(...))", "(n)"),
    ("from S#str:tokenize(a, ',') select * insert into T;", "functions (stream functions", "#str"),
    ("from not S for 5 sec select * insert into T;", "patterns (absent events", "S for"),
    ("from S select * output every 5 events insert into T;", "output rate limiting", "output"),
    ("from S select * order by a insert into T;", "ordering and limits", "order"),
    ("from S select a + 1 as b insert into T;", "expressions in select", "+ 1"),
]


@pytest.mark.reactor_free
@pytest.mark.parametrize(("query", "construct", "at"), UNSUPPORTED)
def test_every_unsupported_construct_is_named_with_line_column_and_caret(query: str, construct: str, at: str) -> None:
    text = "@App:name('X')\n@sink(type='log')\ndefine stream S (a string);\n" + query + "\n"
    (message,) = errors(text)
    head, line, caret = message.split("\n")
    column = query.index(at) + 1
    assert head.startswith(f"app.siddhi:4:{column}: {construct}"), message
    assert "not supported" in head and "this daemon runs" in head
    assert line == "    " + query
    assert caret == "    " + " " * (column - 1) + "^"


@pytest.mark.reactor_free
@pytest.mark.parametrize(("annotation", "expected", "at"), [
    ("@source(type='kafka', topic.list='t', @map(type='json'))", "kafka sources: not supported; this daemon runs sse and http sources", "'kafka'"),
    ("@sink(type='http', publisher.url='http://x/y')", "http sinks: not supported; this daemon runs sse-server and log sinks", "'http'"),
    ("@sink(type='log', @map(type='xml'))", "xml mappers: not supported; this daemon maps json and text", "'xml'"),
    ("@sink(type='log', @distribution(strategy='roundRobin'))", "distributed sinks (@distribution): not supported", "distribution"),
    ("@store(type='rdbms')", "tables (@store): not supported", "store"),
    ("@Async(buffer.size='64')", "annotation @Async on a stream: not supported", "Async"),
])
def test_other_connector_types_and_annotations_are_named_with_a_caret(annotation: str, expected: str, at: str) -> None:
    (message,) = errors(f"@App:name('X')\n{annotation}\ndefine stream S (a string);\n@sink(type='log')\ndefine stream L (a string);\n")
    head, line, caret = message.split("\n")
    column = annotation.index(at) + 1
    assert head.startswith(f"app.siddhi:2:{column}: {expected}"), message
    assert line == "    " + annotation and caret == "    " + " " * (column - 1) + "^"


@pytest.mark.reactor_free
@pytest.mark.parametrize(("text", "expected"), [
    ("@sink(type='log')\ndefine stream S (a string)\nfrom S select a insert T;\n",
     "app.siddhi:3:1: syntax error: expected one of ';' or the end of the text, found 'from'\n    from S select a insert T;\n    ^"),
    ("@sink(type='log')\ndefine stream S (a string);\nfrom S[a > ] select * insert into T;\n",
     "app.siddhi:3:12: syntax error: expected one of '(', '-', FALSE, NULL, TRUE, a name, a number or a quoted value, found ']'\n"
     "    from S[a > ] select * insert into T;\n               ^"),
])
def test_a_plain_syntax_error_says_what_was_expected(text: str, expected: str) -> None:
    assert errors(text) == [expected]


@pytest.mark.reactor_free
def test_app_annotations_the_daemon_does_not_read_are_named() -> None:
    (message,) = errors("@App:name('X')\n@App:statistics(reporter='console')\n@sink(type='log')\ndefine stream S (a string);\n")
    assert message.startswith("app.siddhi:2:6: annotation @App:statistics is not supported"), message
    (message,) = errors("@sink(type='log')\ndefine stream S (a string);\n@App:name('late')\n")
    assert message.startswith("app.siddhi:3:5: syntax error: expected '('"), message


@pytest.mark.reactor_free
def test_option_errors_name_line_and_column() -> None:
    assert errors("""\
        @App:name('X')
        @sink(type='sse-server', server.url='http://0.0.0.0:8020/a', heartbeat.intervl='5')
        define stream S (a string);
        """) == ["app.siddhi:2:62: sink 'S': option 'heartbeat.intervl': unknown option 'heartbeat.intervl'; did you mean 'heartbeat.interval'?"]


@pytest.mark.reactor_free
@pytest.mark.parametrize(("sink", "expected"), [
    ("@sink(type='sse-server', server.url='http://0.0.0.0:8020')", "server.url: give a path after the port"),
    ("@sink(type='sse-server', server.url='http://0.0.0.0/a')", "server.url: give the port"),
    ("@sink(type='sse-server', server.url='https://0.0.0.0:8020/a')", "an https server.url needs server.tls.cert and server.tls.key"),
    ("@sink(type='sse-server', server.url='http://0.0.0.0:8020/a', server.port='8020')", "server.url and server.port say the same thing"),
    ("@sink(type='sse-server', map.type='json', @map(type='json'))", "'map.type' is given twice"),
])
def test_server_url_is_read_as_siddhi_reads_it(sink: str, expected: str) -> None:
    (message,) = errors(f"@App:name('X')\n{sink}\ndefine stream S (a string);\n")
    assert message.startswith("app.siddhi:2:") and expected in message and "^" in message, message


@pytest.mark.reactor_free
def test_a_sink_without_url_in_an_app_without_name_is_an_error() -> None:
    (message,) = errors("@sink(type='sse-server')\ndefine stream S (a string);\n")
    assert message.startswith("app.siddhi:1:2: @sink(type='sse-server') needs server.url: Siddhi's default names the app")


# --------------------------------------------------------------------------- one configuration, three forms

SAME_SIDDHI = """\
@App:name('Prices')
@source(type='http', receiver.url='http://127.0.0.1:8020/publish', @map(type='json'))
define stream Prices (symbol string, price double);

@sink(type='sse-server', server.url='http://127.0.0.1:8020/high', @map(type='json'))
define stream High (symbol string, price double);

@info(name='high')
from Prices[price > 100 and symbol != 'X'] select symbol, price insert into High;
"""
SAME_SQL = """\
@App:name('Prices')
CREATE STREAM Prices (symbol string, price double);
CREATE STREAM High (symbol string, price double);
CREATE SOURCE Prices WITH (type='http', map.type='json', receiver.url='http://127.0.0.1:8020/publish');
CREATE SINK High WITH (type='sse-server', map.type='json', server.host='127.0.0.1', server.port='8020', server.path='/high');
INSERT INTO High SELECT symbol, price FROM Prices WHERE price > 100 and symbol != 'X';
"""
SAME_YAML = """\
streams:
  Prices: "symbol string, price double"
  High: "symbol string, price double"
sources:
  Prices: {type: http, map.type: json, receiver.url: "http://127.0.0.1:8020/publish"}
sinks:
  High: {type: sse-server, map.type: json, server.host: 127.0.0.1, server.port: 8020, server.path: /high}
routes:
  - {from: Prices, to: High, select: [symbol, price], where: "price > 100 and symbol != 'X'"}
"""


@pytest.mark.reactor_free
def test_siddhi_sql_and_yaml_forms_give_the_same_check_output(tmp_path: Path, capsys) -> None:
    from sse_daemon.tap import Options

    outputs = []
    for name, text in (("app.siddhi", SAME_SIDDHI), ("app.sql", SAME_SQL), ("app.yaml", SAME_YAML)):
        with pytest.raises(SystemExit) as exited:
            Options().parseOptions(["--config", str(write_config(tmp_path, text, name)), "--check"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        first, rest = out.split("\n", 1)
        assert first == f"configuration OK ({tmp_path / name})"
        outputs.append(rest)
    assert outputs[0] == outputs[1] == outputs[2]
    assert "  Prices -> High select symbol, price where (price > 100) and (symbol != 'X')" in outputs[0]


@pytest.mark.reactor_free
def test_a_siddhi_app_mixes_with_yaml_on_one_command_line(tmp_path: Path) -> None:
    app = write_config(tmp_path, "@App:name('A')\n@sink(type='log')\ndefine stream Out (symbol string);\n"
                                 "from Prices select symbol insert into Out;\n", "app.siddhi")
    yaml = write_config(tmp_path, SAME_YAML, "more.yaml")
    config = load_files([str(app), str(yaml)])
    assert [r.source + "->" + r.target for r in config.routes] == ["Prices->Out", "Prices->High"]
    assert config.files == (str(app), str(yaml))


@pytest.mark.reactor_free
def test_a_siddhi_app_inside_yaml_keeps_its_real_lines_and_columns() -> None:
    from sse_daemon.config.yamlfile import load_yaml

    text = textwrap.dedent("""\
        admin: {port: 9901}
        siddhi: |
          @App:name('Inside')
          @sink(type='log')
          define stream S (a string);
          from S#window.length(2) select a insert into T;
        """)
    (issue,) = load_yaml(text, "conf.yaml").issues
    assert str(issue).startswith("conf.yaml:6:9: windows (#window...): not supported"), str(issue)
    assert str(issue).endswith("    from S#window.length(2) select a insert into T;\n          ^")
    config = validate(load_yaml(text.replace("#window.length(2)", ""), "conf.yaml"))
    assert (config.sinks[0].name, config.sinks[0].options.prefix, config.admin is not None) == ("S", "Inside : S : ", True)
    assert config.sinks[0].location.line == 4
    with pytest.raises(ConfigError, match=re.escape("conf.yaml:1: siddhi: expected a Siddhi app as text ('siddhi: |' with the app indented below), found a list")):
        validate(load_yaml("siddhi: [a]\n", "conf.yaml"))


# --------------------------------------------------------------------------- over real sockets


@pytest.fixture
def log_lines():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [formatEvent(e) or "" for e in events]
    globalLogPublisher.removeObserver(events.append)


def issue_app(port: int) -> str:
    """The issue's app on a free port, with an http source to publish through."""
    return ISSUE_APP.replace("8020", str(port)).replace(
        "@sink(type='sse-server'", f"@source(type='http', receiver.url='http://0.0.0.0:{port}/publish', @map(type='json'))\n@sink(type='sse-server'")


def spec_examples(port: int) -> str:
    """The spec's two examples as Siddhi annotations (the sink in the Macrometa spelling), and an http source."""
    return textwrap.dedent(f"""\
        @App:name('SpecExamples')
        @source(type='http', receiver.url='http://0.0.0.0:{port}/publish', @map(type='json'))
        @sink(type='sse-server', map.type="json", server.port='{port}', server.path='testsse')
        define stream PublishStream (param1 string);

        @source(type='sse', map.type="json", receiver.url='http://localhost:{port}/testsse')
        @sink(type='log', prefix='got')
        define stream ListenStream (param1 string);
        """)


async def post(port: int, body: bytes) -> bytes:
    client = await raw_request(port, b"POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await deadline(client.closed)
    return bytes(client.received)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("app", [issue_app, spec_examples])
async def test_an_event_goes_round_through_sse_into_the_log(daemon, log_lines, app) -> None:
    port = free_port()
    service = await daemon(app(port), name="app.siddhi")
    await wait_for(lambda: service.sources["ListenStream.source"].connected, what="the sse source to connect")
    subscriber = await subscribe(port, "/testsse")
    for value in ("hello", "skip"):
        assert (await post(port, json.dumps({"param1": value}).encode())).startswith(b"HTTP/1.1 200")
        await subscriber.wait_for(b'data: {"event":{"param1":"%s"}}\n\n' % value.encode())
    await wait_for(lambda: 'got : {"event":{"param1":"skip"}}' in log_lines(), what="the log line of the sse source's stream")
    assert 'got : {"event":{"param1":"hello"}}' in log_lines()
    if app is issue_app:
        await wait_for(lambda: 'TestSse : Shown : {"event":{"param1":"hello"}}' in log_lines(), what="the query's output")
        assert not any("Shown" in line and "skip" in line for line in log_lines()), "the query's filter holds 'skip' back"
    await subscriber.close()


# --------------------------------------------------------------------------- reload

RELOAD_APP = """\
@App:name('Reload')
@source(type='http', receiver.url='http://127.0.0.1:0/publish', @map(type='json'))
@sink(type='sse-server', server.url='http://127.0.0.1:0/keep', retry.max='0', @map(type='json'))
define stream S (n int);
"""
RELOAD_ADDED = RELOAD_APP.replace("define stream", "@sink(type='sse-server', server.url='http://127.0.0.1:0/added', @map(type='json'))\ndefine stream")


@pytest_twisted.ensureDeferred
async def test_a_changed_siddhi_app_is_reloaded(daemon, tmp_path: Path, log_lines) -> None:
    service = await daemon(RELOAD_APP, name="app.siddhi")
    port = service.port_of("S.sink")
    keep = await subscribe(port, "/keep")
    write_config(tmp_path, RELOAD_ADDED, "app.siddhi")
    assert await deadline(Reloader(service, [str(tmp_path / "app.siddhi")]).reload()) is True
    assert any("configuration reloaded: kept S.source, S.sink; added S.sink2" in line for line in log_lines()), log_lines()
    added = await subscribe(port, "/added")
    assert (await post(port, b'{"n": 7}')).startswith(b"HTTP/1.1 200")
    for client in (keep, added):
        await client.wait_for(b'{"event":{"n":7}}')
        await client.close()


@pytest_twisted.ensureDeferred
async def test_real_twistd_reloads_a_siddhi_app_on_sighup(tmp_path: Path) -> None:
    config = write_config(tmp_path, RELOAD_APP, "app.siddhi")
    process, port = await TwistdProcess.start(config, tmp_path)
    try:
        keep = await subscribe(port, "/keep")
        write_config(tmp_path, RELOAD_ADDED, "app.siddhi")
        process.signal("HUP")
        await wait_for(lambda: b"configuration reloaded: kept S.source, S.sink; added S.sink2" in process.output or process.ended,
                       what="the reload")
        added = await subscribe(port, "/added")
        assert (await post(port, b'{"n": 9}')).startswith(b"HTTP/1.1 200")
        await keep.wait_for(b'"n":9')
        await added.wait_for(b'"n":9')
        write_config(tmp_path, RELOAD_APP + "from S#window.length(2) select n insert into T;\n", "app.siddhi")
        process.signal("HUP")
        await wait_for(lambda: b"the running configuration is unchanged" in process.output or process.ended, what="the rejection")
        assert not process.ended and not keep.is_closed
        assert re.search(rb"app\.siddhi:5:7: windows \(#window\.\.\.\): not supported", process.output), process.output
        await keep.close()
        await added.close()
        await process.stop("TERM")
    finally:
        await process.kill()


# --------------------------------------------------------------------------- what routes and log sinks gained for them


def test_a_route_forwards_a_renamed_attribute_under_its_new_name() -> None:
    from sse_daemon.bus.memory import MemoryBus
    from sse_daemon.connectors.route import RouteService
    from sse_daemon.events.schema import Event

    config = load("""\
        @sink(type='log')
        define stream A (a string, n int, x double);
        @sink(type='log')
        define stream B (n int, b string);
        from A[n > 1] select a as b, n insert into B;
        """)
    bus = MemoryBus()
    received: list[Event] = []
    bus.subscribe("B", received.extend)
    route = RouteService(config.routes[0], config.streams["B"].schema.names, bus)
    route.startService()
    try:
        bus.publish("A", [Event({"a": "one", "n": 1, "x": 0.5}), Event({"a": "two", "n": 2, "x": 1.5})])
    finally:
        route.stopService()
    assert [e.values for e in received] == [{"n": 2, "b": "two"}]
    assert (route.events, route.filtered) == (1, 1)


@pytest.mark.reactor_free
def test_yaml_routes_rename_too() -> None:
    from sse_daemon.config.yamlfile import load_yaml

    config = validate(load_yaml(textwrap.dedent("""\
        streams:
          A: "a string, n int"
          B: "b string, n int"
        sinks:
          L: {type: log, stream: B}
        routes:
          - {from: A, to: B, select: [a as b, n]}
        """), "conf.yaml"))
    assert str(config.routes[0]) == "A -> B select a as b, n"
    assert config.routes[0].renames == (("a", "b"),)


@pytest.mark.reactor_free
@pytest.mark.parametrize(("select", "expected"), [
    ("[a as n, n]", "'n' is selected twice"),
    ("[a, a as b]", "'a' is selected twice"),
    ("[a as 1]", "expected attribute names such as [a, b] or '*'"),
])
def test_renames_that_cannot_be(select: str, expected: str) -> None:
    from sse_daemon.config.yamlfile import load_yaml

    with pytest.raises(ConfigError) as caught:
        validate(load_yaml(textwrap.dedent(f"""\
            streams:
              A: "a string, n int"
              B: "b string, n int"
            sinks:
              L: {{type: log, stream: B}}
            routes:
              - {{from: A, to: B, select: {select}}}
            """), "conf.yaml"))
    assert expected in str(caught.value)


@pytest.mark.parametrize(("priority", "level"), [("TRACE", "debug"), ("debug", "debug"), ("info", "info"), ("WARN", "warn"),
                                                  ("error", "error"), ("Fatal", "critical"), ("off", None)])
def test_a_log_sinks_priority_is_its_level(priority: str, level: str | None, log_events) -> None:
    from sse_daemon.bus.memory import MemoryBus
    from sse_daemon.connectors.logsink import LogSinkService
    from sse_daemon.events.schema import Event
    from sse_daemon.mapping.mappers import make_mapper

    config = load(f"@App:name('P')\n@sink(type='log', priority='{priority}', prefix='p')\ndefine stream S (a string);\n")
    (connector,) = config.sinks
    bus = MemoryBus()
    sink = LogSinkService(connector, make_mapper(connector.options.mapping, config.streams["S"].schema), bus)
    sink.startService()
    try:
        bus.publish("S", [Event({"a": "x"})])
    finally:
        sink.stopService()
    logged = [e for e in log_events if e.get("sink") == "S"]
    assert [e["log_level"].name for e in logged] == ([level] if level else [])
    assert sink.counters["events_in"] == 1
    if level:
        assert formatEvent(logged[0]) == 'p : {"event":{"a":"x"}}'
