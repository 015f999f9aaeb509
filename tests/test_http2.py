"""HTTP/2 on TLS ports (docs/http2.md): ALPN, the same sinks and ingest, the same limits, flow control."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

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
    sink.publish(Event({"n": 7}))
    (v2, headers2, body2), (v1, headers1, body1) = await deadline(h2), await deadline(h1)
    assert (v2, v1) == ("HTTP/2", "HTTP/1.1")
    assert headers2["content-type"] == headers1["content-type"] == "text/event-stream; charset=utf-8"
    for body in (body1, body2):
        assert body.startswith(b": sse-daemon stream open\n") and b'"n":7' in body
    assert b"\r\n" not in body2, "HTTP/2 has no chunked framing"
