"""Logs: JSON or text with a level filter under twistd, and the periodic per-connector stats line."""

from __future__ import annotations

import io
from datetime import datetime, timezone
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from sse_daemon.ops import logs
from sse_daemon.config.load import load_files
from sse_daemon.ops.figures import StatsLogService
from sse_daemon.events.schema import Event
from sse_daemon.daemon.service import build_service
from sse_daemon.tap import Options

from .conftest import deadline, raw_request, sleep, subscribe, wait_for, write_config
from .test_source import Harness, harness  # noqa: F401  (harness is a fixture)


STATS = "sse_daemon.ops.figures.StatsLogService"


@pytest.fixture(autouse=True)
def fresh_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's choices live in a module global; every test starts without them."""
    monkeypatch.setattr(logs, "_selected", {})
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)


def emit(observer: Any, level: LogLevel, fmt: str, **fields: Any) -> None:
    observer({"log_level": level, "log_format": fmt, "log_namespace": "tests.logs", "log_time": 1795000000.25, **fields})


@pytest.mark.reactor_free
def test_a_json_line_has_time_level_namespace_message_and_fields() -> None:
    line = logs.event_as_json({
        "log_level": LogLevel.warn, "log_format": "ingest {source} rejected a request: {why}", "log_namespace": "sse_daemon.connectors.ingest",
        "log_time": 1795000000.25, "source": "In", "why": "bad", "reason": "invalid-json", "count": 3,
        "headers": {"Authorization": "Bearer s3cret", "X-Team": "sse"}, "password": "hunter2", "when": object(),
        "log_logger": object(), "log_source": None,
    })
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["time"] == datetime.fromtimestamp(1795000000.25, timezone.utc).isoformat(timespec="milliseconds")
    assert record["time"].endswith(".250+00:00")
    assert record["level"] == "warn"
    assert record["namespace"] == "sse_daemon.connectors.ingest"
    assert record["message"] == "ingest In rejected a request: bad"
    assert record["source"] == "In" and record["reason"] == "invalid-json" and record["count"] == 3
    assert record["headers"] == {"Authorization": "<redacted>", "X-Team": "sse"}, "never secrets"
    assert record["password"] == "<redacted>"
    assert record["when"].startswith("<object object")
    assert not any(key.startswith("log_") for key in record)


@pytest.mark.reactor_free
def test_a_failure_carries_its_traceback() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    record = json.loads(logs.event_as_json({
        "log_level": LogLevel.critical, "log_format": "heartbeat failed", "log_namespace": "x", "log_time": 0.0,
        "log_failure": failure,
    }))
    assert "ZeroDivisionError" in record["traceback"] and record["message"] == "heartbeat failed"


#: what a client or an upstream can put in a logged value (a log sink's text payload, an Origin, a
#: status line): CR and ESC sequences that return over the line, NUL (journald ends a line there),
#: NEL and U+2028 (str.splitlines ends a line there), CSI, DEL, and a lone surrogate (no UTF-8 form)
HOSTILE = "a\r2026-01-01T00:00:00+0000 [forged#info] all is well\x1b[2K\x00b\x85c\u2028d\u2029e\x9b31m\x7f\ud800f\tg"


@pytest.mark.reactor_free
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_hostile_value_stays_on_its_line_and_is_written(fmt: str) -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)  # as stdout or a log file
    observer = logs.make_observer(fmt, LogLevel.info, out)
    emit(observer, LogLevel.warn, "origin {origin} may not use this endpoint", origin=HOSTILE)
    written = raw.getvalue().decode("utf-8")
    assert written.endswith("\n") and len(written.splitlines()) == 1, written
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7f <= ord(c) <= 0x9f for c in written), "no control character is written"
    if fmt == "json":
        assert json.loads(written)["origin"] == HOSTILE, "JSON escapes keep the value exact"
    else:
        assert r"a\x0d2026-01-01T00:00:00+0000 [forged#info] all is well\x1b[2K\x00b\x85c\u2028d\u2029e\x9b31m\x7f\ud800f" + "\tg" in written


