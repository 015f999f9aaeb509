"""The real command: plugin discovery after a normal install, --check, a running twistd, bind errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from .conftest import TwistdProcess, deadline, subscribe, twistd_command, write_config

ROOT = Path(__file__).resolve().parent.parent


twistd = twistd_command


@pytest.mark.reactor_free
def test_plugin_is_discovered_after_a_normal_install(tmp_path: Path) -> None:
    """Build and install the package (not editable) into a fresh target and ask Twisted for plugins."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        check=True, cwd=tmp_path, capture_output=True,
    )
    assert (target / "twisted" / "plugins" / "sse_daemon_plugin.py").exists()
    assert not (target / "twisted" / "__init__.py").exists(), "must not shadow Twisted's own package"
    code = (
        "from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker; "
        "import sse_daemon; "
        "print(sse_daemon.__file__); print([p.tapname for p in getPlugins(IServiceMaker)])"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0].startswith(str(target)), "the installed copy is the one imported"
    assert "'sse-daemon'" in out


@pytest.mark.reactor_free
def test_check_prints_a_summary_or_every_error(tmp_path: Path) -> None:
    good = subprocess.run(twistd("sse-daemon", "--config", str(ROOT / "etc" / "sse-daemon.yaml"), "--check"),
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "PublishStream: sse-server on 127.0.0.1:8020/testsse <- stream PublishStream" in good.stdout
    bad = write_config(tmp_path, "sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.prot: 1\n")
    result = subprocess.run(twistd("sse-daemon", "--config", str(bad), "--check"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{bad}:5: sink 'S': option 'server.prot': unknown option 'server.prot'; did you mean 'server.port'?" in result.stderr
    assert f"{bad}:2: sink 'S': option 'server.port': 'server.port' is required" in result.stderr


@pytest.mark.reactor_free
def test_bind_failure_exits_non_zero_naming_connector_and_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"sinks:\n  Busy:\n    type: sse-server\n    schema: 'a string'\n    server.host: 127.0.0.1\n    server.port: {port}\n")
        result = subprocess.run(twistd("-n", "--pidfile=", "sse-daemon", "--config", str(config)),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for sink 'Busy' at /Busy" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.reactor_free
def test_an_endpoint_twisted_cannot_parse_fails_check_and_start_alike(tmp_path: Path) -> None:
    """Seen: ``server.endpoint: 'tcp:port=abc'`` passed --check, and starting ended in a traceback."""
    config = write_config(tmp_path, "sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 9\n"
                                    "    server.endpoint: 'tcp:port=abc'\n")
    reason = "server.endpoint 'tcp:port=abc' is not an endpoint Twisted can listen on: invalid literal for int() with base 10: 'abc'"
    check = subprocess.run(twistd("sse-daemon", "--config", str(config), "--check"), capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and check.stdout == ""
    assert f"{config}:2: sink 'S': option 'server.endpoint': {reason}" in check.stderr
    start = subprocess.run(twistd("-n", "--pidfile=", "sse-daemon", "--config", str(config)), capture_output=True, text=True, timeout=60)
    assert start.returncode == 1
    assert f"cannot listen on 0.0.0.0:9 for sink 'S' at /S: {reason}" in start.stdout + start.stderr
    assert "Traceback" not in start.stdout + start.stderr


@pytest_twisted.ensureDeferred
async def test_real_twistd_serves_an_event(tmp_path: Path) -> None:
    config = write_config(tmp_path, """\
        sources:
          In: {type: http, stream: S, schema: "param1 string", receiver.url: "http://127.0.0.1:0/publish"}
        sinks:
          S: {type: sse-server, server.host: 127.0.0.1, server.port: 0, server.path: testsse}
        """)
    process, port = await TwistdProcess.start(config, tmp_path)
    try:
        client = await subscribe(port, "/testsse")
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await deadline(treq.post(f"http://127.0.0.1:{port}/publish", data=b'{"param1":"from twistd"}', pool=pool))
        assert response.code == 200
        await deadline(treq.content(response))
        await client.wait_for(b'data: {"event":{"param1":"from twistd"}}\n\n')
        await process.stop("TERM")
        await deadline(client.closed)
        assert process.reason.value.exitCode == 0, process.output
        assert b"Server Shut Down." in process.output
    finally:
        await process.kill()
