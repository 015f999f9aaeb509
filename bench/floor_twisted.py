"""The floor under the publish benchmark: the least a Twisted HTTP/1.1 server can spend on a POST.

Not a peer and not a product: a bare ``Protocol`` that splits a request at
``\\r\\n\\r\\n``, forwards the body as one SSE frame to every subscriber and answers
200, checking nothing (no limits, no auth, no schema, no history, no metrics). Its
answer goes out with the daemon's own ``write_now`` (one ``send()``), as the
daemon's fast lane does. What sse-daemon costs above this row is the daemon's
own work; what this row costs is Twisted's reactor and the kernel. Run:
``python bench/floor_twisted.py PORT`` (127.0.0.1 only).
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor

from sse_daemon.edge.sendnow import direct_socket, write_now

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{"accepted": 1}\n'
SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
subscribers: list = []


class Floor(protocol.Protocol):
    buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            lines = buffer[:end].split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if len(buffer) < end + 4 + length:
                break
            body, buffer = buffer[end + 4:end + 4 + length], buffer[end + 4 + length:]
            if lines[0].startswith(b"GET"):
                self.transport.write(SSE)
                subscribers.append(self.transport)
                continue
            frame = b"data: " + body + b"\n\n"
            for subscriber in subscribers:
                subscriber.write(frame)  # Twisted's buffered write: one send() a turn for all of them
            write_now(self.transport, direct_socket(self.transport), OK)
        self.buffer = buffer


factory = protocol.Factory.forProtocol(Floor)
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")  # type: ignore[attr-defined]
reactor.run()  # type: ignore[attr-defined]
