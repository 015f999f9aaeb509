"""``sse-daemon probe``: this project's sink, the same sink behind a buffering nginx, and URLs that are no streams."""

from __future__ import annotations

import gzip
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import LoopingCall
from twisted.web import server
from twisted.web.resource import Resource

from sse_daemon.ops.probe import (
    EXIT_DEGRADED,
    EXIT_NOT_SSE,
    EXIT_OK,
    Read,
    format_report,
    judge_buffering,
    judge_heartbeat,
    judge_resume,
    probe,
)
from sse_daemon.events.schema import Event

from .conftest import deadline, sleep, wait_for
from .system_tools import require

NOW = 1795000000.0
SINK = """\
sources:
  In: {type: http, stream: S, schema: "param1 string", receiver.url: "http://127.0.0.1:0/publish"}
sinks:
  S: {type: sse-server, server.host: 127.0.0.1, server.port: 0, server.path: testsse, heartbeat.interval: 0.25}
"""


# --------------------------------------------------------------------------- the heuristic, on made-up arrivals


def read(at: float, *ids: str, comments: int = 0) -> Read:
    return Read(at, 100, list(ids), comments)


def stamp(seconds: float) -> str:
    return str(int((NOW + seconds) * 1_000_000))  # this daemon's ids: microseconds since the epoch


@pytest.mark.reactor_free
def test_events_and_heartbeats_arriving_as_written_are_unbuffered() -> None:
    reads = [read(NOW, comments=1)]  # the opening comment with the head
    for n in range(1, 20):
        reads.append(read(NOW + n * 0.1, stamp(n * 0.1 - 0.002)))
        if n % 5 == 0:
            reads.append(read(NOW + n * 0.1 + 0.05, comments=1))
    verdict = judge_buffering(reads, NOW)
    assert verdict["verdict"] == "unbuffered" and verdict["held_back"] == []
    assert verdict["ids_are_timestamps"] and verdict["lag_spread"] < 0.001
    assert judge_heartbeat(reads, False)["interval"] == pytest.approx(0.5)


@pytest.mark.reactor_free
def test_heartbeats_together_or_old_events_together_mean_buffered() -> None:
    head = read(NOW, comments=1)
    hearts = [head, read(NOW + 1, comments=1), read(NOW + 3.0, comments=2), read(NOW + 3.005, comments=1), read(NOW + 6, comments=3)]
    assert judge_buffering(hearts, NOW)["verdict"] == "buffered"
    events = [head, read(NOW + 2, *[stamp(t / 10) for t in range(5, 20)])]  # 1.4 s of events in one read
    verdict = judge_buffering(events, NOW)
    assert verdict["verdict"] == "buffered" and "written 1.40s apart" in verdict["held_back"][0]
    # one short hold is the network's doing, not a proxy's
    once = [head, read(NOW + 0.1, stamp(0.1)), read(NOW + 0.7, stamp(0.3), stamp(0.7)), read(NOW + 0.9, stamp(0.9))]
    verdict = judge_buffering(once, NOW)
    assert verdict["verdict"] == "unbuffered" and len(verdict["held_back"]) == 1
    # a backlog with the head is not held back: servers send history there
    backlog = [read(NOW, *[stamp(-t) for t in range(30, 0, -1)], comments=2), read(NOW + 0.5, stamp(0.5)), read(NOW + 1, comments=1)]
    assert judge_buffering(backlog, NOW)["verdict"] == "unbuffered"
    # counters as ids are no clock: only heartbeats can tell
    assert not judge_buffering([head, read(NOW + 1, "1", "2", "3")], NOW)["ids_are_timestamps"]
    assert judge_buffering([head], NOW)["verdict"] == "unknown"


