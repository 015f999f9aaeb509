"""Sending to a plain TCP socket at once, when Twisted holds nothing for it.

Twisted's ``transport.write`` only buffers: it asks epoll to report the
socket writable, sends on a later reactor turn and then unregisters, so every
write costs two ``epoll_ctl`` calls and one reactor dispatch besides the
``send()`` (bench/RESULTS.md, "Profile"). A subscriber's socket, or a
publisher's waiting for its answer, is nearly always drained, so
``write_now`` sends at once when the transport holds nothing and leaves
everything else (a partial send, a busy buffer, a closing connection) to
Twisted, which keeps byte order and flow control intact. TLS connections
never take the shortcut: their transport is not a plain socket.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.tcp import Connection

from sse_daemon.compat import has_write_buffer, write_buffer_empty

__all__ = ["direct_socket", "write_now"]


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket under a plain TCP transport (None for TLS, or anything else): what ``write_now`` may send on.

    None too if this Twisted keeps its write buffer differently: every write then goes
    through ``transport.write`` (slower, still correct), and tests/test_compat.py fails.
    """
    if isinstance(transport, Connection) and not transport.TLS and has_write_buffer(transport):
        return transport.socket
    return None


def write_now(transport: Any, sock: socket.socket | None, data: bytes) -> None:
    """Send ``data`` at once if the socket takes it; whatever it does not take, Twisted sends later.

    The shortcut is taken only while Twisted holds nothing for this transport
    (so bytes stay in order) and the connection is open and not closing.
    """
    if sock is not None and write_buffer_empty(transport) and transport.connected and not transport.disconnecting:
        try:
            sent = sock.send(data)
        except OSError:  # EAGAIN: nothing taken; anything else: Twisted's next write finds the loss
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
