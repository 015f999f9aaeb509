"""The HTTP client an :class:`~sse_daemon.client.EventSource` uses unless it is given one."""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, RedirectAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from sse_daemon.client.failures import MAX_REDIRECTS
from sse_daemon.compat import quiet_connection_pool

__all__ = ["HttpGet", "http_client"]


class HttpGet(Protocol):
    """What the client needs of an HTTP client: treq's ``HTTPClient.get`` (``StubTreq`` has it too)."""

    def get(self, url: str, /, *, headers: Headers | None = ..., allow_redirects: bool = ..., unbuffered: bool = ...) -> Deferred[Any]:
        ...


def http_client(reactor: Any, tls_policy: IPolicyForHTTPS | None = None, redirects: int = MAX_REDIRECTS,
                sensitive_headers: Iterable[str] = ()) -> HTTPClient:
    """A treq client for event streams: no persistent connections (a stream holds its own to
    the end), redirects followed up to ``redirects`` times, HTTPS verified with ``tls_policy``
    (default: the system's trust store), and no log line per connection. A redirect to another
    origin (scheme, host or port: an https one to http too) drops ``Authorization``, ``Cookie``
    and the ``sensitive_headers`` (a source's own ``headers``: an API key must not follow an
    upstream's redirect elsewhere)."""
    agent = Agent(reactor, contextFactory=tls_policy or BrowserLikePolicyForHTTPS(), pool=quiet_connection_pool(reactor))
    sensitive = [name.encode("latin-1") for name in sensitive_headers]
    return HTTPClient(RedirectAgent(agent, redirectLimit=redirects, sensitiveHeaderNames=sensitive))
