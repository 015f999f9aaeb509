"""Pins the Twisted private names the SSE client relies on (sse_daemon/compat.py, HTTP client
section): an upgrade that renames or changes one fails here."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web import _newclient, client as web_client, http

from sse_daemon.compat import DATA_LOSS, HeadLimitedClientProtocol, quiet_connection_pool

pytestmark = pytest.mark.reactor_free


def test_the_pool_builds_its_connections_with_the_factory_in_its_private_factory_attribute() -> None:
    assert web_client.HTTPConnectionPool._factory is web_client._HTTP11ClientFactory
    reactor = MemoryReactorClock()
    pool = quiet_connection_pool(reactor)
    agent = web_client.Agent(reactor, pool=pool)
    agent.request(b"GET", b"http://example.test/")
    (_, _, factory, _, _) = reactor.tcpClients[0]
    # the endpoint wraps the pool's factory; the wrapped one is what the pool built
    built = getattr(factory, "_wrappedFactory", factory)
    assert isinstance(built, web_client._HTTP11ClientFactory) and built.noisy is False
    assert not pool.persistent
    assert isinstance(built.buildProtocol(None), HeadLimitedClientProtocol)


def test_the_client_protocol_keeps_its_response_parser_and_gives_up_where_compat_looks() -> None:
    protocol = _newclient.HTTP11ClientProtocol()
    assert protocol._parser is None and callable(protocol._giveUp)
    parser = _newclient.HTTPClientParser(None, lambda rest: None)
    parser.makeConnection(None)
    assert parser.state == _newclient.STATUS
    parser.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert parser.state == _newclient.HEADER


def test_a_cut_chunked_body_fails_with_the_private_data_loss() -> None:
    assert DATA_LOSS is http._DataLoss and issubclass(DATA_LOSS, Exception)
    decoder = http._ChunkedTransferDecoder(lambda data: None, lambda rest: None)
    decoder.dataReceived(b"5\r\nab")
    with pytest.raises(DATA_LOSS):
        decoder.noMoreData()
