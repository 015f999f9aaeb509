"""HTTP ingest, routes and the log sink, over real sockets on 127.0.0.1 port 0."""

from __future__ import annotations

import json

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import capturedLogs
from twisted.web.client import HTTPConnectionPool

from .conftest import deadline, raw_request, subscribe

CONFIG = """\
streams:
  Readings: "sensor string, value double, ok bool"
sources:
  In:
    type: http
    stream: Readings
    receiver.url: http://localhost:0/publish
    max.body.size: 2000
sinks:
  Live:
    type: sse-server
    stream: Readings
    server.host: 127.0.0.1
    server.port: 0
  Narrow:
    type: sse-server
    schema: "sensor string"
    server.host: 127.0.0.1
    server.port: 0
  Logged:
    type: log
    stream: Readings
    prefix: "reading "
routes:
  - {from: Readings, to: Narrow}
"""


async def post(port: int, body: bytes, **kwargs) -> tuple[int, dict]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await deadline(treq.post(f"http://127.0.0.1:{port}/publish", data=body, pool=pool, **kwargs))
    content = await deadline(treq.content(response))
    return response.code, json.loads(content) if content else {}


@pytest_twisted.ensureDeferred
async def test_ingest_publishes_to_sinks_routes_and_log(daemon) -> None:
    service = await daemon(CONFIG)
    port = service.port_of("In")
    assert port == service.port_of("Live") == service.port_of("Narrow"), "one port-0 listener is shared"
    live = await subscribe(port, "/Live")
    narrow = await subscribe(port, "/Narrow")
    with capturedLogs() as events:
        code, answer = await post(port, b'[{"event":{"sensor":"a","value":1,"ok":true}},{"sensor":"b","value":2.5,"ok":false,"x":0}]')
    assert (code, answer) == (200, {"accepted": 2})
    await live.wait_for(b'{"event":{"sensor":"b","value":2.5,"ok":false}}')
    assert b'{"event":{"sensor":"a","value":1.0,"ok":true}}' in live.received
    await narrow.wait_for(b'{"event":{"sensor":"b"}}')
    assert b'{"event":{"sensor":"a"}}' in narrow.received
    logged = [e for e in events if e.get("sink") == "Logged"]
    assert [(e["prefix"], e["payload"]) for e in logged] == [
        ("reading ", '{"event":{"sensor":"a","value":1.0,"ok":true}}'),
        ("reading ", '{"event":{"sensor":"b","value":2.5,"ok":false}}'),
    ]
    assert service.sources["In"].counters["events_in"] == 2
    await live.close()
    await narrow.close()


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_rejected_whole_and_counted(daemon) -> None:
    service = await daemon(CONFIG)
    port = service.port_of("In")
    live = await subscribe(port, "/Live")
    cases = [
        (b'[{"sensor":"a","value":1,"ok":true},{"sensor":"b","value":"x","ok":true}]', "wrong-type", "element 1: attribute 'value'"),
        (b'{"sensor":"a","value":1}', "missing-attribute", "attribute 'ok' is missing"),
        (b"{not json", "invalid-json", "not valid JSON"),
        (b"\xff\xfe", "invalid-utf8", "not UTF-8"),
        (b"42", "not-an-object", "expected a JSON object"),
    ]
    with capturedLogs() as events:
        for body, reason, message in cases:
            code, answer = await post(port, body)
            assert code == 400, body
            assert answer["reason"] == reason
            assert message in answer["error"]
    rejected = service.sources["In"].rejected
    assert {reason: rejected[reason] for _, reason, _ in cases} == {reason: 1 for _, reason, _ in cases}
    assert sum(1 for e in events if e.get("source") == "In" and e.get("reason")) == len(cases), "each rejection is logged"
    code, answer = await post(port, b'{"sensor":"ok","value":0,"ok":true}')
    assert code == 200
    await live.wait_for(b'"sensor":"ok"')
    assert live.received.count(b"data:") == 1, "nothing of the rejected bodies was published"
    await live.close()


@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_gets_413(daemon) -> None:
    service = await daemon(CONFIG)
    port = service.port_of("In")
    big = b'{"sensor":"' + b"x" * 3000 + b'","value":1,"ok":true}'
    code, answer = await post(port, big)
    assert code == 413 and "larger than" in answer["error"]
    # chunked upload, no Content-Length: refused once the bytes pass the limit
    client = await raw_request(
        port,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (500, b"y" * 500) for _ in range(6)),
    )
    await deadline(client.closed)
    assert client.received.startswith(b"HTTP/1.1 413 ")
    assert service.sources["In"].counters["events_in"] == 0
    router = next(iter(service.listeners.values())).router
    assert router.rejected["body-too-large"] == 2, "both refusals are counted"


@pytest_twisted.ensureDeferred
async def test_get_on_ingest_is_405(daemon) -> None:
    service = await daemon(CONFIG)
    client = await raw_request(service.port_of("In"), b"GET /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await deadline(client.closed)
    assert client.received.startswith(b"HTTP/1.1 405 ")


@pytest_twisted.ensureDeferred
async def test_form_bodies_are_not_parsed_by_twisted() -> None:
    """A listener's requests skip Twisted's form parse (costly, and nothing here reads forms)."""
    from twisted.web.resource import Resource

    from sse_daemon.edge.listener import ListenerService

    seen: list[dict] = []

    class Recorder(Resource):
        isLeaf = True

        def render_POST(self, request):
            seen.append(dict(request.args))
            return b"ok"

    listener = ListenerService(reactor, "127.0.0.1", 0)
    listener.add("/form", Recorder(), "a recorder", max_body_size=100)
    listener.startService()
    try:
        client = await raw_request(listener.bound_port, b"POST /form HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                   b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=1")
        answer = await client.wait_for(b"\r\n\r\nok")
    finally:
        await listener.stopService()
    assert answer.startswith(b"HTTP/1.1 200") and seen == [{}]


@pytest_twisted.ensureDeferred
async def test_a_flood_of_bad_posts_is_counted_in_full_and_logged_in_part(daemon, log_events) -> None:
    service = await daemon(CONFIG)
    port = service.port_of("In")
    for _ in range(12):  # bounded
        code, answer = await post(port, b"{not json")
        assert code == 400 and answer["reason"] == "invalid-json"
    lines = [e for e in log_events if e.get("log_format", "").startswith("ingest {source} rejected a request")]
    assert service.sources["In"].rejected["invalid-json"] == 12
    assert [e["count"] for e in lines] == list(range(1, 11)), "the first ten, then every thousandth"
