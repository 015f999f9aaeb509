"""TLS: how a sink's or ingest's port is bound, and how an SSE source trusts servers.

A listener binds ``tcp:PORT:interface=HOST`` unless its connectors give
``server.tls.cert``/``server.tls.key`` (then ``ssl:...`` with those files) or
``server.endpoint``, a Twisted endpoint string used as written (for operators
who need more: a chain file, ``systemd:`` socket activation, ...). Connectors
sharing a port must describe it the same way.

An SSE source verifies the server's certificate and host name by default
(Twisted's ``BrowserLikePolicyForHTTPS`` with the system's trust store);
``tls.ca.file`` replaces the trust store with a CA bundle.

The checks here run when the configuration is loaded, so ``--check`` reports
an unreadable file, a key that does not match its certificate, or a CA
bundle without certificates.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from sse_daemon.policy.connections import LISTEN_BACKLOG

__all__ = ["listen_description", "check_server_tls", "check_ca_file", "client_policy"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _quote(value: str) -> str:
    from twisted.internet.endpoints import quoteStringArgument

    return quoteStringArgument(value)


def listen_description(host: str, port: int, options: Mapping[str, Any]) -> str:
    """The endpoint string a connector's port is bound with."""
    if options.get("server.endpoint"):
        return options["server.endpoint"]
    interface = _quote(host)
    backlog = f"backlog={LISTEN_BACKLOG}"
    if options.get("server.tls.cert"):
        return (f"ssl:{port}:interface={interface}:{backlog}:certKey={_quote(options['server.tls.cert'])}"
                f":privateKey={_quote(options['server.tls.key'])}")
    return f"tcp:{port}:interface={interface}:{backlog}"


def is_tls(options: Mapping[str, Any]) -> bool:
    return bool(options.get("server.tls.cert")) or str(options.get("server.endpoint") or "").startswith("ssl:")


def check_server_tls(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with ``server.tls.*``, as (option, message)."""
    cert, key = options.get("server.tls.cert"), options.get("server.tls.key")
    if options.get("server.endpoint") and (cert or key):
        return [("server.endpoint", "give server.endpoint or server.tls.cert/server.tls.key, not both")]
    if bool(cert) != bool(key):
        missing = "server.tls.key" if cert else "server.tls.cert"
        return [(missing, "server.tls.cert and server.tls.key go together")]
    if not cert or not key:  # neither (both or neither, checked above)
        return []
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    loaded = {}
    for option, path in (("server.tls.cert", cert), ("server.tls.key", key)):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return [(option, f"cannot read {path}: {e.strerror or e}")]
        try:
            loaded[option] = (x509.load_pem_x509_certificates(data)[0] if option == "server.tls.cert"
                              else serialization.load_pem_private_key(data, password=None))
        except (ValueError, TypeError, IndexError):
            what = "a PEM certificate" if option == "server.tls.cert" else "an unencrypted PEM private key"
            return [(option, f"{path} does not hold {what}")]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = loaded["server.tls.key"].public_key().public_bytes(serialization.Encoding.PEM, public)
    if mine != loaded["server.tls.cert"].public_key().public_bytes(serialization.Encoding.PEM, public):
        return [("server.tls.key", f"{key} is not the private key of the certificate in {cert}")]
    return []


def _ca_certificates(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return _PEM_CERT.findall(f.read())


def check_ca_file(path: str | None) -> str | None:
    """A problem with ``tls.ca.file``, or None."""
    if not path:
        return None
    try:
        pems = _ca_certificates(path)
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if not pems:
        return f"{path} holds no PEM certificate"
    from twisted.internet.ssl import Certificate

    try:
        for pem in pems:
            Certificate.loadPEM(pem)
    except Exception:
        return f"{path} holds a certificate that cannot be read"
    return None


def client_policy(ca_file: str | None) -> Any:
    """The HTTPS policy of an SSE source: verify against the system's trust store, or the given CA bundle."""
    from twisted.internet.ssl import Certificate, trustRootFromCertificates
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if not ca_file:
        return BrowserLikePolicyForHTTPS()
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates([Certificate.loadPEM(p) for p in _ca_certificates(ca_file)]))
