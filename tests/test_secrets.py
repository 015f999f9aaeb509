"""Issue 12, section 6: credentials in URLs and header values never show.

Seen: a source's ``receiver.url`` with ``user:password@`` or ``?access_token=`` was printed by
``--check``, ``/status.json`` and every connect/retry log line. Checked here on a real
``twistd`` (its whole output: start, a 503, the stream, its end, a rejected and an applied
reload), on ``--check`` and on the ``sse-daemon probe`` command.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from .conftest import TwistdProcess, raw_request, deadline, status, twistd_command, wait_for, write_config
from .sse_servers import Canned, ScriptedServer
from .test_probe import run_cli

SECRETS = ("hunter2-pw", "tok-secret-1", "sig-secret-2", "header-secret-3", "tok-secret-4")


def source_url(port: int, token: str = "tok-secret-1") -> str:
    return f"http://feeder:hunter2-pw@127.0.0.1:{port}/events?access_token={token}&X-Amz-Signature=sig-secret-2&n=1"


def shown_url(port: int) -> str:
    return f"http://***@127.0.0.1:{port}/events?access_token=***&X-Amz-Signature=***&n=1"


def config_text(url: str) -> str:
    return f"""\
streams:
  S: "param1 string"
sources:
  Up:
    type: sse
    stream: S
    receiver.url: "{url}"
    headers: "'X-Api-Key:header-secret-3'"
    reconnect.initial.delay: 0.05
    reconnect.max.delay: 0.2
sinks:
  Out: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0}}
admin:
  port: 0
