"""Writing the same bytes to many sockets cheaply (the sink's fast path).

Each subscriber's bytes go out with one ``send()`` a reactor turn when its
socket is drained (edge/sendnow.py); what the socket does not take waits in
the subscriber's backlog, written ``PUMP_BYTES`` at a time.
"""

from __future__ import annotations

from sse_daemon.edge.sendnow import direct_socket, write_now

__all__ = ["PUMP_BYTES", "chunk", "direct_socket", "write_now"]

#: the most bytes one write of a subscriber's backlog joins together
PUMP_BYTES = 64 * 1024


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(data), data)
