"""TLS on the edge: how an SSE source trusts servers.

An SSE source verifies the server's certificate and host name by default
(Twisted's ``BrowserLikePolicyForHTTPS`` with the system's trust store);
``tls.ca.file`` replaces the trust store with a CA bundle.

How a sink's or ingest's port is bound (plain, ``server.tls.*`` or
``server.endpoint``) and the checks of the TLS files at load are pure and live
in config/endpoints.py; they are imported here too for the listeners.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpoint

from sse_daemon.config.endpoints import (HTTP2_MARK, LISTEN_BACKLOG, ca_certificates, check_ca_file, check_server_tls, is_tls,
                                         listen_description, offers_http2)

__all__ = ["listen_description", "check_server_tls", "check_ca_file", "client_policy", "is_tls", "LISTEN_BACKLOG",
           "ALPN_PROTOCOLS", "HTTP2_MARK", "alpn_endpoint", "offers_http2"]

#: what a TLS port with ``server.http2`` offers through ALPN, most preferred first
ALPN_PROTOCOLS = (b"h2", b"http/1.1")


def alpn_endpoint(reactor: Any, host: str, port: int, cert_file: str, key_file: str) -> IStreamServerEndpoint:
    """The TLS endpoint ``listen_description``'s ``ssl:`` string describes, offering HTTP/2 through
    ALPN as well (Twisted's endpoint string has no way to say so). The files were checked at load."""
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.internet.ssl import CertificateOptions, PrivateCertificate

    with open(cert_file, "rb") as cert, open(key_file, "rb") as key:
        pem = cert.read() + b"\n" + key.read()
    private = PrivateCertificate.loadPEM(pem)  # as Twisted's ssl: parser loads certKey and privateKey
    options = CertificateOptions(privateKey=private.privateKey.original, certificate=private.original,
                                 acceptableProtocols=list(ALPN_PROTOCOLS))
    return SSL4ServerEndpoint(reactor, port, options, backlog=LISTEN_BACKLOG, interface=host)


def client_policy(ca_file: str | None) -> Any:
    """The HTTPS policy of an SSE source: verify against the system's trust store, or the given CA bundle."""
    from twisted.internet.ssl import Certificate, trustRootFromCertificates
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if not ca_file:
        return BrowserLikePolicyForHTTPS()
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates([Certificate.loadPEM(p) for p in ca_certificates(ca_file)]))
