"""One-line causes for connection failures: refused, DNS, TLS, redirects, lost connection.

A pure function of the exception (Twisted's exception classes are only
compared against); the source's log lines and ``sse-daemon probe`` share its wording.
"""

from __future__ import annotations

from twisted.internet import error as net_error
from twisted.python.failure import Failure
from twisted.web import error as web_error, http
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived

from sse_daemon.compat import DATA_LOSS
from sse_daemon.policy.redact import redact_url, redact_urls

__all__ = ["MAX_REDIRECTS", "describe_failure"]

#: redirects followed for one request before it counts as a failure
MAX_REDIRECTS = 10


def describe_failure(failure: BaseException | Failure) -> str:
    """A one-line cause for the log: refused, DNS, TLS, redirects, lost connection."""
    reason = failure.value if isinstance(failure, Failure) else failure
    if reason is None:
        return "unknown failure"
    if isinstance(reason, ResponseDone):
        return "the server ended the stream"
    if isinstance(reason, http.PotentialDataLoss):
        return "the server closed the connection"
    if isinstance(reason, (ResponseNeverReceived, ResponseFailed)):
        # DATA_LOSS only repeats that a chunked body was cut short
        inner = [describe_failure(f) for f in reason.reasons if not isinstance(f.value, DATA_LOSS)]
        what = "no response" if isinstance(reason, ResponseNeverReceived) else "the response failed"
        return f"{what}: {'; '.join(inner) or type(reason).__name__}"
    if isinstance(reason, web_error.InfiniteRedirection):
        return f"more than {MAX_REDIRECTS} redirects (last to {redact_url(_text(reason.location))})"
    if isinstance(reason, web_error.RedirectWithNoLocation):
        return f"redirect {_text(reason.status)} without a Location header"
    if isinstance(reason, net_error.DNSLookupError):
        return _strip_period(reason)  # "DNS lookup failed: <why>" (a host name: the URL's credentials are never in it)
    if isinstance(reason, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, net_error.TimeoutError):
        return "TCP connect timed out"
    if isinstance(reason, (net_error.ConnectionDone, net_error.ConnectionLost)):
        return "connection closed" if isinstance(reason, net_error.ConnectionDone) else "connection lost"
    if _is_tls_error(reason):
        return f"TLS error: {_tls_text(reason)}"
    mismatched = _host_mismatch(reason)
    if mismatched is not None:
        return f"TLS error: the certificate is not for {mismatched}"
    text = redact_urls(str(reason).strip())  # an exception's text may quote a URL
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _strip_period(reason: BaseException) -> str:
    return str(reason).strip().rstrip(".") or type(reason).__name__


def _is_tls_error(reason: BaseException) -> bool:
    try:
        from OpenSSL.SSL import Error as SSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is needed for https anyway
        return False
    return isinstance(reason, SSLError)


def _host_mismatch(reason: BaseException) -> str | None:
    """The host name or address a certificate that chains to a trusted CA was not issued for (service_identity's check)."""
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - installed with Twisted's tls extra, as pyOpenSSL
        return None
    if not isinstance(reason, VerificationError):
        return None
    names = [_text(getattr(error.mismatched_id, "hostname", None) or getattr(error.mismatched_id, "ip", "?"))
             for error in reason.errors if hasattr(error, "mismatched_id")]
    return ", ".join(names) or "the host name asked for"


def _tls_text(reason: BaseException) -> str:
    # pyOpenSSL errors carry [(library, function, reason), ...]
    details = reason.args[0] if reason.args and isinstance(reason.args[0], list) else []
    texts = [item[-1] for item in details if isinstance(item, tuple) and item]
    return ", ".join(str(t) for t in texts) or str(reason) or type(reason).__name__
