"""Writing the same bytes to many sockets cheaply (the sink's fast path).

Twisted's ``transport.write`` only buffers: it asks epoll to report the
socket writable, sends on a later reactor turn and then unregisters, so every
write costs two ``epoll_ctl`` calls and one reactor dispatch besides the
``send()`` (bench/RESULTS.md, "Profile"). A subscriber's socket is nearly
always drained, so ``write_now`` sends at once when the transport holds
nothing and leaves everything else (a partial send, TLS, a busy buffer, a
closing connection) to Twisted, which keeps ordering and flow control intact.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.tcp import Connection

#: the most bytes one write of a subscriber's backlog joins together
PUMP_BYTES = 64 * 1024


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def can_send_now(transport: Any) -> bool:
    """A plain TCP transport with nothing buffered: a direct ``send()`` keeps byte order."""
    return (
        isinstance(transport, Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    )


def write_now(transport: Any, data: bytes) -> None:
    """Send ``data`` at once if the socket takes it; whatever it does not take, Twisted sends later."""
    if can_send_now(transport):
        sent = transport.writeSomeData(data)  # the bytes sent, or the error that lost the connection
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
        # an error: transport.write buffers it and Twisted's next doWrite finds the loss
    transport.write(data)
