"""Issue 12, section 6: the admin listener and secrets.

- a ``Host`` that is not the admin listener's (DNS rebinding) is refused with 421, counted, logged sampled;
- ``auth.type`` on the admin section (basic, bearer or either) guards everything but /healthz and /readyz;
- without admin auth, the events of a stream a protected sink serves are not served here;
- credentials in URLs and header values never show: ``--check``, logs, /status.json, probe, reload.

Over real sockets on 127.0.0.1; a real ``twistd`` where the output of the process is the point.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent

from sse_daemon.ops.admin import HostPolicy, host_name, protected_streams
from sse_daemon.config.errors import ConfigError
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.events.schema import Event

from .conftest import deadline, header, raw_request, status, wait_for, write_config
from .sse_servers import ScriptedServer

TOKEN = "admin-token-0123456789abcdef"
SINK_TOKEN = "sink-token-0123456789abcdef"


async def get(port: int, path: str, host: str | None = "127.0.0.1", headers: str = "", until: bytes | None = None) -> bytes:
    """One request; the whole answer (or, for a stream, everything up to ``until``)."""
    host_line = f"Host: {host}\r\n" if host is not None else ""
    client = await raw_request(port, f"GET {path} HTTP/1.1\r\n{host_line}Connection: close\r\n{headers}\r\n".encode())
    if until is not None:
        received = await client.wait_for(until)
        await client.close()
        return received
    await deadline(client.closed)
    return bytes(client.received)


def body(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}\r\n"


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() + "\r\n"


def admin_rejected(metrics: bytes, reason: str) -> float:
    found = re.search(rb'sse_daemon_admin_requests_rejected_total\{reason="%s"\} (\S+)' % reason.encode(), metrics)
    return float(found.group(1)) if found else 0.0


# --------------------------------------------------------------------------- pure


@pytest.mark.reactor_free
@pytest.mark.parametrize("header_value, name", [
    (b"127.0.0.1:9100", "127.0.0.1"),
    (b"LOCALHOST", "localhost"),
    (b"localhost.:80", "localhost"),
    (b"[::1]:9100", "::1"),
    (b"[::1]", "::1"),
    (b"Status.Example.com", "status.example.com"),
    (b"evil.example:9100", "evil.example"),
    (b"[::1", None),
    (b"[::1]x", None),
    (b"host:port", None),
    (b"caf\xc3\xa9.example", None),
    (b"a/b", None),
    (b"user@host", None),
])
def test_host_names(header_value: bytes, name: str | None) -> None:
    assert host_name(header_value) == name


@pytest.mark.reactor_free
def test_host_policy() -> None:
    local = HostPolicy.for_admin("127.0.0.1")
    for ok in (b"127.0.0.1:9100", b"localhost", b"app.localhost:9100", b"[::1]:9100"):
        assert local.allows([ok], "127.0.0.1"), ok
    for refused in (b"evil.example", b"evil.example:9100", b"127.0.0.1.nip.io", b"localhost.evil.example", b"10.0.0.5", b"[::1"):
        assert not local.allows([refused], "127.0.0.1"), refused
    assert local.allows(None, "127.0.0.1") and local.allows([], "127.0.0.1"), "HTTP/1.0 without Host: no browser"
    assert not local.allows([b"localhost", b"evil.example"], "127.0.0.1"), "every Host header must pass"
    wildcard = HostPolicy.for_admin("0.0.0.0")
    assert wildcard.allows([b"10.0.0.5:9100"], "10.0.0.5"), "the address the request came in on"
    assert wildcard.allows([b"10.0.0.5"], "::ffff:10.0.0.5")
    assert not wildcard.allows([b"10.0.0.6"], "10.0.0.5") and not wildcard.allows([b"0.0.0.0"], "10.0.0.5")
    bound = HostPolicy.for_admin("10.0.0.5")
    assert bound.allows([b"10.0.0.5:9100"], "127.0.0.1")
    named = HostPolicy.for_admin("127.0.0.1", ("status.example.com",))
    assert named.allows([b"status.example.com:443"], "127.0.0.1") and not named.allows([b"other.example.com"], "127.0.0.1")
    assert HostPolicy.for_admin("127.0.0.1", ("*",)).allows([b"evil.example"], "127.0.0.1")


@pytest.mark.reactor_free
def test_protected_streams_follow_routes_upstream(tmp_path: Path) -> None:
    tokens = write_config(tmp_path, SINK_TOKEN + "\n", "tokens")
    config = validate(load_yaml(f"""\