@pytest.mark.reactor_free
def test_resume_verdicts() -> None:
    ids = ["1", "2", "3", "4", "5"]
    assert judge_resume(ids, "3", ["4", "5"])["verdict"] == "ok"
    assert judge_resume(ids, "3", ["4"])["verdict"] == "ok"
    assert judge_resume(ids, "3", ["3", "4"])["verdict"] == "repeats"
    assert judge_resume(ids, "3", ["5"])["verdict"] == "no-replay"
    assert judge_resume(ids, "3", [])["verdict"] == "no-replay"
    assert judge_resume(ids, "5", [])["verdict"] == "untested"
    assert judge_resume(ids, "3", ["4", "6"])["verdict"] == "out-of-order"
    assert judge_resume([], None, None)["verdict"] == "no-ids"
    assert judge_resume(["1"], None, None)["verdict"] == "untested"


# --------------------------------------------------------------------------- against real servers


def publisher(service: Any, every: float = 0.04) -> LoopingCall:
    """Events into the sink's stream at a steady pace, as a live feed would."""
    count = iter(range(1_000_000))
    loop = LoopingCall(lambda: service.bus.publish("S", [Event({"param1": f"event {next(count)} " + "x" * 20}, ingress=reactor.seconds())]))
    loop.start(every)
    return loop


@pytest_twisted.ensureDeferred
async def test_probe_of_this_projects_sink(daemon) -> None:
    service = await daemon(SINK)
    loop = publisher(service)
    try:
        report = await deadline(probe(f"http://127.0.0.1:{service.port_of('S')}/testsse", 2.0, reactor))
    finally:
        loop.stop()
    assert report.verdict == "ok" and report.exit_code == EXIT_OK, format_report(report)
    assert [p for p in report.problems if p.severity != "info"] == []
    assert report.status == 200 and report.http_version == "HTTP/1.1" and report.framing == "chunked"
    assert report.content_type == "text/event-stream; charset=utf-8"
    assert report.headers["cache-control"] == "no-cache"
    assert report.time_to_head < 1 and report.time_to_first_body_byte < 1
    assert report.events > 20 and report.events_with_ids == report.events
    assert report.buffering["verdict"] == "unbuffered" and report.buffering["ids_are_timestamps"]
    assert report.buffering["lag_spread"] < 0.2
    assert report.heartbeat["interval"] == pytest.approx(0.25, abs=0.1)
    assert report.ids == {"sent": True, "all_events_have_ids": True, "timestamps": True}
    assert report.resume["verdict"] == "ok", report.resume
    assert report.retry is not None, "this sink sends each subscriber a retry: hint"
    text = format_report(report)
    assert "verdict: a working SSE stream" in text and "every 0.2" in text


def require_nginx() -> None:
    require("/usr/sbin/nginx", "nginx")


class _Process(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended = False
        self.status: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended = True
        self.status = reason.value.exitCode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def port_answers(port: int, process: _Process) -> None:
    end = reactor.seconds() + 20
    while True:
        try:
            p = await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol.Protocol()), 2)
            p.transport.loseConnection()
            return
        except Exception:
            assert not process.ended, process.output
            assert reactor.seconds() < end, f"nothing listens on {port}"
            await sleep(0.05)


