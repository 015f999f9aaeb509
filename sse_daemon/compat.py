"""Twisted's private internals, in one place.

The daemon reaches past Twisted's public API where that API has no way to
say what it needs: a faster write path, a count of the requests Twisted
refuses itself, a form parse it never uses, a disconnect it must not write
to. Every such use is a named function or class here, with the reason, and
``tests/test_compat.py`` pins each one against the installed Twisted, so an
upgrade that changes one fails there, loudly, and not somewhere downstream.

No other module names a private attribute of Twisted.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.web import client as web_client, http, server

__all__ = ["BadRequestChannel", "DATA_LOSS", "has_write_buffer", "quiet_connection_pool", "request_disconnected",
           "request_line", "skip_form_parsing", "write_buffer_empty"]


# --------------------------------------------------------------------------- the TCP write buffer (connectors/fanout.py)

#: where a FileDescriptor keeps the bytes it has not sent yet
_WRITE_BUFFER = ("_tempDataLen", "dataBuffer")


def has_write_buffer(transport: object) -> bool:
    """Whether ``transport`` keeps its unsent bytes where :func:`write_buffer_empty` looks.

    The fan-out sends straight to a drained socket only when it can tell that
    Twisted holds nothing for it (else bytes would go out of order); a
    transport that keeps its buffer elsewhere just takes ``transport.write``.
    """
    return all(hasattr(transport, name) for name in _WRITE_BUFFER)


def write_buffer_empty(transport: FileDescriptor) -> bool:
    """Twisted holds no unsent bytes for ``transport`` (pending writes and the buffer being sent).

    Twisted has no public "is anything buffered" question; this is read once
    per subscriber per reactor turn, so it is two attribute reads and no more.
    """
    return not transport._tempDataLen and not transport.dataBuffer


# --------------------------------------------------------------------------- bad requests (edge/listener.py)

class BadRequestChannel(http.HTTPChannel):
    """An HTTPChannel that reports every request Twisted's own parser refuses.

    Twisted answers a malformed request line, header or chunk with 400 and
    closes, all inside ``_respondToBadRequestAndDisconnect``, with no public
    hook: subclasses override :meth:`bad_request` to count it and stop their
    timers. A header line past ``MAX_LENGTH`` would be dropped without any
    answer (``LineReceiver.lineLengthExceeded``); it gets the same 400.
    """

    def bad_request(self) -> None:
        """Called just before Twisted answers 400 and closes the connection."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request()
        super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


# --------------------------------------------------------------------------- requests (edge/listener.py, connectors/ingest.py)

def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """The method, target and version of the request whose headers ``channel`` has just read.

    A streaming publish is handed to its resource when its headers are in, not
    when its body has ended (edge/bodystream.py); Twisted keeps the request line
    on the channel, privately, until then, and has no public way to ask for it.
    Valid from ``allHeadersReceived`` until ``allContentReceived``.
    """
    return channel._command, channel._path, channel._version


def skip_form_parsing(request: server.Request) -> None:
    """Turn off the parse of form bodies (urlencoded, multipart) into ``request.args`` for ``request``.

    Nothing in the daemon reads form fields, and the parse (through the email
    package, on every POST) cost 7 % of the daemon's CPU under publish load.
    Twisted has a public switch only on ``Site`` in newer releases than the
    oldest this project supports; call from the request's ``__init__``.
    """
    request._parsePOSTFormSubmission = False


def request_disconnected(request: object) -> bool:
    """Whether the connection under ``request`` was lost before it was answered.

    ``request.finished`` only says that we finished; writing to or finishing a
    request whose client left raises in Twisted, and the only record of that
    is the request's private flag. Test doubles without the flag (Twisted's
    ``DummyRequest``) are never disconnected.
    """
    return bool(getattr(request, "_disconnected", False))


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