@pytest.mark.reactor_free
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_level_filter_drops_what_is_below_it(fmt: str) -> None:
    out = io.StringIO()
    observer = logs.make_observer(fmt, LogLevel.warn, out)
    emit(observer, LogLevel.debug, "per-event detail {n}", n=1)
    emit(observer, LogLevel.info, "subscriber connected")
    emit(observer, LogLevel.warn, "slow subscriber dropped")
    emit(observer, LogLevel.error, "source failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "slow subscriber dropped" in lines[0] and "source failed" in lines[1]
    if fmt == "json":
        assert [json.loads(line)["level"] for line in lines] == ["warn", "error"]
    else:
        assert "[tests.logs#warn]" in lines[0]


@pytest.mark.reactor_free
def test_factories_read_the_environment_and_the_plugin_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv(logs.LEVEL_ENV, "error")
    observer = logs.json_observer()
    emit(observer, LogLevel.warn, "dropped")
    emit(observer, LogLevel.error, "kept")
    assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == ["kept"]

    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    monkeypatch.setenv(logs.LEVEL_ENV, "WARNING")
    out.truncate(0), out.seek(0)
    observer = logs.observer()
    emit(observer, LogLevel.info, "dropped")
    emit(observer, LogLevel.warn, "kept")
    assert [json.loads(line)["level"] for line in out.getvalue().splitlines()] == ["warn"]

    logs.select("text", "debug")
    out.truncate(0), out.seek(0)
    observer = logs.selected_observer()
    emit(observer, LogLevel.debug, "now kept")
    assert "[tests.logs#debug] now kept" in out.getvalue()

    monkeypatch.setenv(logs.LEVEL_ENV, "loud")
    monkeypatch.setattr(logs, "_selected", {})
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        logs.text_observer()


@pytest.mark.reactor_free
def test_plugin_options_name_the_observer_for_twistd(tmp_path: Path) -> None:
    """twistd reads its ``logger`` option after the plugin's options are parsed."""
    from twisted.scripts.twistd import ServerOptions

    config = write_config(tmp_path, "sinks:\n  S: {type: log, schema: 'a string'}\n")
    parent = ServerOptions()
    parent.parseOptions(["--nodaemon", "sse-daemon", "--config", str(config), "--log-format", "json", "--log-level", "warn"])
    assert parent["logger"] is logs.selected_observer, "twistd resolved our factory"
    assert logs._selected == {"format": "json", "level": "warn"}

    explicit = ServerOptions()
    explicit.parseOptions(["--logger", "sse_daemon.ops.logs.text_observer", "sse-daemon", "--config", str(config), "--log-level", "debug"])
    assert explicit["logger"] is logs.text_observer, "an explicit --logger is kept; the level still applies"
    assert logs._selected["level"] == "debug"

    plain = ServerOptions()
    plain.parseOptions(["--nodaemon", "sse-daemon", "--config", str(config)])
    assert plain["logger"] is logs.selected_observer, "without log options the level still defaults to info, not twistd's all-levels"

    with pytest.raises(usage.UsageError, match="unknown log format 'xml'"):
        Options().parseOptions(["--config", str(config), "--log-format", "xml"])
    with pytest.raises(usage.UsageError, match="--stats-interval"):
        Options().parseOptions(["--config", str(config), "--stats-interval", "soon"])
    for odd in ("nan", "inf", "-1", "1e-300"):  # nan passed every check; 1e-300 logged without end
        with pytest.raises(usage.UsageError, match="expected 0 .off. or seconds from 0.1 up"):
            Options().parseOptions(["--config", str(config), "--stats-interval", odd])


@pytest.mark.reactor_free
def test_stats_line_per_connector_every_interval_and_the_timer_survives_errors(tmp_path: Path) -> None:
    config = load_files([str(write_config(tmp_path, """\
        sources:
          In: {type: http, stream: S, schema: "param1 string", receiver.url: "http://127.0.0.1:0/publish"}
        sinks:
          S: {type: sse-server, server.host: 127.0.0.1, server.port: 0}
          L: {type: log, stream: S}
        """))])
    clock = Clock()
    service = build_service(config, reactor, clock=clock, stats_interval=60)
    stats = next(child for child in service if isinstance(child, StatsLogService))
    started = [*service.sinks.values(), stats]  # no listener: nothing binds
    for child in started:
        child.startService()
    try:
        service.bus.publish("S", [Event({"param1": "a"}), Event({"param1": "b"})])
        with capturedLogs() as events:
            clock.advance(59)
            assert not [e for e in events if e["log_namespace"] == STATS]
            clock.advance(1)
        lines = {e.get("sink") or e.get("source"): e for e in events if e["log_namespace"] == STATS}
        assert set(lines) == {"S", "L", "In"}
        assert lines["S"]["log_level"] is LogLevel.info
        assert lines["S"]["events_in"] == 2 and lines["S"]["subscribers"] == 0 and lines["S"]["dropped_slow"] == 0
        assert lines["L"]["events_out"] == 2
        assert lines["In"]["events_in"] == 0 and lines["In"]["rejected_total"] == 0

        original = stats.daemon.sinks
        stats.daemon.sinks = None  # type: ignore[assignment]  # every figure now fails
        with capturedLogs() as events:
            clock.advance(60)
        assert [e["log_level"] for e in events] == [LogLevel.error], "logged once, at error"
        stats.daemon.sinks = original
        with capturedLogs() as events:
            clock.advance(60)
        assert len([e for e in events if e["log_namespace"] == STATS]) == 3, "the timer kept running"
    finally:
        for child in started:
            child.stopService()
    assert not clock.getDelayedCalls()


# --------------------------------------------------------------------------- the real twistd


def twistd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()", *args]


class _Output(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended = False

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: object) -> None:
        self.ended = True

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.decode().splitlines() if line.strip()]