@pytest.fixture
def nginx(tmp_path: Path):
    """``await nginx(upstream_port)``: an nginx on a free port that buffers what it proxies, as many do by default."""
    require_nginx()
    started: list[tuple[_Process, Any]] = []

    async def start(upstream: int) -> int:
        port = free_port()
        root = tmp_path / "nginx"
        root.mkdir()
        (root / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_buffering on;                   # the default
      proxy_ignore_headers X-Accel-Buffering;  # as if our sink's 'no' never reached it
      proxy_buffer_size 1k;                 # small buffers: bursts within a short test
      proxy_buffers 4 1k;
      proxy_busy_buffers_size 1k;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
""")
        process = _Process()
        transport = reactor.spawnProcess(
            process, "/usr/sbin/nginx", ["nginx", "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")],
            env={"PATH": os.environ.get("PATH", "")},
        )
        started.append((process, transport))
        await port_answers(port, process)
        return port

    yield start
    for process, transport in started:
        if not process.ended:
            transport.signalProcess("TERM")
        pytest_twisted.blockon(deadline(wait_for(lambda: process.ended, what="nginx to stop")))


@pytest_twisted.ensureDeferred
async def test_probe_through_a_buffering_nginx_says_buffered(daemon, nginx) -> None:
    service = await daemon(SINK)
    proxy = await nginx(service.port_of("S"))
    loop = publisher(service)
    try:
        report = await deadline(probe(f"http://127.0.0.1:{proxy}/testsse", 3.0, reactor))
    finally:
        loop.stop()
    assert report.verdict == "buffered" and report.exit_code == EXIT_DEGRADED, format_report(report)
    assert report.headers["server"].startswith("nginx")
    assert report.buffering["verdict"] == "buffered"
    assert report.buffering["largest_burst"] >= 5
    assert report.buffering["lag_spread"] > 0.25
    assert report.heartbeat["interval"] is None, "a buffered cadence is not reported as the server's"
    assert any("buffers the stream" in p.text for p in report.problems)
    assert report.events > 10, "events do arrive, late"


class Odd(Resource):
    """Endpoints that are no streams, or streams that break the rules."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        path = request.path.decode()
        if path == "/plain":
            request.setHeader(b"Content-Type", b"text/plain")
            return b"hello\n"
        if path == "/gone":
            request.setResponseCode(404)
            return b"no\n"
        if path == "/empty":
            request.setResponseCode(204)
            return b""
        if path == "/ndjson":  # a stream, but not SSE, and endless
            request.setHeader(b"Content-Type", b"application/x-ndjson")
            request.write(b'{"n": 1}\n')
            return server.NOT_DONE_YET
        body = b"id: 1\ndata: one\n\nid: 2\ndata: two\n\n"
        request.setHeader(b"Content-Type", b"text/event-stream; charset=latin-1")
        if path == "/gzip":
            request.setHeader(b"Content-Encoding", b"gzip")
            return gzip.compress(body)
        return body  # /finite: Content-Length, no Cache-Control, ends at once


@pytest_twisted.ensureDeferred
async def test_probe_reports_deviations_and_fails_non_streams() -> None:
    site = server.Site(Odd())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        plain = await deadline(probe(base + "/plain", 0.5, reactor))
        assert plain.verdict == "not-sse" and plain.exit_code == EXIT_NOT_SSE
        assert "Content-Type is 'text/plain', expected text/event-stream" in plain.problems[0].text
        gone = await deadline(probe(base + "/gone", 0.5, reactor))
        assert gone.exit_code == EXIT_NOT_SSE and "status 404" in gone.problems[0].text
        endless = await deadline(probe(base + "/ndjson", 30, reactor), 10)
        assert endless.exit_code == EXIT_NOT_SSE, "judged on its head, without reading an endless body"
        empty = await deadline(probe(base + "/empty", 0.5, reactor))
        assert empty.exit_code == EXIT_NOT_SSE and "204 tells EventSource clients to stop" in empty.problems[0].text

        finite = await deadline(probe(base + "/finite", 0.5, reactor))
        texts = " | ".join(p.text for p in finite.problems)
        assert finite.exit_code == EXIT_OK and finite.events == 2, texts
        assert "charset=latin-1" in texts and "no Cache-Control: no-cache" in texts
        assert "Content-Length: 34 on a stream" in texts and "the server ended the stream" in texts
        assert finite.ids["timestamps"] is False and finite.resume["verdict"] in ("untested", "no-replay", "repeats", "failed")

        zipped = await deadline(probe(base + "/gzip", 0.5, reactor))
        assert zipped.events == 2, "decoded like a browser would"
        assert any("Content-Encoding: gzip" in p.text for p in zipped.problems)
    finally:
        await deadline(maybeDeferred(port.stopListening))

    unreachable = await deadline(probe(f"http://127.0.0.1:{free_port()}/x", 0.5, reactor, timeout=2))
    assert unreachable.verdict == "unreachable" and unreachable.exit_code == EXIT_NOT_SSE
    assert "connection refused" in unreachable.problems[0].text.lower()


@pytest_twisted.ensureDeferred
async def test_a_url_that_cannot_be_parsed_is_reported_not_raised() -> None:
    """The operator's typo is a report with exit 1, as an unreachable URL is; not a traceback."""
    for url in ("http://[::1/x", "http://user:pw@[::1/x"):
        report = await deadline(probe(url, 0.5, reactor, timeout=2))
        assert report.verdict == "unreachable" and report.exit_code == EXIT_NOT_SSE, url
        assert "not a URL" in report.problems[0].text and "pw" not in format_report(report)


async def run_cli(*args: str) -> _Process:
    process = _Process()
    command = str(Path(sys.executable).parent / "sse-daemon")
    reactor.spawnProcess(process, command, [command, *args], env=os.environ.copy())
    await wait_for(lambda: process.ended, what="sse-daemon to finish")
    return process


@pytest_twisted.ensureDeferred
async def test_the_console_script_prints_a_table_or_json_and_exits_by_verdict(daemon) -> None:
    service = await daemon(SINK + "admin: {port: 0}\n")
    loop = publisher(service, 0.1)
    try:
        url = f"http://127.0.0.1:{service.port_of('S')}/testsse"
        as_json = await run_cli("probe", url, "--duration", "1.2", "--json")
        assert as_json.status == 0, as_json.output
        report = json.loads(as_json.output)
        assert report["verdict"] == "ok" and report["status"] == 200 and report["resume"]["verdict"] == "ok"
        table = await run_cli("probe", url, "--duration", "0.6", "--no-resume", "-H", "Authorization: Bearer secret-token")
        assert table.status == 0
        assert b"verdict: a working SSE stream" in table.output and b"secret-token" not in table.output
    finally:
        loop.stop()
    not_sse = await run_cli("probe", f"http://127.0.0.1:{service.admin.port}/healthz", "--duration", "0.5")
    assert not_sse.status == 1 and b"not a working SSE stream" in not_sse.output
    ready = await run_cli("wait-ready", f"http://127.0.0.1:{service.admin.port}/readyz", "--timeout", "5")
    assert ready.status == 0 and b"ready:" in ready.output


@pytest_twisted.ensureDeferred
async def test_a_stream_without_events_leaves_ids_and_resume_untested() -> None:
    """Seen: a quiet window made the probe say "ids: not sent ... clients cannot resume"
    of a sink that sends ids with every event; with no event, nothing is known about them."""
    from .sse_servers import ScriptedServer

    upstream = ScriptedServer()  # a stream open with a comment, and no event while the probe listens
    upstream.start()
    try:
        report = await deadline(probe(upstream.url(), 0.3, reactor))
    finally:
        await upstream.stop()
    assert report.events == 0 and report.ids["sent"] is None
    assert report.resume["verdict"] == "untested" and "no event arrived" in report.resume["detail"]
    text = format_report(report)
    assert "untested (no event arrived)" in text and "not sent" not in text.split("retry")[0]
    assert "cannot resume" not in text
    assert judge_resume([], None, None, events=3)["verdict"] == "no-ids", "events without ids: clients cannot resume"


@pytest.mark.reactor_free
def test_wait_ready_takes_an_answer_that_is_not_http_as_not_ready(capsys) -> None:
    """Something else on the admin port (or a half-started one) answering garbage: not ready, said so, exit 1,
    not a traceback from http.client."""
    import socket
    import threading

    from sse_daemon.cli import wait_ready

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)  # the loop looks at ``done`` between accepts
    port = server.getsockname()[1]
    done = threading.Event()

    def answer_garbage() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(1024)
                connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        assert wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=0.3, interval=0.1) == 1
    finally:
        done.set()
        thread.join(10)
        server.close()
    assert "not ready after 0.3s" in capsys.readouterr().err
