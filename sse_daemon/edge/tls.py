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

from sse_daemon.config.endpoints import (HTTP2_MARK, LISTEN_BACKLOG, ca_certificates, check_ca_file, check_server_tls, is_tls,
                                         listen_description, offers_http2, tls_files_mark)

__all__ = ["listen_description", "check_server_tls", "check_ca_file", "client_policy", "is_tls", "LISTEN_BACKLOG",
           "HTTP2_MARK", "offers_http2", "tls_files_mark"]

def client_policy(ca_file: str | None) -> Any:
    """The HTTPS policy of an SSE source: verify against the system's trust store, or the given CA bundle."""
    from twisted.internet.ssl import Certificate, trustRootFromCertificates
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if not ca_file:
        return BrowserLikePolicyForHTTPS()
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates([Certificate.loadPEM(p) for p in ca_certificates(ca_file)]))