async def run_twistd(tmp_path: Path, twistd_args: list[str], plugin_args: list[str], env: dict[str, str], port: int) -> tuple[_Output, Any]:
    config = write_config(tmp_path, f"""\
        sources:
          In: {{type: http, stream: S, schema: "param1 string", receiver.url: "http://127.0.0.1:{port}/publish"}}
        sinks:
          L: {{type: log, stream: S, prefix: "got "}}
        """)
    process = _Output()
    transport = reactor.spawnProcess(
        process, sys.executable, twistd("-n", "--pidfile=", *twistd_args, "sse-daemon", "--config", str(config), *plugin_args),
        env={**os.environ, **env}, path=str(tmp_path),
    )
    return process, transport


async def wait_listening(port: int, process: _Output) -> None:
    async def attempt() -> bool:
        try:
            connected = await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol.Protocol()), 2)
        except Exception:
            return False
        connected.transport.loseConnection()
        return True

    end = reactor.seconds() + 30
    while not await attempt():
        assert not process.ended, process.out + process.err
        assert reactor.seconds() < end, "twistd never listened"
        await sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def post(port: int, body: bytes) -> int:
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await deadline(treq.post(f"http://127.0.0.1:{port}/publish", data=body, pool=pool))
    await deadline(treq.content(response))
    return response.code


async def stop(process: _Output, transport: Any) -> None:
    if not process.ended:
        transport.signalProcess("TERM")
    await wait_for(lambda: process.ended, what="twistd to stop")


