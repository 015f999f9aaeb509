"""Limits: subscriber caps, new-connection rate and ingest request rate; 503 with Retry-After, counted, logged."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from sse_daemon.policy.limits import Admission, KeyedBuckets, RequestRate, TokenBucket, should_log

from .conftest import RawHttpClient, deadline, header, raw_request, status, subscribe, wait_for

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    {extra}
"""

INGEST = """\
sources:
  In:
    type: http
    stream: S
    schema: "n int"
    receiver.url: http://127.0.0.1:0/in
    {extra}
"""


def config(template: str = SINK, **extra: object) -> str:
    return template.format(extra="\n    ".join(f"{k}: {v}" for k, v in extra.items()))


def body(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])


async def refused(port: int, path: str = "/events", source: str = "127.0.0.1") -> bytes:
    client = RawHttpClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    await deadline(connectProtocol(endpoint, client))
    client.transport.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await client.wait_for(b"}\n")  # the end of the JSON body; the connection stays open for another request
    await client.close()
    return bytes(client.received)


async def subscribe_from(port: int, source: str) -> RawHttpClient:
    client = RawHttpClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    await deadline(connectProtocol(endpoint, client))
    client.transport.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.wait_for(b"stream open\n\n")
    return client


async def post(port: int, data: bytes = b'{"n": 1}') -> bytes:
    client = await raw_request(port, b"POST /in HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    await deadline(client.closed)
    return bytes(client.received)


# --------------------------------------------------------------------------- pure


@pytest.mark.reactor_free
def test_token_bucket_on_the_clock() -> None:
    clock = Clock()
    bucket = TokenBucket(2, 2, clock.seconds)
    assert bucket.take() == 0 and bucket.take() == 0
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() == 0 and bucket.take() == pytest.approx(0.5)
    clock.advance(100)
    assert bucket.full(), "saved-up tokens never pass the burst"
    assert [bucket.take() == 0 for _ in range(3)] == [True, True, False]


@pytest.mark.reactor_free
def test_keyed_buckets_are_per_key_and_bounded() -> None:
    clock = Clock()
    buckets = KeyedBuckets(1, 1, clock.seconds, size=3)
    assert buckets.take("a") == 0 and buckets.take("a") > 0
    assert buckets.take("b") == 0, "another address has its own bucket"
    for key in "cdef":
        buckets.take(key)
    assert len(buckets) == 3, "the least recently used addresses are forgotten"


@pytest.mark.reactor_free
def test_admission_caps_and_reasons() -> None:
    clock = Clock()
    admission = Admission(max_total=3, max_per_address=2, per_second=0, now=clock.seconds, retry_after=7)
    for host in ("a", "a", "b"):
        assert admission.check(host) is None
        admission.opened(host)
    assert admission.check("c").reason == "too-many-subscribers"
    admission.closed("b")
    refusal = admission.check("a")
    assert (refusal.reason, refusal.retry_after) == ("too-many-from-address", 7)
    assert admission.check("b") is None
    admission.closed("a")
    admission.closed("a")
    assert admission.total == 0 and not admission.by_address, "no address is remembered once its streams end"


@pytest.mark.reactor_free
def test_rates_round_retry_after_up() -> None:
    clock = Clock()
    admission = Admission(0, 0, per_second=0.25, now=clock.seconds, retry_after=5)
    assert admission.check("x") is None
    refusal = admission.check("x")
    assert (refusal.reason, refusal.retry_after) == ("connection-rate", 4)
    rate = RequestRate(10, clock.seconds)
    assert all(rate.check("x") is None for _ in range(10))
    assert rate.check("x").retry_after == 1, "Retry-After is at least one second"
    assert rate.check("y") is None
    assert RequestRate(0, clock.seconds).check("x") is None, "0 turns the limit off"


@pytest.mark.reactor_free
def test_refusal_logging_is_sampled() -> None:
    assert [n for n in range(1, 3001) if should_log(n)] == list(range(1, 11)) + [1000, 2000, 3000]


# --------------------------------------------------------------------------- over sockets


@pytest_twisted.ensureDeferred
async def test_max_subscribers_answers_503_with_retry_after(daemon, log_events) -> None:
    service = await daemon(config(**{"max.subscribers": 2, "limit.retry.after": 9}))
    port = service.port_of("Events")
    sink = service.sinks["Events"].sink
    first, second = await subscribe(port), await subscribe(port)
    answer = await refused(port)
    assert status(answer) == 503
    assert header(answer, "Retry-After") == "9"
    assert body(answer)["reason"] == "too-many-subscribers"
    assert sink.rejected == {"too-many-subscribers": 1}
    assert len(sink.subscribers) == 2
    logged = [e for e in log_events if e.get("reason") == "too-many-subscribers"]
    assert logged and logged[0]["connector"] == "sink 'Events'" and logged[0]["peer"] == "127.0.0.1"
    await first.close()
    await wait_for(lambda: len(sink.subscribers) == 1, what="a slot to free")
    third = await subscribe(port)
    await third.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_max_subscribers_per_address(daemon) -> None:
    service = await daemon(config(**{"max.subscribers.per.address": 1}))
    port = service.port_of("Events")
    here = await subscribe_from(port, "127.0.0.1")
    answer = await refused(port, source="127.0.0.1")
    assert status(answer) == 503 and body(answer)["reason"] == "too-many-from-address"
    other = await subscribe_from(port, "127.0.0.2")  # another client address is not affected
    await other.close()
    await here.close()
    sink = service.sinks["Events"].sink
    await wait_for(lambda: not sink.subscribers, what="both to leave")
    again = await subscribe_from(port, "127.0.0.1")
    await again.close()


@pytest_twisted.ensureDeferred
async def test_new_connection_rate_on_the_clock(daemon) -> None:
    clock = Clock()
    service = await daemon(config(**{"max.connections.per.second": 2, "heartbeat.interval": 0}), clock=clock)
    port = service.port_of("Events")
    clients = [await subscribe(port), await subscribe(port)]
    answer = await refused(port)
    assert status(answer) == 503 and body(answer)["reason"] == "connection-rate"
    assert header(answer, "Retry-After") == "1"
    clock.advance(0.5)  # one new token
    clients.append(await subscribe(port))
    assert status(await refused(port)) == 503
    for client in clients:
        await client.close()
    assert service.sinks["Events"].sink.rejected == {"connection-rate": 2}


@pytest_twisted.ensureDeferred
async def test_head_and_refused_methods_take_no_slot(daemon) -> None:
    service = await daemon(config(**{"max.subscribers": 1}))
    port = service.port_of("Events")
    for _ in range(3):
        head = await raw_request(port, b"HEAD /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await deadline(head.closed)
        assert status(bytes(head.received)) == 200
    client = await subscribe(port)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_ingest_request_rate_per_address(daemon) -> None:
    clock = Clock()
    service = await daemon(config(INGEST, **{"max.requests.per.second": 2}), clock=clock)
    port = service.port_of("In")
    assert [status(await post(port)) for _ in range(3)] == [200, 200, 503]
    answer = await post(port)
    assert header(answer, "Retry-After") == "1" and body(answer)["reason"] == "request-rate"
    clock.advance(1)
    assert status(await post(port)) == 200
    assert service.sources["In"].rejected["request-rate"] == 2


@pytest_twisted.ensureDeferred
async def test_body_size_limit_still_answers_413(daemon) -> None:
    service = await daemon(config(INGEST, **{"max.body.size": 10, "max.requests.per.second": 100}))
    answer = await post(service.port_of("In"), b'{"n": 1, "pad": "xxxxxxxxxx"}')
    assert status(answer) == 413
