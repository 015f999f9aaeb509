"""HTTP/2 in a real headless Chromium over https with a throwaway CA: ten EventSources to one origin.

Over HTTP/1.1 a browser opens at most six connections per origin, so the
seventh EventSource waits; over HTTP/2 all ten share one connection. The
same page, the same browser, two daemons: one whose TLS port offers HTTP/2,
one with ``server.http2: false`` (the control). Chromium trusts the test's
certificate through ``--ignore-certificate-errors-spki-list`` (its key's hash).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sse_daemon.events.schema import Event

from .conftest import wait_for
from .test_browser import chromium, in_thread, until
from .test_tls import pki, tls_sink  # noqa: F401 (the throwaway CA and its server certificate)

EVENT_SOURCES = 10

OPEN_TEN = """
(window.sources || []).forEach((s) => s.close());
window.got = {};
window.sources = [];
for (let i = 0; i < %d; i++) {
  const source = new EventSource(arguments[0]);
  source.onmessage = () => {{ window.got[i] = (window.got[i] || 0) + 1; }};
  window.sources.push(source);
}
""" % EVENT_SOURCES
RECEIVED = "return Object.keys(window.got).length"
STATES = "return window.sources.map((s) => s.readyState)"


def spki_hash(cert: Path) -> str:
    """What --ignore-certificate-errors-spki-list takes: base64 of the SHA-256 of the key's SubjectPublicKeyInfo."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def https_browser(pki):  # noqa: F811
    yield from chromium(f"--ignore-certificate-errors-spki-list={spki_hash(pki['cert'])}")


async def ten_event_sources(browser, service, http2: bool) -> list[int]:
    """The page opens ten EventSources to the sink (CORS lets it), which publishes once: their
    readyStates once as many as can receive the event have received it."""
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    await in_thread(browser.execute_script, OPEN_TEN, f"https://localhost:{port}/events")
    expected = EVENT_SOURCES if http2 else 6
    await wait_for(lambda: len(sink.subscribers) >= expected, what=f"{expected} subscribers")
    sink.publish([Event({"n": 1})])
    await until(browser, f"return Object.keys(window.got).length >= {expected}", f"the event in {expected} EventSources")
    return await in_thread(browser.execute_script, STATES)


@pytest_twisted.ensureDeferred
async def test_ten_event_sources_on_one_origin_all_receive_over_http2_and_six_over_http11(daemon, pki, https_browser) -> None:  # noqa: F811
    cors = "    server.path: events\n    cors.origins: '*'\n"
    over_h2 = await daemon(tls_sink(pki).replace("    server.path: events\n", cors, 1))
    over_h1 = await daemon(tls_sink(pki).replace("    server.path: events\n", cors + "    server.http2: false\n", 1)
                           .replace("receiver.url: https://127.0.0.1:0/in\n", "receiver.url: https://127.0.0.1:0/in\n    server.http2: false\n"))

    # the page: a 404 of a third https origin on localhost (the same address space as the sinks)
    page = await daemon(tls_sink(pki))
    await in_thread(https_browser.get, f"https://localhost:{page.port_of('Events')}/page")

    states = await ten_event_sources(https_browser, over_h2, http2=True)
    assert states == [1] * EVENT_SOURCES, "every EventSource is open"
    assert await in_thread(https_browser.execute_script, RECEIVED) == EVENT_SOURCES
    sites = [service.site for service in over_h2.listeners.values() if service.site is not None]
    assert sum(site.protocols["h2"] for site in sites) == 1, "one HTTP/2 connection carries the ten streams"
    assert sum(site.requests["HTTP/2"] for site in sites) == EVENT_SOURCES

    # the control: the same page against a port without HTTP/2
    states = await ten_event_sources(https_browser, over_h1, http2=False)
    sink = over_h1.sinks["Events"].sink
    assert len(sink.subscribers) == 6 and await in_thread(https_browser.execute_script, RECEIVED) == 6
    assert sorted(states) == [0] * 4 + [1] * 6, "four EventSources wait for a connection"
    sites = [service.site for service in over_h1.listeners.values() if service.site is not None]
    assert sum(site.requests["HTTP/2"] for site in sites) == 0