streams: {{A: "n int", B: "n int", C: "n int", D: "n int"}}
sinks:
  Open: {{type: sse-server, stream: A, server.port: 1}}
  Closed: {{type: sse-server, stream: C, server.port: 1, server.path: c, auth.type: bearer, auth.tokens.file: {tokens}}}
  Logged: {{type: log, stream: D}}
routes:
  - {{from: A, to: B}}
  - {{from: B, to: C}}
  - {{from: C, to: D}}
""", "p.yaml"))
    assert protected_streams(config) == {"A", "B", "C"}, "A and B feed C; D only gets C's events and has no protected sink"


# --------------------------------------------------------------------------- over sockets, in process


def streams_config(tmp_path: Path, upstream: str, admin: str = "") -> str:
    """Secret is served by a sink with auth and fed by an SSE source and a route; Open is public."""
    tokens = write_config(tmp_path, SINK_TOKEN + "\n", "sink-tokens")
    return f"""\
streams:
  Secret: "param1 string"
  Feed: "param1 string"
  Open: "param1 string"
sources:
  Up: {{type: sse, stream: Secret, receiver.url: "{upstream}", reconnect.initial.delay: 0.05, reconnect.max.delay: 0.2}}
  In: {{type: http, stream: Open, receiver.url: "http://127.0.0.1:0/in"}}
sinks:
  Private: {{type: sse-server, stream: Secret, server.host: 127.0.0.1, server.port: 0, auth.type: bearer, auth.tokens.file: {tokens}}}
  Public: {{type: sse-server, stream: Open, server.host: 127.0.0.1, server.port: 0}}
routes:
  - {{from: Feed, to: Secret}}
admin:
  port: 0
{admin}"""


def admin_auth(tmp_path: Path) -> str:
    tokens = write_config(tmp_path, TOKEN + "\n", "admin-tokens")
    users = write_config(tmp_path, "ops:" + bcrypt.hashpw(b"opens-sesame", bcrypt.gensalt(rounds=4)).decode() + "\n", "admin-users")
    return f"""\
  auth.type: basic, bearer
  auth.tokens.file: {tokens}
  auth.users.file: {users}
"""


@pytest.fixture
def upstream():
    server = ScriptedServer()
    server.start()
    yield server
    pytest_twisted.blockon(deadline(server.stop()))


@pytest_twisted.ensureDeferred
async def test_a_foreign_host_is_refused_counted_and_logged_sampled(daemon, tmp_path: Path, upstream, log_events) -> None:
    """Seen: the admin listener answered any Host, so a DNS-rebinding page (evil.example
    resolving to 127.0.0.1) could read /status.json and every stream's live view."""
    service = await daemon(streams_config(tmp_path, upstream.url()))
    port = service.admin.port
    refused = 0
    for path in ("/status.json", "/events/Open", "/metrics", "/", "/healthz", "/readyz"):
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}"):
            raw = await get(port, path, host)
            assert status(raw) == 421, (path, host, raw[:200])
            assert body(raw)["reason"] == "host-not-allowed" and b"every stream" not in raw
            refused += 1
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"app.localhost:{port}", None):
        assert status(await get(port, "/status.json", host)) == 200, host
    await get(port, "/events/Open", f"localhost:{port}", until=b"stream open")
    for _ in range(30):  # bounded: the log must not grow with them
        await get(port, "/status.json", "evil.example")
    assert admin_rejected(await get(port, "/metrics"), "host-not-allowed") == refused + 30
    lines = [e for e in log_events if e.get("reason") == "host-not-allowed"]
    assert 1 <= len(lines) <= 10, f"{len(lines)} log lines for {refused + 30} refusals"
    assert "evil.example" not in formatEvent(lines[0]), "the attacker's text is not echoed"


@pytest_twisted.ensureDeferred
async def test_allowed_hosts_adds_names(daemon, tmp_path: Path, upstream) -> None:
    service = await daemon(streams_config(tmp_path, upstream.url(), "  allowed.hosts: [status.example.com]\n"))
    port = service.admin.port
    assert status(await get(port, "/status.json", f"status.example.com:{port}")) == 200
    assert status(await get(port, "/status.json", f"other.example.com:{port}")) == 421


