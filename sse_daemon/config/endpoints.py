"""How a sink's or ingest's port is bound, and the TLS files checked at load. Pure.

A listener binds ``tcp:PORT:interface=HOST`` unless its connectors give
``server.tls.cert``/``server.tls.key`` (then ``ssl:...`` with those files) or
``server.endpoint``, a Twisted endpoint string used as written (for operators
who need more: a chain file, ``systemd:`` socket activation, ...). Connectors
sharing a port must describe it the same way, which validation checks by
comparing these descriptions.

The checks run when the configuration is loaded, so ``--check`` reports an
unreadable file, a key that does not match its certificate, or a CA bundle
without certificates. edge/tls.py builds the HTTPS client policy from the same files.
"""

from __future__ import annotations

import hashlib
import re

from sse_daemon.config.options import ServerTlsOptions
from sse_daemon.policy.connections import LISTEN_BACKLOG  # noqa: F401 (re-exported for the listeners)

__all__ = ["LISTEN_BACKLOG", "HTTP2_MARK", "quote_argument", "listen_description", "offers_http2", "port_description", "is_tls",
           "tls_files", "tls_files_mark", "check_server_tls", "check_ca_file", "ca_certificates"]

#: how a port description says that the port offers HTTP/2 (ALPN); not part of Twisted's endpoint syntax
HTTP2_MARK = " +h2"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)



def quote_argument(value: str) -> str:
    """An endpoint string argument with ``\\`` and ``:`` escaped, as Twisted's ``quoteStringArgument`` does."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def listen_description(host: str, port: int, options: ServerTlsOptions) -> str:
    """The endpoint string a connector's port is bound with."""
    if options.server_endpoint:
        return options.server_endpoint
    interface = quote_argument(host)
    # Twisted's default listen backlog (50) drops connections when many subscribers
    # reconnect at once (a deploy); they then retry only after 1 s, 3 s, ... (bench/).
    backlog = f"backlog={LISTEN_BACKLOG}"
    if options.server_tls_cert:
        return (f"ssl:{port}:interface={interface}:{backlog}:certKey={quote_argument(options.server_tls_cert)}"
                f":privateKey={quote_argument(options.server_tls_key or '')}")
    return f"tcp:{port}:interface={interface}:{backlog}"


def offers_http2(options: ServerTlsOptions) -> bool:
    """The port offers HTTP/2 through ALPN: it is served over TLS and ``server.http2`` is not turned off."""
    return is_tls(options) and options.server_http2


def port_description(host: str, port: int, options: ServerTlsOptions) -> str:
    """How a port is bound, as a plan and validation compare ports: the endpoint string, and
    whether it offers HTTP/2 (which a reload changes only by binding the port again)."""
    return listen_description(host, port, options) + (HTTP2_MARK if offers_http2(options) else "")


#: the arguments of an ``ssl:`` endpoint that name files it reads when it binds
_SSL_FILE_ARGUMENTS = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def tls_files(options: ServerTlsOptions) -> tuple[str, ...]:
    """The files a TLS port reads once, when it is bound: ``server.tls.cert`` and ``server.tls.key``,
    or those an ``ssl:`` ``server.endpoint`` names."""
    if options.server_tls_cert:
        return (options.server_tls_cert, options.server_tls_key or "")
    endpoint = options.server_endpoint or ""
    if not endpoint.startswith("ssl:"):
        return ()
    named = dict(part.partition("=")[::2] for part in _endpoint_arguments(endpoint)[1:] if "=" in part)
    return tuple(named[name] for name in _SSL_FILE_ARGUMENTS if named.get(name))


def _endpoint_arguments(description: str) -> list[str]:
    """An endpoint string split at its unescaped ``:``, each ``\\x`` read as ``x`` (Twisted's quoting)."""
    parts, current, escaped = [], [], False
    for character in description:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def tls_files_mark(options: ServerTlsOptions) -> str:
    """The content of a TLS port's files (:func:`tls_files`), as a reload compares ports: a certificate
    renewed in place (same paths) binds the port again, with the new files."""
    files = tls_files(options)
    if not files:
        return ""
    digest = hashlib.sha256()
    for path in files:
        try:
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        except OSError:
            digest.update(b"unreadable")
    return f" +files={digest.hexdigest()[:16]}"


def is_tls(options: ServerTlsOptions) -> bool:
    return bool(options.server_tls_cert) or str(options.server_endpoint or "").startswith("ssl:")


def check_server_tls(options: ServerTlsOptions) -> list[tuple[str, str]]:
    """Problems with ``server.tls.*``, as (option, message)."""
    cert, key = options.server_tls_cert, options.server_tls_key
    if options.server_endpoint and (cert or key):
        return [("server.endpoint", "give server.endpoint or server.tls.cert/server.tls.key, not both")]
    if bool(cert) != bool(key):
        missing = "server.tls.key" if cert else "server.tls.cert"
        return [(missing, "server.tls.cert and server.tls.key go together")]
    if not cert or not key:
        return []
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    texts: dict[str, bytes] = {}
    for option, path in (("server.tls.cert", cert), ("server.tls.key", key)):
        try:
            with open(path, "rb") as f:
                texts[option] = f.read()
        except OSError as e:
            return [(option, f"cannot read {path}: {e.strerror or e}")]
    try:
        certificate = x509.load_pem_x509_certificates(texts["server.tls.cert"])[0]
    except (ValueError, TypeError, IndexError):
        return [("server.tls.cert", f"{cert} does not hold a PEM certificate")]
    try:
        private_key = serialization.load_pem_private_key(texts["server.tls.key"], password=None)
    except (ValueError, TypeError):
        return [("server.tls.key", f"{key} does not hold an unencrypted PEM private key")]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    mine = private_key.public_key().public_bytes(serialization.Encoding.PEM, public)
    if mine != certificate.public_key().public_bytes(serialization.Encoding.PEM, public):
        return [("server.tls.key", f"{key} is not the private key of the certificate in {cert}")]
    return []


def ca_certificates(path: str) -> list[bytes]:
    """The PEM certificates of a CA bundle, each as its own PEM block."""
    with open(path, "rb") as f:
        return _PEM_CERT.findall(f.read())


def check_ca_file(path: str | None) -> str | None:
    """A problem with ``tls.ca.file``, or None."""
    if not path:
        return None
    try:
        pems = ca_certificates(path)
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if not pems:
        return f"{path} holds no PEM certificate"
    from cryptography import x509

    try:
        for pem in pems:
            x509.load_pem_x509_certificate(pem)
    except Exception:
        return f"{path} holds a certificate that cannot be read"
    return None