"""


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} in {where}"


async def get(port: int, path: str) -> bytes:
    client = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await deadline(client.closed)
    return bytes(client.received)


@pytest_twisted.ensureDeferred
async def test_check_logs_status_and_reloads_of_a_real_twistd_never_show_credentials(tmp_path: Path) -> None:
    upstream = ScriptedServer()
    port = upstream.start()
    upstream.script.append(Canned(503))
    config = write_config(tmp_path, config_text(source_url(port)))

    check = subprocess.run(twistd_command("sse-daemon", "--config", str(config), "--check"),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert f"Up: sse from {shown_url(port)} -> stream S" in check.stdout
    assert_no_secret(check.stdout + check.stderr, "--check")

    process, _ = await TwistdProcess.start(config, tmp_path)
    try:
        def seen(text: bytes) -> bool:
            return text in process.output or process.ended

        await wait_for(lambda: seen(b"connected to") and upstream.streams, what="the source to connect after a 503")
        # the credentials went to the upstream, as Basic and in the query, and nowhere else
        assert upstream.seen[-1].headers["authorization"] == "Basic " + base64.b64encode(b"feeder:hunter2-pw").decode()
        assert upstream.seen[-1].headers["x-api-key"] == "header-secret-3"
        admin = int(re.search(rb"listening on 127\.0\.0\.1:(\d+) for the admin listener", process.output).group(1))
        raw = await get(admin, "/status.json")
        assert status(raw) == 200
        figures = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert figures["sources"][0]["url"] == shown_url(port)
        assert_no_secret(raw.decode(), "/status.json")
        assert_no_secret((await get(admin, "/metrics")).decode(), "/metrics")

        upstream.publish(json.dumps({"param1": "x"}))
        upstream.end_streams()
        await wait_for(lambda: seen(b"stream ended"), what="the stream-ended line")
        await wait_for(lambda: upstream.streams, what="the reconnect")

        write_config(tmp_path, config_text(source_url(port).replace("http://", "ftp://")))
        process.signal("HUP")
        await wait_for(lambda: seen(b"the running configuration is unchanged"), what="the rejected reload")
        assert b"reload rejected: " in process.output and b"expected an http:// or https:// URL, found 'ftp://***@" in process.output

        before = len(upstream.seen)
        write_config(tmp_path, config_text(source_url(port, "tok-secret-4")))
        process.signal("HUP")
        await wait_for(lambda: seen(b"configuration reloaded") and process.output.count(b"subscribing to") == 2,
                       what="the applied reload (a changed URL restarts the source)")
        await wait_for(lambda: len(upstream.seen) > before and upstream.streams, what="the restarted source")
        await process.stop("TERM")
    finally:
        await process.kill()
        await upstream.stop()
    output = process.output.decode("utf-8", "replace")
    assert_no_secret(output, "the log")
    lines = output.splitlines()
    for words in ("subscribing to", "HTTP 503", "connected to", "stream ended"):
        assert any(words in line and shown_url(port) in line for line in lines), f"no masked URL in a '{words}' line"


@pytest_twisted.ensureDeferred
async def test_probe_masks_credentials_and_sends_them_as_basic() -> None:
    upstream = ScriptedServer()
    port = upstream.start()
    upstream.publish(json.dumps({"n": 1}))
    try:
        url = source_url(port)
        table = await run_cli("probe", url, "--duration", "0.3", "--no-resume", "-H", "X-Api-Key: header-secret-3")
        as_json = await run_cli("probe", url, "--duration", "0.3", "--no-resume", "--json")
    finally:
        await upstream.stop()
    assert upstream.seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"feeder:hunter2-pw").decode()
    text = (table.output + as_json.output).decode("utf-8", "replace")
    assert_no_secret(text, "probe output")
    assert shown_url(port) in table.output.decode() and json.loads(as_json.output)["url"] == shown_url(port)
    assert table.status in (0, 3), table.output  # a stream, perhaps one that sends nothing more


@pytest.mark.reactor_free
def test_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    from sse_daemon.config.errors import ConfigError
    from sse_daemon.config.validate import validate
    from sse_daemon.config.yamlfile import load_yaml

    cases = [
        "sources:\n  A: {type: sse, schema: 'a string', receiver.url: 'ftp://u:hunter2-pw@h/e?access_token=tok-secret-1'}\n",
        "sources:\n  A: {type: sse, schema: 'a string', receiver.url: 'http://u:hunter2-pw@h:99999/e'}\n",
        "sources:\n  A: {type: sse, schema: 'a string', receiver.url: 'http://u:hunter2-pw@[::1/e'}\n",
        "sources:\n  A: {type: sse, schema: 'a string', receiver.url: 'http://h/e', headers: 'Bearer header-secret-3'}\n",
        "sources:\n  A: {type: sse, schema: 'a string', receiver.url: 'http://h/e', headers: 'Authorization Bearer header-secret-3:x'}\n",
        "sinks:\n  S: {type: log, schema: 'a string'}\nbus: {type: redis, url: 'redis://:hunter2-pw@h:notaport/0'}\n",
        "sinks:\n  S: {type: log, schema: 'a string'}\nbus: {type: redis, url: 'rediss://:hunter2-pw@h/0'}\n",
    ]
    for text in cases:
        with pytest.raises(ConfigError) as caught:
            validate(load_yaml(text, "c.yaml"))
        assert_no_secret(str(caught.value), text)
    # a statement's syntax error quotes its line: the URL in it is masked, the caret stays put
    from sse_daemon.config.statements import load_statements

    with pytest.raises(ConfigError) as caught:
        validate(load_statements("CREATE SOURCE A WITH (type='sse', receiver.url='http://u:hunter2-pw@h/e?token=tok-secret-1') "
                                 "(a string) oops;", "x.sql"))
    text = str(caught.value)
    assert_no_secret(text, "a statement's syntax error")
    line, caret = text.splitlines()[-2:]
    assert "receiver.url='http://***@h/e?token=***'" in line and line[caret.index("^"):].startswith("oops")


@pytest.mark.reactor_free
def test_quoted_lines_do_not_echo_header_values_or_jwt_keys() -> None:
    """Seen: a syntax error (and a Siddhi problem) quotes its line whole, so a `headers` value on it
    (an Authorization or Cookie), an inline HMAC `auth.jwt.key` or a Siddhi app's `basic.auth.password`
    was printed by --check and reloads."""
    from sse_daemon.config.errors import ConfigError
    from sse_daemon.config.siddhi import load_siddhi
    from sse_daemon.config.statements import load_statements
    from sse_daemon.config.validate import validate

    key = "tok-secret-1" + "k" * 32
    cases = [
        (load_statements, "x.sql", "CREATE SOURCE A WITH (type='sse', receiver.url='http://h/e', "
                                   "headers=\"'Authorization:Bearer header-secret-3'\" (a string);", "("),
        (load_statements, "x.sql", "CREATE SOURCE A WITH (type='sse', receiver.url='http://h/e', "
                                   "headers 'Cookie:sid=header-secret-3') (a string);", "'***'"),
        (load_statements, "x.sql", f"CREATE SINK S WITH (type='sse-server', auth.jwt.key = '{key}', auth.type='bearer') oops;", "oops"),
        (load_siddhi, "x.siddhi", "@source(type='sse', receiver.url='http://h/e', headers='Authorization:Bearer header-secret-3', "
                                  "@map(type='xml'))\ndefine stream A (a string);", "'xml'"),
        (load_siddhi, "x.siddhi", f"@sink(type='http', auth.jwt.key=\"\"\"{key}\"\"\")\ndefine stream A (a string);", "'http'"),
        (load_siddhi, "x.siddhi", "@sink(type='sse-server', server.url='http://0.0.0.0:8020/x', basic.auth.password='hunter2-pw', "
                                  "@map(type='xml'))\ndefine stream A (a string);", "'xml'"),
    ]
    for load, name, text, at_caret in cases:
        with pytest.raises(ConfigError) as caught:
            validate(load(text, name))
        shown = str(caught.value)
        assert_no_secret(shown, text)
        lines = shown.splitlines()
        line, caret = next(lines[i - 1:i + 1] for i, text in enumerate(lines) if text.strip() == "^")
        assert line[caret.index("^"):].startswith(at_caret), shown
