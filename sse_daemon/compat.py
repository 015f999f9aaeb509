"""Twisted's private names the daemon relies on, in one place.

Each name here is pinned by a test (``tests/test_compat_*.py``), so a Twisted
upgrade that renames or removes one fails there, loudly, instead of somewhere
deep in a connection's life.
"""

from __future__ import annotations

from typing import Any

from twisted.web import client as web_client, http

__all__ = ["DATA_LOSS", "quiet_connection_pool"]


# --------------------------------------------------------------------------- HTTP client


#: what Twisted adds to a ``ResponseFailed`` when a chunked body is cut short; it only
#: repeats that the body ended early, so failure texts leave it out
DATA_LOSS: type[Exception] = http._DataLoss


class _QuietClientFactory(web_client._HTTP11ClientFactory):
    """The pool's per-connection factory without its "Starting factory" log line
    (one line per reconnect is noise in a daemon's log)."""

    noisy = False


def quiet_connection_pool(reactor: Any, persistent: bool = False) -> web_client.HTTPConnectionPool:
    """An ``HTTPConnectionPool`` whose connections do not log their start and stop.

    Twisted has no public way to choose the pool's factory: its private
    ``_factory`` attribute is the one place it is read (``_newConnection``).
    """
    pool = web_client.HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietClientFactory
    return pool
