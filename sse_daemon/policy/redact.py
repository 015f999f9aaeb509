"""Secrets out of URLs before they are shown (pure).

A URL the daemon shows (``--check``, ``/status.json`` and the status page, every
SSE source log line, ``sse-daemon probe``, reload errors) goes through
:func:`redact_url` first: credentials in the userinfo (``user:password@``) and
the values of query or fragment parameters whose names look like secrets
(``access_token``, ``api_key``, ``X-Amz-Signature``, ``sig``, ``auth``, ...)
become ``***``. Everything else is kept byte for byte, so an operator still
recognises the URL. A secret in the path (some webhook URLs) cannot be told
from a path and is not masked.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

__all__ = ["MASK", "SECRET_PARAM_WORDS", "redact_url", "redact_urls", "secret_param", "split_userinfo"]

MASK = "***"
#: a query parameter whose name (decoded, any case) contains one of these holds a secret
SECRET_PARAM_WORDS = (
    "token", "key", "secret", "pass", "pwd", "sig", "auth", "credential", "session", "cookie", "jwt",
)

# a URL inside other text (a config error quoting its line): up to a space or a quote
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# RFC 3986, appendix B: scheme, authority, path, query, fragment; matches any string
_PARTS = re.compile(r"^(?:([A-Za-z][A-Za-z0-9+.\-]*):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$", re.S)


def secret_param(name: str) -> bool:
    """Whether a query parameter of this name (raw, percent-encoded or not) holds a secret."""
    decoded = unquote_plus(name, errors="replace").lower()
    return any(word in decoded for word in SECRET_PARAM_WORDS)


def _params(text: str) -> str:
    """``a=1&access_token=x`` -> ``a=1&access_token=***`` (``&`` and ``;`` separate)."""
    pieces = re.split(r"([&;])", text)
    for index in range(0, len(pieces), 2):
        name, equals, value = pieces[index].partition("=")
        if equals and value and secret_param(name):
            pieces[index] = f"{name}={MASK}"
    return "".join(pieces)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking parameter values replaced by ``***``.

    Never raises: text that is no URL comes back as it was (minus anything
    that parses as userinfo or a secret parameter).
    """
    if not isinstance(url, str):
        url = str(url)
    match = _PARTS.match(url)
    if match is None:  # pragma: no cover - the pattern matches every string
        return url
    scheme, authority, path, query, fragment = match.groups()
    out = f"{scheme}:" if scheme is not None else ""
    if authority is not None:
        userinfo, at, host = authority.rpartition("@")
        out += "//" + (f"{MASK}@{host}" if at else host)
    out += path
    if query is not None:
        out += "?" + _params(query)
    if fragment is not None:
        out += "#" + (_params(fragment) if "=" in fragment else fragment)
    return out


def redact_urls(text: str) -> str:
    """Every ``scheme://...`` in ``text`` through :func:`redact_url` (config errors quote lines)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://u:p@h/x`` -> (``http://h/x``, (``u``, ``p``)): the URL to request and the
    credentials to send as ``Authorization: Basic``, as curl does (Twisted would take the
    userinfo for part of the host name)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    request = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return request, (unquote(parts.username or ""), unquote(parts.password or ""))
