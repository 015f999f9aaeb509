"""The HTTP side of an SSE sink: its resource, and what a subscription request says."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from sse_daemon.config.filters import FilterError
from sse_daemon.connectors.sink.filtering import bad_filter, query_values
from sse_daemon.connectors.sink.subscriber import Select

if TYPE_CHECKING:
    from sse_daemon.connectors.sink.core import SseSink


def peer_of(request: IRequest) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)  # an IAddress: IPv4Address and IPv6Address have one, a UNIX address has not
    return f"{host}:{address.port}" if host is not None else str(address)


def last_event_id(request: IRequest) -> str | None:
    """The id a client resumes from: the header, else a ``lastEventId`` or ``last_event_id``
    query parameter (for clients that cannot set headers); empty means none."""
    header = request.getHeader("last-event-id")
    if header is not None:
        return header.strip() or None
    query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
    values = query.get("lastEventId") or query.get("last_event_id")
    return (values[-1].strip() or None) if values else None


class SseSinkResource(Resource):
    """GET subscribes; HEAD answers the head only; other methods get 405."""

    isLeaf = True

    def __init__(self, sink: "SseSink") -> None:
        super().__init__()
        self.sink = sink

    def render_GET(self, request: server.Request) -> object:  # twisted.web hands a server.Request
        wheres = query_values(request, "where")
        select: Select | None = None
        if wheres:
            if self.sink.filters is None:
                return bad_filter(request, FilterError(
                    f"sink {self.sink.name} takes no filters (its subscriber.where option is off)", wheres[-1]))
            try:
                select = self.sink.filters.compile(wheres[-1])
            except FilterError as e:
                self.sink.rejected["bad-filter"] += 1
                return bad_filter(request, e)
        self.sink.subscribe(request, select)
        return server.NOT_DONE_YET

    def render_HEAD(self, request: IRequest) -> bytes:
        for name, value in self.sink.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        return b""