@pytest_twisted.ensureDeferred
async def test_without_admin_auth_a_protected_streams_events_are_not_served(daemon, tmp_path: Path, upstream) -> None:
    """Seen: /events/<stream> served the events of a sink that requires auth, and /status.json
    its last event id, to anyone who could reach the admin port."""
    service = await daemon(streams_config(tmp_path, upstream.url()))
    port = service.admin.port
    upstream.publish(json.dumps({"param1": "classified"}), id="id-classified")
    await wait_for(lambda: service.sources["Up"].counters["events_in"] == 1, what="the upstream event")
    for stream in ("Secret", "Feed"):  # Feed routes into Secret: it carries what Secret holds
        raw = await get(port, f"/events/{stream}")
        assert status(raw) == 403 and body(raw)["reason"] == "protected-stream", raw
        assert b"classified" not in raw
    viewer = await raw_request(port, b"GET /events/Open HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await viewer.wait_for(b"stream open")
    service.bus.publish("Open", [Event({"param1": "public"}, ingress=reactor.seconds())])
    await viewer.wait_for(b'"param1":"public"')
    await viewer.close()

    raw = await get(port, "/status.json")
    figures = body(raw)
    assert b"classified" not in raw and b"id-classified" not in raw
    up = next(s for s in figures["sources"] if s["name"] == "Up")
    assert up["last_event_id"] is None and up["events_in"] == 1, "counters yes, the stream's data no"
    assert [view["stream"] for view in figures["admin"]["live"]] == ["Open"]
    assert figures["admin"]["protected"] == ["Feed", "Secret"] and figures["admin"]["auth"] == "none"
    assert {s["name"]: s["protected"] for s in figures["streams"]} == {"Secret": True, "Feed": True, "Open": False}
    assert admin_rejected(await get(port, "/metrics"), "protected-stream") == 2
    # the sink itself still serves its token holders
    private = await get(service.port_of("Private"), "/Private", headers=bearer(SINK_TOKEN), until=b"stream open")
    assert status(private) == 200


@pytest_twisted.ensureDeferred
async def test_admin_auth_guards_all_but_health_with_basic_or_bearer(daemon, tmp_path: Path, upstream, log_events) -> None:
    service = await daemon(streams_config(tmp_path, upstream.url(), admin_auth(tmp_path)))
    port = service.admin.port
    upstream.publish(json.dumps({"param1": "classified"}), id="id-classified")
    await wait_for(lambda: service.sources["Up"].counters["events_in"] == 1, what="the upstream event")

    for path in ("/status.json", "/metrics", "/", "/status.js", "/events/Secret", "/events/Open"):
        raw = await get(port, path)
        assert status(raw) == 401, (path, raw[:300])
        assert header(raw, "WWW-Authenticate") == 'Basic realm="sse-daemon admin", charset="UTF-8"', "a browser is asked for a password"
        assert b"classified" not in raw
    assert status(await get(port, "/status.json", headers=bearer("wrong-token-0123456789"))) == 401
    assert status(await get(port, "/status.json", headers=basic("ops", "wrong"))) == 401
    assert status(await get(port, "/status.json", headers=basic("nobody", "opens-sesame"))) == 401
    for path in ("/healthz", "/readyz"):  # probes need no credentials
        assert status(await get(port, path)) in (200, 503)
    assert status(await get(port, "/status.json", "evil.example", bearer(TOKEN))) == 421, "Host is checked first"

    for credentials in (bearer(TOKEN), basic("ops", "opens-sesame")):
        raw = await get(port, "/status.json", headers=credentials)
        assert status(raw) == 200
        figures = body(raw)
        assert next(s for s in figures["sources"] if s["name"] == "Up")["last_event_id"] == "id-classified"
        assert {view["stream"] for view in figures["admin"]["live"]} == {"Secret", "Feed", "Open"}
        assert figures["admin"]["protected"] == [] and figures["admin"]["auth"] == ["basic", "bearer"]
    viewer = await raw_request(port, f"GET /events/Secret HTTP/1.1\r\nHost: 127.0.0.1\r\n{bearer(TOKEN)}\r\n".encode())
    await viewer.wait_for(b"stream open")
    upstream.publish(json.dumps({"param1": "for admins"}), id="id-2")
    await viewer.wait_for(b'"param1":"for admins"')
    await viewer.close()
    metrics = await get(port, "/metrics", headers=basic("ops", "opens-sesame"))
    assert status(metrics) == 200
    assert admin_rejected(metrics, "missing-credentials") == 6 and admin_rejected(metrics, "host-not-allowed") == 1
    text = "\n".join(formatEvent(e) or "" for e in log_events) + repr(log_events)
    assert TOKEN not in text and "opens-sesame" not in text


@pytest.mark.reactor_free
def test_admin_auth_options_are_checked(tmp_path: Path) -> None:
    base = "sinks:\n  S: {type: sse-server, schema: 'a string', server.port: 8020}\n"
    tokens = write_config(tmp_path, TOKEN + "\n", "tokens")
    config = validate(load_yaml(base + f"admin: {{port: 9100, auth.type: bearer, auth.tokens.file: {tokens}}}\n", "a.yaml"))
    assert config.admin.auth_types == ("bearer",)
    assert "admin: on 127.0.0.1:9100 (ready.grace 10s), auth bearer, Host localhost" in config.summary()
    assert validate(load_yaml(base + "admin: {port: 9100}\n", "a.yaml")).admin.auth_types == ()
    cases = {
        "auth.type: bearer": "a.yaml:5: admin: option 'auth.type': auth.type bearer needs auth.tokens.file or auth.tokens.env",
        "auth.type: basic": "a.yaml:3: admin: option 'auth.users.file': auth.type basic needs auth.users.file",
        "auth.type: digest": "a.yaml:5: admin: option 'auth.type': expected none, basic, bearer or 'basic, bearer', found 'digest'",
        f"auth.tokens.file: {tokens}": "a.yaml:5: admin: option 'auth.tokens.file': 'auth.tokens.file' has no effect without 'auth.type'",
        "allowed.hosts: ['http://x/']": "a.yaml:5: admin: option 'allowed.hosts': expected host names such as 'status.example.com'",
    }
    for line, expected in cases.items():
        with pytest.raises(ConfigError) as caught:
            validate(load_yaml(base + f"admin:\n  port: 9100\n  {line}\n", "a.yaml"))
        assert expected in str(caught.value), str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_reload_reads_the_admins_users_and_tokens_files_again(daemon, tmp_path: Path, upstream, log_events) -> None:
    """A rotated admin token or password takes effect at the next reload (SIGHUP), on every admin path and
    live view, without a restart; files that cannot be read then leave the credentials as they were."""
    from sse_daemon.daemon.reload import Reloader

    service = await daemon(streams_config(tmp_path, upstream.url(), admin_auth(tmp_path)))
    port = service.admin.port
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    rotated = "admin-token-rotated-0123456789"
    assert status(await get(port, "/metrics", headers=bearer(TOKEN))) == 200
    write_config(tmp_path, rotated + "\n", "admin-tokens")
    write_config(tmp_path, "ops:" + bcrypt.hashpw(b"new-sesame", bcrypt.gensalt(rounds=4)).decode() + "\n", "admin-users")
    assert status(await get(port, "/metrics", headers=bearer(rotated))) == 401, "read at start, and at reloads only"
    assert await deadline(reloader.reload()) is True
    for path in ("/metrics", "/status.json", "/events/Open"):
        assert status(await get(port, path, headers=bearer(TOKEN))) == 401, path
        assert status(await get(port, path, headers=basic("ops", "opens-sesame"))) == 401, path
    assert status(await get(port, "/metrics", headers=bearer(rotated))) == 200
    assert status(await get(port, "/metrics", headers=basic("ops", "new-sesame"))) == 200
    await get(port, "/events/Open", headers=bearer(rotated), until=b"stream open")
    (tmp_path / "admin-tokens").unlink()
    assert await deadline(reloader.reload()) is False, "a tokens file that is gone fails the configuration"
    assert status(await get(port, "/metrics", headers=bearer(rotated))) == 200, "the running credentials stay"
    write_config(tmp_path, "short\n", "admin-tokens")
    assert await deadline(reloader.reload()) is False, "a tokens file that holds no tokens fails the configuration too"
    service.admin.read_credentials()  # as when the file changes again between the reload's check and its read
    assert status(await get(port, "/metrics", headers=bearer(rotated))) == 200, "the running credentials stay"
    kept = [e for e in log_events if "kept the credentials it had" in (e.get("log_format") or "")]
    assert len(kept) == 1 and "shorter than 16 characters" in formatEvent(kept[0])


@pytest_twisted.ensureDeferred
async def test_a_reload_that_protects_a_stream_closes_its_live_view(daemon, tmp_path: Path, upstream) -> None:
    from sse_daemon.daemon.reload import Reloader

    open_text = streams_config(tmp_path, upstream.url()).replace(
        "  Public: {type: sse-server, stream: Open, server.host: 127.0.0.1, server.port: 0}",
        "  Public: {type: sse-server, stream: Open, server.host: 127.0.0.1, server.port: 0, server.path: pub}")
    service = await daemon(open_text)
    port = service.admin.port
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    viewer = await raw_request(port, b"GET /events/Open HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await viewer.wait_for(b"stream open")
    tokens = tmp_path / "sink-tokens"
    write_config(tmp_path, open_text.replace("server.path: pub}", f"server.path: pub, auth.type: bearer, auth.tokens.file: {tokens}}}"))
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: viewer.is_closed, what="the now protected stream's viewer to be closed")
    raw = await get(port, "/events/Open")
    assert status(raw) == 403 and body(raw)["reason"] == "protected-stream"
    write_config(tmp_path, open_text)
    assert await deadline(reloader.reload()) is True
    await get(port, "/events/Open", until=b"stream open")
