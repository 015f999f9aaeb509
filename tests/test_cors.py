"""CORS: an allow-list of origins per sink and ingest, credentials, and OPTIONS preflight."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.edge.cors import CorsPolicy

from .conftest import deadline, raw_request, subscribe
from .test_auth import header, status

APP = "https://app.example.com"

CONFIG = """\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    cors.origins: ["https://app.example.com", "http://localhost:3000"]
    {sink}
sources:
  In:
    type: http
    stream: Events
    receiver.url: http://127.0.0.1:0/in
    cors.origins: "https://app.example.com"
    cors.credentials: true
    {ingest}
"""


def config(sink: str = "", ingest: str = "") -> str:
    return CONFIG.format(sink=sink, ingest=ingest)


async def send(port: int, head: str, data: bytes = b"") -> bytes:
    client = await raw_request(port, (head + "Host: x\r\nConnection: close\r\n" + (f"Content-Length: {len(data)}\r\n" if data else "") + "\r\n").encode() + data)
    await deadline(client.closed)
    return bytes(client.received)


@pytest.mark.reactor_free
def test_policy() -> None:
    policy = CorsPolicy((APP,), credentials=True, methods=("POST",))
    assert policy.allows(APP) and policy.allows(APP + "/") and not policy.allows("https://evil.example")
    assert policy.headers(APP) == [
        ("Access-Control-Allow-Origin", APP), ("Access-Control-Expose-Headers", "SSE-Replay-From, Retry-After"),
        ("Vary", "Origin"), ("Access-Control-Allow-Credentials", "true"),
    ]
    assert policy.preflight(APP, "DELETE", "") is None
    assert policy.preflight(APP, "POST", "X-Custom") is None
    granted = dict(policy.preflight(APP, "POST", "Content-Type, Authorization"))
    assert granted["Access-Control-Allow-Methods"] == "POST"
    assert granted["Access-Control-Allow-Headers"] == "content-type, authorization"
    assert granted["Access-Control-Max-Age"] == "600"
    anyone = CorsPolicy(("*",))
    assert anyone.allows("https://whoever.example") and anyone.headers("https://x.example")[0] == ("Access-Control-Allow-Origin", "*")
    assert not CorsPolicy().enabled


@pytest.mark.reactor_free
@pytest.mark.parametrize(("options", "message"), [
    ("cors.origins: '*'\n    cors.credentials: true", "option 'cors.credentials': credentials cannot be allowed for any origin ('*')"),
    ("cors.origins: [app.example.com]", "option 'cors.origins': expected origins such as 'https://app.example.com'"),
])
def test_config_errors(options: str, message: str) -> None:
    text = f"sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 0\n    {options}\n"
    with pytest.raises(ConfigError) as e:
        validate(load_yaml(text))
    assert message in str(e.value)


@pytest.mark.reactor_free
def test_configured_origins_are_compared_as_browsers_send_them() -> None:
    """A browser's Origin is lower case and omits the scheme's default port: written otherwise in the
    configuration, an origin matched no request (it failed closed, and nobody could tell why)."""
    text = ("sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 0\n"
            "    cors.origins: ['https://App.Example.com:443', 'HTTP://localhost:80', 'http://localhost:3000']\n")
    (sink,) = validate(load_yaml(text)).sinks
    assert sink.options.cors_origins == ("https://app.example.com", "http://localhost", "http://localhost:3000")
    assert CorsPolicy(sink.options.cors_origins).allows("https://app.example.com")


@pytest_twisted.ensureDeferred
async def test_ingest_preflight_and_post(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("In")
    preflight = await send(port, f"OPTIONS /in HTTP/1.1\r\nOrigin: {APP}\r\nAccess-Control-Request-Method: POST\r\n"
                                 "Access-Control-Request-Headers: content-type\r\n")
    assert status(preflight) == 204
    assert header(preflight, "Access-Control-Allow-Origin") == APP
    assert header(preflight, "Access-Control-Allow-Methods") == "POST"
    assert header(preflight, "Access-Control-Allow-Headers") == "content-type"
    assert header(preflight, "Access-Control-Allow-Credentials") == "true"
    assert status(await send(port, "OPTIONS /in HTTP/1.1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n")) == 403
    assert status(await send(port, f"OPTIONS /in HTTP/1.1\r\nOrigin: {APP}\r\nAccess-Control-Request-Method: PUT\r\n")) == 403
    listener = await subscribe(service.port_of("Events"))
    ok = await send(port, f"POST /in HTTP/1.1\r\nOrigin: {APP}\r\nContent-Type: application/json\r\n", b'{"n": 1}')
    assert status(ok) == 200 and header(ok, "Access-Control-Allow-Origin") == APP and header(ok, "Vary") == "Origin"
    refused = await send(port, "POST /in HTTP/1.1\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n", b'{"n": 2}')
    assert status(refused) == 403 and json.loads(refused.partition(b"\r\n\r\n")[2])["reason"] == "origin-not-allowed"
    assert header(refused, "Access-Control-Allow-Origin") is None
    no_origin = await send(port, "POST /in HTTP/1.1\r\nContent-Type: application/json\r\n", b'{"n": 3}')
    assert status(no_origin) == 200, "clients that are not browsers send no Origin"
    await listener.wait_for(b'"n":3')
    assert b'"n":2' not in listener.received, "a refused origin's POST publishes nothing"
    await listener.close()
    assert service.sources["In"].rejected == {"origin-not-allowed": 2, "preflight-not-allowed": 1}


@pytest_twisted.ensureDeferred
async def test_sink_origins_and_cors_headers_on_a_401(daemon, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-static-token-for-the-sink\n")
    service = await daemon(config(sink=f"auth.type: bearer\n    auth.tokens.file: {tokens}"))
    port = service.port_of("Events")
    stream = await subscribe(port, headers="Origin: http://localhost:3000\r\nAuthorization: Bearer a-static-token-for-the-sink\r\n")
    assert b"Access-Control-Allow-Origin: http://localhost:3000\r\n" in stream.received
    await stream.close()
    unauthorized = await send(port, f"GET /events HTTP/1.1\r\nOrigin: {APP}\r\n")
    assert status(unauthorized) == 401 and header(unauthorized, "Access-Control-Allow-Origin") == APP, "the page can see why"
    assert status(await send(port, "GET /events HTTP/1.1\r\nOrigin: https://evil.example\r\n")) == 403
    assert status(await send(port, "OPTIONS /events HTTP/1.1\r\n")) == 405, "without Origin, OPTIONS is no preflight: a method the sink does not serve, refused before credentials"
