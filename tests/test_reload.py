"""Reload: SIGHUP re-reads the configuration; unchanged connectors keep their connections, invalid ones change nothing."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import formatEvent, globalLogPublisher

from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.daemon.reload import Reloader, keys, plan
from sse_daemon.events.schema import Event

from .conftest import RawHttpClient, TwistdProcess, deadline, raw_request, subscribe, wait_for, write_config

BASE = """\
streams:
  S: "n int"
sources:
  In: {type: http, stream: S, receiver.url: "http://127.0.0.1:0/in"}
sinks:
  Keep: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: keep, retry.max: 0}
"""


def v1() -> str:
    return BASE + """\
  Change: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: change, heartbeat.interval: 15}
  Drop: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: drop}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def v2(far_port: int = 1) -> str:
    return BASE + f"""\
  Change: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: change, heartbeat.interval: 30}}
  Added: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: added}}
  Elsewhere: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: {far_port}, server.path: far}}
"""


async def post(port: int, n: int) -> bytes:
    data = b'{"n": %d}' % n
    client = await raw_request(port, b"POST /in HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    await deadline(client.closed)
    return bytes(client.received)


async def get_status(port: int, path: str) -> int:
    client = await raw_request(port, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await deadline(client.closed)
    return int(bytes(client.received).split(b" ", 2)[1])


@pytest.fixture
def log_text():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(e) or "" for e in events)
    globalLogPublisher.removeObserver(events.append)


@pytest.mark.reactor_free
def test_plan_compares_definitions_files_env_and_routes(tmp_path: Path, monkeypatch) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-long-enough-static-token\n")
    protected = f"  Guarded: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: g, auth.type: bearer, auth.tokens.file: {tokens}}}\n"
    with_route = v1().replace('  S: "n int"\n', '  S: "n int"\n  T: "n int"\n') + protected + "routes:\n  - {from: S, to: T}\n"
    old = validate(load_yaml(with_route))
    old_keys = keys(old)
    new = validate(load_yaml("\n" + v2() + protected))  # a blank line first: every line number moves
    result = plan(old, new, old_keys=old_keys)
    assert sorted(result.keep) == ["Guarded", "In", "Keep"], "moving lines changes nothing"
    assert result.restart == ["Change"] and result.remove == ["Drop"] and sorted(result.add) == ["Added", "Elsewhere"]
    assert result.routes_remove == [0] and result.routes_add == []
    assert result.renew == []
    tokens.write_text("another-long-enough-static-token\n")
    renewed = plan(old, new, old_keys=old_keys)
    assert "Guarded" in renewed.keep and renewed.renew == ["Guarded"], "a changed tokens file renews its credentials"
    assert "Guarded" not in renewed.restart, "and does not restart it"
    assert "credentials renewed for Guarded" in renewed.summary()
    monkeypatch.setenv("RELOAD_TEST_TOKENS", "x" * 20)
    env = BASE + "  E: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: e, auth.type: bearer, auth.tokens.env: RELOAD_TEST_TOKENS}\n"
    with_env = validate(load_yaml(env))
    before = keys(with_env)
    assert plan(with_env, with_env, old_keys=before).keep == ["In", "Keep", "E"]
    monkeypatch.setenv("RELOAD_TEST_TOKENS", "y" * 20)
    assert plan(with_env, with_env, old_keys=before).renew == ["E"], "so does a changed variable"
    assert not plan(old, old).changes


@pytest.mark.reactor_free
def test_credentials_are_renewed_in_place_where_this_process_checks_them(tmp_path: Path) -> None:
    """Worker processes hold guards of their own: there a changed file restarts the sink (which a reload
    refuses whole); any other change with it restarts too."""
    tokens = tmp_path / "tokens"
    tokens.write_text("a-long-enough-static-token\n")
    auth = f"auth.type: bearer, auth.tokens.file: {tokens}"
    post = f"  Post: {{type: http, stream: S, receiver.url: 'http://127.0.0.1:0/post', {auth}}}\n"
    config = validate(load_yaml(BASE.replace("sinks:\n", post + "sinks:\n") + (
        f"  Plain: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: p, {auth}}}\n"
        f"  InHub: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: h, hub.path: /hub, {auth}}}\n"
        f"  Pooled: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 9, server.path: w, worker.count: 2, {auth}}}\n")))
    before = keys(config)
    tokens.write_text("another-long-enough-static-token\n")
    result = plan(config, config, old_keys=before)
    assert sorted(result.renew) == ["InHub", "Plain", "Post"]
    assert result.restart == ["Pooled"]
    assert result.refusal is not None and "Pooled" in result.refusal
    moved = validate(load_yaml(BASE + (
        f"  Plain: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: p, heartbeat.interval: 7, {auth}}}\n")))
    assert plan(config, moved, old_keys=before).restart == ["Plain"], "credentials and another option: a restart"


@pytest_twisted.ensureDeferred
async def test_reload_keeps_unchanged_restarts_changed_removes_and_adds(daemon, tmp_path: Path, log_text) -> None:
    service = await daemon(v1())
    path = tmp_path / "sse.yaml"
    reloader = Reloader(service, [str(path)])
    port = service.port_of("Keep")
    keep_service = service.sinks["Keep"]
    keep, change, drop = await subscribe(port, "/keep"), await subscribe(port, "/change"), await subscribe(port, "/drop")
    assert (await post(port, 1)).startswith(b"HTTP/1.1 200")
    for client in (keep, change, drop):
        await client.wait_for(b'"n":1')
    old_id = re.findall(rb"id: (\d+)", bytes(change.received))[-1].decode()

    far_port = free_port()
    write_config(tmp_path, v2(far_port))
    assert await deadline(reloader.reload()) is True
    assert "configuration reloaded: kept In, Keep; restarted Change; removed Drop; added Added, Elsewhere" in log_text()

    await wait_for(lambda: change.is_closed and drop.is_closed, what="the changed and removed sinks to close their streams")
    assert not keep.is_closed and service.sinks["Keep"] is keep_service, "an unchanged sink keeps its subscribers"
    assert service.port_of("Keep") == port, "the shared port stays bound"
    assert (await post(port, 2)).startswith(b"HTTP/1.1 200"), "the unchanged ingest still works"
    await keep.wait_for(b'"n":2')
    assert await get_status(port, "/drop") == 404
    added = await subscribe(port, "/added")
    resumed = await subscribe(port, "/change", headers=f"Last-Event-ID: {old_id}\r\n")
    await resumed.wait_for(b"event: reset\n")  # a new sink has a new history: it says so
    assert service.sinks["Change"].sink.connector.options.heartbeat_interval == 30
    assert service.port_of("Elsewhere") == far_port, "a new port is bound"
    far = RawHttpClient()
    await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", far_port), far))
    far.transport.write(b"GET /far HTTP/1.1\r\nHost: x\r\n\r\n")
    await far.wait_for(b"stream open")
    assert (await post(port, 3)).startswith(b"HTTP/1.1 200")
    for client in (keep, added, far):
        await client.wait_for(b'"n":3')
    for client in (keep, added, resumed, far):
        await client.close()

    write_config(tmp_path, v1())  # and back: the new port is released
    assert await deadline(reloader.reload()) is True
    assert ("127.0.0.1", far_port) not in service.listeners
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listening ports do
        again.bind(("127.0.0.1", far_port))
    assert sorted(service.sinks) == ["Change", "Drop", "Keep"]


@pytest_twisted.ensureDeferred
async def test_invalid_configuration_is_rejected_whole(daemon, tmp_path: Path, log_text) -> None:
    service = await daemon(v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("Keep")
    keep = await subscribe(port, "/keep")
    before = service.config
    write_config(tmp_path, v2().replace("heartbeat.interval: 30", "heartbeat.interval: soon").replace("path: added", "path: added, server.prot: 1"))
    assert await deadline(reloader.reload()) is False
    text = log_text()
    assert "reload rejected: " in text and "option 'heartbeat.interval': expected a number, found 'soon'" in text
    assert "option 'server.prot': unknown option 'server.prot'; did you mean 'server.port'?" in text
    assert "the running configuration is unchanged" in text
    assert service.config is before and sorted(service.sinks) == ["Change", "Drop", "Keep"]
    assert (await post(port, 1)).startswith(b"HTTP/1.1 200")
    await keep.wait_for(b'"n":1')
    assert await get_status(port, "/drop") == 200
    await keep.close()
    assert reloader.counters == {"reloads": 0, "rejected": 1}


@pytest_twisted.ensureDeferred
async def test_a_port_that_cannot_be_bound_rejects_the_reload(daemon, tmp_path: Path, log_text) -> None:
    service = await daemon(v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("Keep")
    keep = await subscribe(port, "/keep")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        far_port = free_port()
        write_config(tmp_path, v2(far_port) + f"  Busy: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: {busy}}}\n")
        assert await deadline(reloader.reload()) is False
    assert f"reload rejected: cannot listen on 127.0.0.1:{busy} for sink 'Busy' at /Busy" in log_text()
    assert not change_made(service)
    assert ("127.0.0.1", far_port) not in service.listeners
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listening ports do
        again.bind(("127.0.0.1", far_port))  # a port bound for the rejected reload is released
    assert not keep.is_closed
    await keep.close()


@pytest_twisted.ensureDeferred
async def test_an_endpoint_twisted_cannot_parse_rejects_the_reload(daemon, tmp_path: Path, log_text) -> None:
    """Seen: a server.endpoint Twisted's parser refuses (``tcp:port=abc``) passed validation, and the
    reload failed with a traceback, leaving the ports it had bound for the new configuration open."""
    service = await daemon(v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    far_port = free_port()
    write_config(tmp_path, v2(far_port) + "  Odd: {type: sse-server, stream: S, server.port: 9, server.endpoint: 'tcp:port=abc'}\n")
    assert await deadline(reloader.reload()) is False
    assert ("reload rejected: cannot listen on 0.0.0.0:9 for sink 'Odd' at /Odd: server.endpoint 'tcp:port=abc' "
            "is not an endpoint Twisted can listen on: invalid literal for int() with base 10: 'abc'") in log_text()
    assert "Traceback" not in log_text() and not change_made(service)
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", far_port))  # released, as for a port in use


def change_made(service) -> bool:
    return "Added" in service.sinks or "Drop" not in service.sinks


@pytest_twisted.ensureDeferred
async def test_real_twistd_reloads_on_sighup(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE)
    process, port = await TwistdProcess.start(config, tmp_path)
    try:
        keep = await subscribe(port, "/keep")
        write_config(tmp_path, BASE + "  Added: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: added}\n")
        process.signal("HUP")
        await wait_for(lambda: b"configuration reloaded: kept In, Keep; added Added" in process.output or process.ended,
                       what="the reload")
        added = await subscribe(port, "/added")
        assert (await post(port, 9)).startswith(b"HTTP/1.1 200")
        await keep.wait_for(b'"n":9')
        await added.wait_for(b'"n":9')
        write_config(tmp_path, "sinks: [oops")
        process.signal("HUP")
        await wait_for(lambda: b"the running configuration is unchanged" in process.output or process.ended, what="the rejection")
        assert not process.ended and not keep.is_closed
        assert b"reload rejected: " in process.output and b"YAML syntax error" in process.output
        await keep.close()
        await added.close()
        await process.stop("TERM")
    finally:
        await process.kill()


@pytest_twisted.ensureDeferred
async def test_a_changed_busy_sink_hands_over_in_stages(daemon, tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    busy = BASE + "  Busy: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: busy, drain.window: 1, drain.batch.min: 2, heartbeat.interval: %s}\n"
    service = await daemon(busy % 15, clock=clock)
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("Busy")
    old = [await subscribe(port, "/busy") for _ in range(4)]
    write_config(tmp_path, busy % 20)
    reloading = reloader.reload()
    await wait_for(lambda: sum(c.is_closed for c in old) == 2, what="the first batch")
    newcomer = await subscribe(port, "/busy")  # already served by the new sink
    assert len(service.sinks["Busy"].sink.subscribers) == 1
    assert not reloading.called, "the reload waits for the old sink's drain"
    clock.advance(1)
    await wait_for(lambda: all(c.is_closed for c in old), what="the last batch")
    assert await deadline(reloading) is True
    assert b"server shutting down" in old[-1].received
    await newcomer.close()


@pytest_twisted.ensureDeferred
async def test_admin_measures_what_a_reload_adds(daemon, tmp_path: Path) -> None:
    """The admin service hooks lag and readiness into connectors a reload builds."""
    admin = "admin: {host: 127.0.0.1, port: 0, ready.grace: 0.2}\n"
    service = await daemon(admin + v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("Keep")
    with_source = admin + v1().replace(
        "sources:\n", f"sources:\n  Up: {{type: sse, stream: S, receiver.url: 'http://127.0.0.1:{free_port()}/none', reconnect.initial.delay: 0.05}}\n"
    )
    write_config(tmp_path, with_source)
    assert await deadline(reloader.reload()) is True
    assert "Up" in service.admin.watches, "the new source's readiness is watched"
    await wait_for(lambda: service.admin.readiness(reactor.seconds())["ready"] is False, what="the unreachable new source to make the daemon not ready")
    change = service.sinks["Change"].sink
    assert change.lag_observer is not None, "the restarted sink's lag is measured"
    assert (await post(port, 1)).startswith(b"HTTP/1.1 200")
    lag_counts = {s.labels["sink"]: s.value for m in service.admin.registry.collect() if m.name == "sse_daemon_sink_lag_seconds" for s in m.samples if s.name.endswith("_count")}
    assert lag_counts["Change"] == 1
    write_config(tmp_path, admin + v1())
    assert await deadline(reloader.reload()) is True
    assert "Up" not in service.admin.watches


def lag_series(service) -> list[str]:
    """The sinks /metrics shows a lag series for."""
    return sorted({s.labels["sink"] for m in service.admin.registry.collect() if m.name == "sse_daemon_sink_lag_seconds" for s in m.samples})


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_lag_of_running_sinks_only(daemon, tmp_path: Path) -> None:
    """A sink a reload removed has no lag series left, nor one that a rejected reload only began to build."""
    admin = "admin: {host: 127.0.0.1, port: 0}\n"
    service = await daemon(admin + v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    assert lag_series(service) == ["Change", "Drop", "Keep"]
    write_config(tmp_path, admin + BASE)
    assert await deadline(reloader.reload()) is True
    assert lag_series(service) == ["Keep"], "the removed sinks' series go with them"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        write_config(tmp_path, admin + BASE + f"  Busy: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: {busy}}}\n")
        assert await deadline(reloader.reload()) is False
    assert lag_series(service) == ["Keep"], "a rejected reload changes nothing, /metrics included"


@pytest_twisted.ensureDeferred
async def test_a_reload_that_touches_a_sink_with_workers_is_rejected(daemon, tmp_path: Path, log_text) -> None:
    """Worker processes hold the sink's port: changing it waits for a restart; other sinks keep serving."""
    pooled = "  Pooled: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: p, worker.count: 2}\n"
    service = await daemon(BASE + pooled)
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    pool = service.sinks["Pooled"]
    write_config(tmp_path, BASE + pooled.replace("worker.count: 2", "worker.count: 3"))
    assert await deadline(reloader.reload()) is False
    assert "reload rejected: Pooled would change" in log_text() and "only by a restart" in log_text()
    assert service.sinks["Pooled"] is pool and reloader.counters == {"reloads": 0, "rejected": 1}
    write_config(tmp_path, BASE + pooled + "  Other: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: o}\n")
    assert await deadline(reloader.reload()) is True, "a change elsewhere is applied, the pool is kept"
    assert service.sinks["Pooled"] is pool and "Other" in service.sinks


@pytest_twisted.ensureDeferred
async def test_a_stream_a_reload_adds_gets_its_admin_live_view(daemon, tmp_path: Path) -> None:
    admin = "admin: {host: 127.0.0.1, port: 0}\n"
    service = await daemon(admin + v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    admin_port = service.admin.port
    with_t = admin + v1().replace('  S: "n int"\n', '  S: "n int"\n  T: "word string"\n') + \
        "  TOut: {type: sse-server, stream: T, server.host: 127.0.0.1, server.port: 0, server.path: t}\n"
    write_config(tmp_path, with_t)
    assert await deadline(reloader.reload()) is True
    viewer = await subscribe(admin_port, "/events/T")
    service.bus.publish("T", [Event({"word": "new"})])
    await viewer.wait_for(b'"word":"new"')
    write_config(tmp_path, admin + v1())
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: viewer.is_closed, what="the live view of the removed stream to close")
    assert await get_status(admin_port, "/events/T") == 404 and "T" not in service.admin.live
    assert await get_status(admin_port, "/events/S") == 200, "the other streams' views stay"


@pytest_twisted.ensureDeferred
async def test_a_stream_declared_or_dropped_alone_gains_or_loses_its_live_view(daemon, tmp_path: Path) -> None:
    """A stream under streams: that no connector uses yet changes no connector: its live view follows all the same."""
    admin = "admin: {host: 127.0.0.1, port: 0}\n"
    service = await daemon(admin + v1())
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    admin_port = service.admin.port
    write_config(tmp_path, admin + v1().replace('  S: "n int"\n', '  S: "n int"\n  T: "word string"\n'))
    assert await deadline(reloader.reload()) is True
    viewer = await subscribe(admin_port, "/events/T")
    service.bus.publish("T", [Event({"word": "declared"})])
    await viewer.wait_for(b'"word":"declared"')
    write_config(tmp_path, admin + v1())
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: viewer.is_closed, what="the live view of the dropped stream to close")
    assert await get_status(admin_port, "/events/T") == 404 and "T" not in service.admin.live


@pytest_twisted.ensureDeferred
async def test_routes_between_the_same_two_streams_start_and_reload(daemon, tmp_path: Path) -> None:
    """Several routes from one stream into another (a condition split over several routes) are each their own."""
    streams = v1().replace('  S: "n int"\n', '  S: "n int"\n  T: "n int"\n') + \
        "  TOut: {type: sse-server, stream: T, server.host: 127.0.0.1, server.port: 0, server.path: t}\n"
    high, low = "  - {from: S, to: T, where: n > 10}\n", "  - {from: S, to: T, where: n < 0}\n"
    service = await daemon(streams + "routes:\n" + high + low)
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("Keep")
    viewer = await subscribe(service.port_of("TOut"), "/t")
    for n in (11, 5, -1):
        assert (await post(port, n)).startswith(b"HTTP/1.1 200")
    await viewer.wait_for(b'"n":-1')
    assert b'"n":5' not in viewer.received and b'"n":11' in viewer.received
    write_config(tmp_path, streams + "routes:\n" + high)
    assert await deadline(reloader.reload()) is True
    assert [str(r.route) for r in service.routes] == ["S -> T where n > 10"]
    write_config(tmp_path, streams + "routes:\n" + high + low)
    assert await deadline(reloader.reload()) is True, "a second route between the same streams is added"
    assert sorted(str(r.route) for r in service.routes) == ["S -> T where n < 0", "S -> T where n > 10"]
    assert (await post(port, -2)).startswith(b"HTTP/1.1 200")
    await viewer.wait_for(b'"n":-2')
    await viewer.close()
