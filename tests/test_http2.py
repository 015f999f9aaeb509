"""HTTP/2 on TLS ports (docs/http2.md): ALPN, the same sinks and ingest, the same limits, flow control."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from sse_daemon.events.schema import Event

from .conftest import deadline, wait_for
from .test_tls import pki, tls_sink  # noqa: F401 (the throwaway CA and its server certificate)


def h2_client(ca: Path, http2: bool = True) -> Any:
    import httpx

    return httpx.Client(http2=http2, verify=ssl.create_default_context(cafile=str(ca)), timeout=30)


def read_stream(url: str, ca: Path, until: bytes, http2: bool = True) -> tuple[str, dict[str, str], bytes]:
    """GET an event stream in a thread: its HTTP version, headers and body up to ``until``."""
    body = b""
    with h2_client(ca, http2) as client, client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
        for part in response.iter_raw():
            body += part
            if until in body:
                break
        return response.http_version, dict(response.headers), body


@pytest_twisted.ensureDeferred
async def test_a_tls_port_speaks_http2_to_a_client_that_asks_and_http11_to_one_that_does_not(daemon, pki) -> None:
    service = await daemon(tls_sink(pki))
    port = service.port_of("Events")
    url = f"https://localhost:{port}/events"
    h2 = threads.deferToThread(read_stream, url, pki["ca"], b'"n":7')
    h1 = threads.deferToThread(read_stream, url, pki["ca"], b'"n":7', False)
    sink = service.sinks["Events"].sink
    await wait_for(lambda: len(sink.subscribers) == 2, what="two subscribers")
    sink.publish([Event({"n": 7})])
    (v2, headers2, body2), (v1, headers1, body1) = await deadline(h2), await deadline(h1)
    assert (v2, v1) == ("HTTP/2", "HTTP/1.1")
    assert headers2["content-type"] == headers1["content-type"] == "text/event-stream; charset=utf-8"
    assert headers2["server"] == headers1["server"] == "sse-daemon", "the daemon's name, neither its version nor Twisted's"
    for body in (body1, body2):
        assert body.startswith(b": sse-daemon stream open\n") and b'"n":7' in body
    assert b"\r\n" not in body2, "HTTP/2 has no chunked framing"


def sink_options(pki: dict[str, Path], *options: str) -> str:  # noqa: F811
    """The TLS sink and ingest, with more options on the sink."""
    return tls_sink(pki).replace("    server.path: events\n", "    server.path: events\n" + "".join(f"    {o}\n" for o in options), 1)


@pytest_twisted.ensureDeferred
async def test_ingest_auth_cors_resume_and_heartbeats_work_the_same_over_http2(daemon, pki, tmp_path) -> None:  # noqa: F811
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token-of-sixteen-chars-or-more\n")
    service = await daemon(sink_options(pki, "auth.type: bearer", f"auth.tokens.file: {tokens}", "cors.origins: https://app.example.com",
                                        "heartbeat.interval: 0.2"))
    port = service.port_of("Events")
    events, ingest = f"https://localhost:{port}/events", f"https://localhost:{port}/in"
    authorised = {"Authorization": "Bearer a-token-of-sixteen-chars-or-more", "Origin": "https://app.example.com"}

    def requests() -> dict[str, Any]:
        with h2_client(pki["ca"]) as client:
            refused = client.get(events)
            posted = [client.post(ingest, json={"n": n}) for n in (1, 2)]
            ndjson = client.post(ingest, content=b'{"n": 3}\n', headers={"Content-Type": "application/x-ndjson"})
            with client.stream("GET", events, headers={**authorised, "Last-Event-ID": "0"}) as response:
                body = b""
                for part in response.iter_raw():
                    body += part
                    if b'"n":3' in body and b": heartbeat" in body:
                        break
                return {"refused": (refused.http_version, refused.status_code, refused.headers.get("www-authenticate")),
                        "posted": [(p.http_version, p.status_code, p.json()) for p in posted],
                        "ndjson": (ndjson.http_version, ndjson.status_code, ndjson.json()["accepted"]),
                        "stream": (response.http_version, response.status_code, response.headers.get("access-control-allow-origin"), body)}

    result = await deadline(threads.deferToThread(requests))
    assert result["refused"][:2] == ("HTTP/2", 401) and result["refused"][2].startswith("Bearer")
    assert result["posted"] == [("HTTP/2", 200, {"accepted": 1})] * 2
    assert result["ndjson"] == ("HTTP/2", 200, 1), "a streaming publish's body comes whole over HTTP/2"
    version, status, allowed, body = result["stream"]
    assert (version, status, allowed) == ("HTTP/2", 200, "https://app.example.com")
    assert body.index(b'"n":1') < body.index(b'"n":2') < body.index(b'"n":3'), "resumed from the history, in order"
    assert b": heartbeat" in body
    listener = next(iter(service.listeners.values()))
    assert listener.site.requests["HTTP/2"] == 5
    await wait_for(lambda: listener.site.protocols["h2"] == 0, what="the HTTP/2 connection counted closed with the client")


@pytest_twisted.ensureDeferred
async def test_a_drain_on_shutdown_ends_http2_streams_cleanly_with_the_goodbye(daemon, pki) -> None:  # noqa: F811
    service = await daemon(sink_options(pki, "drain.window: 0"))
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    reading = threads.deferToThread(read_stream, f"https://localhost:{port}/events", pki["ca"], b"never sent")
    await wait_for(lambda: len(sink.subscribers) == 1, what="the subscriber")
    await deadline(service.stopService())
    version, _, body = await deadline(reading)  # the stream ended (END_STREAM): iter_raw returned
    assert version == "HTTP/2"
    goodbye = body.rpartition(b": server shutting down; reconnect\n\n")[2]
    assert goodbye.startswith(b"retry: ") and goodbye.endswith(b"\n\n"), "the goodbye and its own retry: came last"


@pytest.mark.reactor_free
def test_connectors_sharing_a_port_must_agree_on_http2_and_a_change_rebinds_the_port(pki) -> None:  # noqa: F811
    from sse_daemon.config.errors import ConfigError
    from sse_daemon.config.validate import validate
    from sse_daemon.config.yamlfile import load_yaml
    from sse_daemon.daemon.plan import plan, port_endpoints

    tls = f"server.tls.cert: {pki['cert']}, server.tls.key: {pki['key']}"

    def config(a: str, b: str = "") -> Any:
        return validate(load_yaml(f"""\