@pytest_twisted.ensureDeferred
async def test_twistd_with_the_plugin_options_writes_json_at_the_chosen_level(tmp_path: Path) -> None:
    port = free_port()
    process, transport = await run_twistd(
        tmp_path, [], ["--log-format", "json", "--log-level", "info", "--stats-interval", "0.2"], {}, port)
    try:
        await wait_listening(port, process)
        assert await post(port, b'{"param1": "hello"}') == 200
        assert await post(port, b"nope") == 400
        await wait_for(lambda: b"stats: source In" in process.out and b'"reason":"invalid-json"' in process.out, what="the log lines")
    finally:
        await stop(process, transport)
    records = process.records()  # every stdout line is one JSON object
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    assert {r["level"] for r in records} <= {"info", "warn", "error", "critical"}
    listening = next(r for r in records if r["message"].startswith("listening on"))
    assert listening["namespace"] == "sse_daemon.edge.listener.ListenerService" and listening["port"] == port
    logged = next(r for r in records if r["namespace"] == "sse_daemon.connectors.logsink.LogSinkService")
    assert logged["message"] == 'got {"event":{"param1":"hello"}}' and logged["sink"] == "L"
    rejected = next(r for r in records if r["level"] == "warn")
    assert rejected["reason"] == "invalid-json" and rejected["source"] == "In"
    stats = next(r for r in records if r["message"].startswith("stats: source In"))
    assert stats["events_in"] == 1 and stats["rejected"] == {"invalid-json": 1}
    assert process.err == b""


@pytest_twisted.ensureDeferred
async def test_twistd_logger_option_with_the_level_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    process, transport = await run_twistd(
        tmp_path, ["--logger=sse_daemon.ops.logs.json_observer"], [], {logs.LEVEL_ENV: "warn"}, port)
    try:
        await wait_listening(port, process)
        assert await post(port, b'{"param1": "quiet"}') == 200  # logged by the log sink at info: filtered
        assert await post(port, b"[1]") == 400
        await wait_for(lambda: b"not-an-object" in process.out, what="the warning")
    finally:
        await stop(process, transport)
    records = process.records()
    assert [r["level"] for r in records] == ["warn"], records
    assert records[0]["reason"] == "not-an-object"


# --------------------------------------------------------------------------- ids and paths a client or an upstream chose


def longest_line(events: list[dict[str, Any]]) -> int:
    return max(len(logs.event_as_json(e)) for e in events)


@pytest_twisted.ensureDeferred
async def test_an_upstream_id_of_10_kb_is_cut_in_every_line_that_shows_it(harness: Harness, log_events: list[dict]) -> None:
    """The upstream chooses its ids, up to max.event.size; each reconnect wrote one whole, three times."""
    server = harness.server()
    source, events = harness.source(server.url(), **{"reconnect.initial.delay": 0.02, "reconnect.max.delay": 0.1})
    await wait_for(lambda: source.connected, what="the stream")
    long_id = "7" * 10_000  # under the header limit of the scripted server
    server.write(f"id: {long_id}\ndata: not json\n\n".encode())  # counted as does-not-map, the id still taken
    await wait_for(lambda: any("does not map" in formatEvent(e) for e in log_events), what="the mapping error")
    server.drop()
    await wait_for(lambda: len(server.seen) == 2 and source.connected, what="the reconnect")
    assert server.seen[-1].headers["last-event-id"] == long_id, "sent whole: only the log line is cut"
    shown = [e for e in log_events if long_id[:50] in formatEvent(e)]
    for words in ("does not map", "stream ended", "connected to"):
        assert any(words in formatEvent(e) for e in shown), words
    assert longest_line(shown) < 1000


@pytest_twisted.ensureDeferred
async def test_a_long_last_event_id_or_path_from_a_client_is_cut_in_the_log(daemon: Any, log_events: list[dict]) -> None:
    service = await daemon("""\
        sinks:
          S: {type: sse-server, schema: "a string", server.host: 127.0.0.1, server.port: 0, server.path: /events}
        """)
    port = service.port_of("S")
    client = await subscribe(port, "/events", f"Last-Event-ID: {'i' * 12_000}\r\n")
    await client.close()
    lost = await raw_request(port, f"GET /{'p' * 12_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await lost.wait_for(b"404 Not Found")
    await lost.close()
    connected = [e for e in log_events if "connected to sink" in formatEvent(e)]
    refused = [e for e in log_events if e.get("reason") == "not-found"]
    assert connected and refused
    assert longest_line(connected) < 1000 and longest_line(refused) < 1000