streams: {{S: "n int"}}
sinks:
  A: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 8443, server.path: a, {tls}{a}}}
  B: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 8443, server.path: b, {tls}{b}}}
""", "c.yaml"))

    with pytest.raises(ConfigError) as e:
        config("", ", server.http2: false")
    assert "sink 'B': option 'server.http2': port 8443 offers HTTP/2 for sink 'A'" in str(e.value)
    on, off = config(""), config(", server.http2: false", ", server.http2: false")
    assert " +h2" in port_endpoints(on)[("127.0.0.1", 8443)] and " +h2" not in port_endpoints(off)[("127.0.0.1", 8443)]
    assert plan(on, off).ports_rebind == [("127.0.0.1", 8443)]
    with pytest.raises(ConfigError) as e:
        validate(load_yaml(f'sinks: {{S: {{type: sse-server, schema: "n int", server.port: 8001}}}}\n'
                           f"admin: {{port: 9100, server.tls.cert: {pki['cert']}}}\n", "c.yaml"))
    assert "option 'server.tls.key': server.tls.cert and server.tls.key go together" in str(e.value), "the admin's TLS is checked"


@pytest_twisted.ensureDeferred
async def test_the_admin_listener_over_tls_speaks_http2_metrics_status_and_live_views(daemon, pki) -> None:  # noqa: F811
    service = await daemon(tls_sink(pki, f"admin:\n  port: 0\n  server.tls.cert: {pki['cert']}\n  server.tls.key: {pki['key']}\n"))
    base = f"https://localhost:{service.admin.port}"
    live = threads.deferToThread(read_stream, f"{base}/events/Events", pki["ca"], b'"n":5')
    await wait_for(lambda: service.admin.live.get("Events") is not None and service.admin.live["Events"].subscribers, what="the live view")
    service.bus.publish("Events", [Event({"n": 5})])  # through the bus: the live view is a subscriber of the stream
    version, _, body = await deadline(live)
    assert version == "HTTP/2" and b'"n":5' in body

    def scrape() -> tuple[Any, ...]:
        with h2_client(pki["ca"]) as client:
            metrics, status = client.get(f"{base}/metrics"), client.get(f"{base}/status.json")
            return metrics.http_version, metrics.text, status.http_version, status.json()

    metrics_version, metrics, status_version, status = await deadline(threads.deferToThread(scrape))
    assert (metrics_version, status_version) == ("HTTP/2", "HTTP/2")
    admin_label = f'listener="127.0.0.1:{service.admin.port}"'
    assert f'sse_daemon_listener_requests_total{{{admin_label},version="HTTP/2"}}' in metrics
    assert f'sse_daemon_listener_protocol_connections{{{admin_label},protocol="h2"}} 1.0' in metrics
    (sink_port,) = status["listeners"]
    assert sink_port["http2"] and set(sink_port["protocols"]) == {"http/1.1", "h2"}


def idle_h2_connection(port: int, ca: Path, send: bytes = b"", wait: float = 10) -> tuple[bool, float]:
    """Open an HTTP/2 connection, send its preface (and ``send``), then read without ever closing or
    answering: whether a GOAWAY came, and how long until the daemon closed the connection (``wait`` if it did not)."""
    import socket
    import time

    import h2.config
    import h2.connection
    import h2.events

    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    goaway = False
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        started = time.monotonic()
        tls.sendall(client.data_to_send() + send)
        tls.settimeout(0.2)
        while time.monotonic() - started < wait:
            try:
                data = tls.recv(65536)
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError):
                break
            if not data:
                break
            try:
                goaway = goaway or any(isinstance(e, h2.events.ConnectionTerminated) for e in client.receive_data(data))
            except h2.exceptions.ProtocolError:
                goaway = True
        return goaway, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_an_http2_connection_the_daemon_closes_is_closed_even_if_its_client_ignores_the_goaway(daemon, pki) -> None:  # noqa: F811
    """The connection is the TLS transport's producer: TLS closed only once it let go, and the GOAWAY of a
    head deadline or a protocol error left the connection open, its slot and descriptor held, for as long
    as the client kept it."""
    from sse_daemon.edge.listener import CLOSE_GRACE

    service = await daemon(tls_sink(pki).replace("    server.tls.key:", "    server.head.timeout: 0.5\n    server.tls.key:"))
    port = service.port_of("Events")
    listener = next(iter(service.listeners.values()))
    silent = threads.deferToThread(idle_h2_connection, port, pki["ca"])
    broken = threads.deferToThread(idle_h2_connection, port, pki["ca"], b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00" * 4)
    for goaway, took in (await deadline(silent), await deadline(broken)):
        assert goaway and took < 0.5 + CLOSE_GRACE + 1.5, f"the connection stayed open {took:.1f}s"
    assert listener.router.rejected == {"head-timeout": 1, "malformed-request": 1}
    await wait_for(lambda: listener.site.protocols["h2"] == 0 and listener.site.connections.total == 0, what="the slots freed")
