"""The publish fast lane: plain POSTs to an ingest answered without twisted.web's Request (edge/leanrequest.py).

The lane must answer exactly as twisted.web's path does (same router, guard
and ingest; a test sends the same bytes both ways and compares), keep answers
in order on a pipelining connection (also when one is answered later), and
leave every request it does not recognise to twisted.web.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sse_daemon.edge.listener import LEAN_BACKLOG, PathRouter, QuietSite
from sse_daemon.policy.connections import PortPolicy
from sse_daemon.wire.httphead import MAX_HEAD, plain_post

from .conftest import deadline, header, next_response, port_channel, raw_request, status, subscribe, wait_for
from .test_auth import PASSWORD, basic, users_file  # noqa: F401  (users_file: a fixture)

# --------------------------------------------------------------------------- the request splitter (pure)

POST = b"POST /in?x=1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"n\": 1}"


@pytest.mark.reactor_free
def test_a_whole_plain_post_is_split_at_once_and_the_next_one_found_after_it() -> None:
    post = plain_post(POST + POST[:20])
    assert post is not None
    assert (post.target, post.path, post.body, post.end, post.close) == (b"/in?x=1", b"/in", b'{"n": 1}', len(POST), False)
    assert post.headers == {b"host": b"h", b"content-type": b"application/json", b"content-length": b"8"}
    assert plain_post(POST + POST, post.end) == post.__class__(**{**_fields(post), "end": 2 * len(POST)})
    assert plain_post(POST + POST[:20], post.end) is None, "the second is not whole yet"
    assert plain_post(POST.replace(b"Host: h", b"Connection: Close")).close is True  # type: ignore[union-attr]


def _fields(post: object) -> dict:
    return {name: getattr(post, name) for name in ("target", "path", "headers", "body", "end", "close")}


@pytest.mark.reactor_free
@pytest.mark.parametrize(("request_bytes", "why"), [
    (POST[:-1], "the body has not arrived whole"),
    (POST[:40], "the head has not arrived whole"),
    (POST.replace(b"POST", b"GET", 1), "not a POST"),
    (POST.replace(b"HTTP/1.1", b"HTTP/1.0"), "not HTTP/1.1"),
    (POST.replace(b"/in?x=1", b"http://h/in"), "an absolute target"),
    (POST.replace(b"Content-Length: 8", b"Transfer-Encoding: chunked"), "a chunked body"),
    (POST.replace(b"Host: h", b"Expect: 100-continue"), "a client waiting for 100 Continue"),
    (POST.replace(b"Host: h", b"Content-Length: 8"), "two Content-Lengths"),
    (POST.replace(b"Content-Length: 8", b"Content-Length: +8"), "a Content-Length that is not digits"),
    (POST.replace(b"Content-Length: 8\r\n", b""), "no Content-Length"),
    (POST.replace(b"Host: h", b"Host: h\xff"), "a byte outside ASCII"),
    (POST.replace(b"Host: h", b"Host: h\x00"), "a control byte"),
    (POST.replace(b"Host: h\r\n", b"Host: h\n"), "a bare LF"),
    (POST.replace(b"Host: h", b"Host: h\r\n folded"), "an obs-fold continuation"),
    (POST.replace(b"Host: h", b"Host : h"), "a space before the colon"),
    (POST.replace(b"Host: h", b"Host h"), "a line without a colon"),
    (POST.replace(b"Host: h", b"Host: " + b"h" * MAX_HEAD), "a head past twisted.web's limit"),
    (POST.replace(b"POST /in?x=1", b"POST  /in"), "a malformed request line"),
])
def test_anything_unusual_is_left_to_twisted_web(request_bytes: bytes, why: str) -> None:
    assert plain_post(request_bytes) is None, why


# --------------------------------------------------------------------------- on a clock


class Taken(Resource):
    isLeaf = True

    def render_POST(self, request: object) -> bytes:
        return b"taken\n"


@pytest.mark.reactor_free
@pytest.mark.parametrize("lean", [True, False])
def test_only_the_ports_head_deadline_closes_an_idle_kept_alive_connection(lean: bool) -> None:
    """twisted.web's own idle timeout (the Site's ``timeOut``, 60 s, restarted only by its own reads) would cut a
    connection that server.head.timeout lets wait, and one busy on the fast lane alone: it is off."""
    clock = Clock()
    router = PathRouter()
    router.add("/in", Taken(), takes_posts=lean)
    site = QuietSite(router, clock, 1000, PortPolicy(head_timeout=120, body_timeout=0))
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    for _ in range(30):  # 50 minutes, a publish every 100 s
        clock.advance(100)
        channel.dataReceived(request_bytes("/in", "", b"{}"))
    assert transport.value().count(b"HTTP/1.1 200 OK") == 30 and not transport.disconnecting
    clock.advance(119)
    assert not transport.disconnecting, "idle for less than server.head.timeout"
    clock.advance(2)
    assert transport.disconnecting, "the head deadline closes it"


@pytest.mark.reactor_free
@pytest.mark.parametrize("lean", [True, False])
def test_a_client_that_ends_each_post_with_an_extra_crlf_is_answered_as_twisted_web_answers_it(lean: bool) -> None:
    """twisted.web ignores one empty line before a request line (old browsers sent a CRLF after a POST's body),
    and only one until it has parsed the next request. The fast lane took the next request without that reset:
    the CRLF after it was then parsed as a request line, a 400 after its 200 and the kept-alive connection closed."""
    channel, transport, router, clock = port_channel(Taken(), takes_posts=lean)
    for _ in range(3):  # one request a read, as a client that waits for each answer sends them
        channel.dataReceived(request_bytes("/in", "", b"{}") + b"\r\n")
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3 and b"400" not in transport.value()
    assert not transport.disconnecting and not router.rejected
    channel.connectionLost(Failure(ConnectionDone()))


class Later(Resource):
    """Answers each POST only when the test says so (as a history file's commit, or Redis, does)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list = []

    def render_POST(self, request: object) -> object:
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        request = self.waiting.pop(0)
        request.write(b"taken\n")
        request.finish()


@pytest.mark.reactor_free
def test_reading_stays_paused_while_more_than_the_backlog_waits_behind_a_request_answered_later() -> None:
    """A pipelining client whose answers come later (a history file, Redis) once had its reading paused only when
    the backlog first grew past 16 KiB: a first read larger than that was not paused at all, and every answer resumed
    reading with most of the backlog still held, one more read per answer, so the backlog grew without bound."""
    later = Later()
    channel, transport, router, clock = port_channel(later)
    one = request_bytes("/in", "", b"{}")
    count = 3 * LEAN_BACKLOG // len(one)
    channel.dataReceived(one * count)  # one read, three times the backlog
    assert transport.producerState == "paused", "more than the backlog held: reading pauses at once"
    later.answer()
    assert transport.producerState == "paused", "one answer takes one request: most of the backlog is still held"
    channel.resumeProducing()  # the transport's buffer drained: twisted.web resumes reading
    channel.dataReceived(one * count)  # what it read then
    assert transport.producerState == "paused", "paused again by the read"
    answered = 1
    while len(later.waiting) and transport.producerState == "paused":
        later.answer()
        answered += 1
    assert transport.producerState == "producing" and answered > count, "reading resumes once the backlog is small"
    while later.waiting:
        later.answer()
        answered += 1
    assert answered == 2 * count and transport.value().count(b"HTTP/1.1 200 OK") == 2 * count, "every request answered, in order"


@pytest.mark.reactor_free
def test_a_client_that_reads_none_of_its_answers_is_not_read_from_meanwhile() -> None:
    """An answer given later once resumed the reading a large backlog had paused even while the transport held
    answers the client had not read (its buffer full: it paused the channel), so a pipelining client that reads
    nothing could have answers pile up in the daemon's memory for as long as it kept sending."""
    later = Later()
    channel, transport, router, clock = port_channel(later)
    one = request_bytes("/in", "", b"{}")
    count = 2 * LEAN_BACKLOG // len(one)
    channel.dataReceived(one * count)
    channel.pauseProducing()  # what the transport does once its buffer is full of unread answers
    while later.waiting:
        later.answer()
    assert transport.value().count(b"HTTP/1.1 200 OK") == count, "what was read is answered"
    assert transport.producerState == "paused", "nothing more is read while the client reads none of its answers"
    channel.resumeProducing()  # it read them: the buffer drained
    assert transport.producerState == "producing"


# --------------------------------------------------------------------------- over sockets

CONFIG = """\
sinks:
  S: {{type: sse-server, stream: S, schema: 'n int', server.host: 127.0.0.1, server.port: 0, server.path: events,
       heartbeat.interval: 0, drain.window: 0}}
sources:
  Open: {{type: http, stream: S, schema: 'n int', receiver.url: 'http://127.0.0.1:0/in', max.events.per.request: 3,
          max.body.size: 200}}
  Cors: {{type: http, stream: S, schema: 'n int', receiver.url: 'http://127.0.0.1:0/cors', cors.origins: 'https://ok.example'}}
  Locked: {{type: http, stream: S, schema: 'n int', receiver.url: 'http://127.0.0.1:0/locked', auth.type: basic,
            auth.users.file: '{users}'}}
"""

GOOD = basic("alice", PASSWORD)

#: (request target, extra headers, body): every answer a publisher can get here, good and bad
CASES = [
    ("/in", "", b'{"n": 1}'),
    ("/in/", "Content-Type: application/json\r\n", b'[{"n": 1}, {"n": 2}]'),
    ("/in?token=x", "", b'{"event": {"n": 3}}'),
    ("/in", "", b'{"n": "one"}'),  # 400 wrong-type
    ("/in", "", b'{"n": 1'),  # 400 invalid JSON
    ("/in", "", b'{"n": 1}\xff'),  # 400 not UTF-8
    ("/in", "", b'[{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]'),  # 413 too many events
    ("/in", "", b'{"n": 1}' + b" " * 300),  # 413 past max.body.size (twisted.web's, at the head)
    ("/nowhere", "", b'{"n": 1}'),  # 404
    ("/events", "", b'{"n": 1}'),  # 405: a sink's path takes no POST
    ("/cors", "Origin: https://ok.example\r\n", b'{"n": 1}'),
    ("/cors", "Origin: https://evil.example\r\n", b'{"n": 1}'),  # 403
    ("/locked", "", b'{"n": 1}'),  # 401
    ("/locked", f"Authorization: {GOOD}\r\n", b'{"n": 1}'),  # answered after a password check off the reactor
    ("/locked", f"Authorization: {basic('alice', 'wrong')}\r\n", b'{"n": 1}'),  # 401 after the check
    ("/in", "Content-Type: application/x-ndjson\r\n", b'{"n": 1}\n{"n": 2}\n'),  # a streaming publish (twisted.web's)
]


def request_bytes(target: str, headers: str, body: bytes, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def answers(port: int, requests: list[bytes], expected: int) -> list[tuple[bytes, bytes]]:
    """Send ``requests`` in one write on one connection; the ``expected`` answers, in order."""
    client = await raw_request(port, b"".join(requests))
    found: list[tuple[bytes, bytes]] = []

    def complete() -> bool:
        rest = bytes(client.received)
        found.clear()
        while (one := next_response(rest)) is not None:
            head, body, rest = one
            found.append((head, body))
        return len(found) >= expected or client.is_closed

    await wait_for(complete, what=f"{expected} answers")
    await client.close()
    return found


def comparable(head: bytes) -> list[bytes]:
    """A response head without its Date line (the one header that may differ between two answers)."""
    return [line for line in head.split(b"\r\n") if not line.startswith(b"Date: ")]


@pytest_twisted.ensureDeferred
async def test_the_fast_lane_answers_as_twisted_web_does(daemon, users_file: Path) -> None:  # noqa: F811
    service = await daemon(CONFIG.format(users=users_file))
    port = service.port_of("S")
    listener = next(iter(service.listeners.values()))
    router = listener.router
    assert router.lean_targets == {b"/in", b"/in/", b"/cors", b"/cors/", b"/locked", b"/locked/"}
    subscriber = await subscribe(port)

    def figures() -> dict:
        return {name: (dict(source.counters), dict(source.rejected)) for name, source in service.sources.items()} | {
            "router": dict(router.rejected), "requests": dict(listener.site.requests)}

    outcomes = {}
    for lane, targets in (("lean", router.lean_targets), ("twisted.web", frozenset())):
        router.lean_targets = targets
        before = figures()
        found = []
        for case in CASES:  # one connection each: a refusal may close it
            found += await answers(port, [request_bytes(*case)], 1)
        outcomes[lane] = ([(comparable(head), body) for head, body in found], before, figures())
        router.lean_targets = frozenset({b"/in", b"/in/", b"/cors", b"/cors/", b"/locked", b"/locked/"})

    lean, twisted_web = outcomes["lean"][0], outcomes["twisted.web"][0]
    assert [status(head[0]) for head, _ in lean] == [200, 200, 200, 400, 400, 400, 413, 413, 404, 405, 200, 403, 401, 200, 401, 200]
    for case, (lean_head, lean_body), (web_head, web_body) in zip(CASES, lean, twisted_web):
        assert (lean_head, lean_body) == (web_head, web_body), f"{case}: the two lanes answer differently"
        assert b"Server: sse-daemon" in lean_head, "the daemon's name, neither its version nor Twisted's"
    # each lane counted the same: every ingest's counters, the router's refusals, requests by HTTP version
    deltas = []
    for _, before, after in outcomes.values():
        deltas.append({key: _delta(before[key], after[key]) for key in after})
    assert deltas[0] == deltas[1]
    assert deltas[0]["Open"][0]["events_in"] == 6 and deltas[0]["requests"] == {"HTTP/1.1": len(CASES)}
    await wait_for(lambda: subscriber.received.count(b"data: ") >= 16, what="every accepted event delivered")
    await subscriber.close()


def _delta(before: object, after: object) -> object:
    if isinstance(after, tuple):
        return tuple(_delta(b, a) for b, a in zip(before, after))  # type: ignore[arg-type]
    assert isinstance(before, dict) and isinstance(after, dict)
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


@pytest_twisted.ensureDeferred
async def test_pipelined_posts_are_answered_in_order_also_when_one_waits(daemon, users_file: Path) -> None:  # noqa: F811
    service = await daemon(CONFIG.format(users=users_file))
    port = service.port_of("S")
    requests = [request_bytes("/in", "", b'{"n": 1}'),
                request_bytes("/locked", f"Authorization: {GOOD}\r\n", b'{"n": 2}'),  # a password check: answered later
                request_bytes("/in", "", b'{"n": "x"}'),
                request_bytes("/in", "", b'{"n": 4}' + b" " * 20000)[:0] + request_bytes("/in", "", b'{"n": 4}')]
    # what follows a waiting request is held, and more than twisted.web's 16 KiB of it pauses the reading
    requests += [request_bytes("/in", "", b'{"n": 5}')] * 600
    found = await answers(port, requests, len(requests))
    assert [status(head) for head, _ in found[:4]] == [200, 200, 400, 200]
    assert [json.loads(body) for _, body in found[:2]] == [{"accepted": 1}, {"accepted": 1}]
    assert len(found) == len(requests) and {status(head) for head, _ in found[4:]} == {200}
    assert service.sources["Open"].counters["events_in"] == 602


@pytest_twisted.ensureDeferred
async def test_connection_close_a_client_that_leaves_and_the_head_deadline(daemon, users_file: Path) -> None:  # noqa: F811
    service = await daemon(CONFIG.format(users=users_file).replace("'n int', ", "'n int', server.head.timeout: 1, "))
    port = service.port_of("S")
    closing = await raw_request(port, request_bytes("/in", "", b'{"n": 1}', close=True) + request_bytes("/in", "", b'{"n": 2}'))
    await deadline(closing.closed)
    assert header(bytes(closing.received), "Connection") == "close" and bytes(closing.received).count(b"HTTP/1.1 200") == 1, \
        "closed after the answer; what followed was not read"
    # a client that leaves while its request waits (a password check) costs no error and no answer
    leaving = await raw_request(port, request_bytes("/locked", f"Authorization: {GOOD}\r\n", b'{"n": 3}'))
    await leaving.close()
    site = next(iter(service.listeners.values())).site
    await wait_for(lambda: site.protocols["http/1.1"] == 0, what="both connections released")
    # a kept-alive connection answered on the fast lane gets the head deadline again: idle, it is closed
    idle = await raw_request(port, request_bytes("/in", "", b'{"n": 4}'))
    await idle.wait_for(b'{"accepted": 1}')
    await deadline(idle.closed, 10)
    assert bytes(idle.received).count(b"HTTP/1.1") == 1, "closed without another answer"
    assert service.sources["Open"].counters["events_in"] == 2
    locked = service.sources["Locked"]
    await wait_for(lambda: locked.counters["events_in"] == 0 and not locked.rejected, what="nothing counted for the leaver")


@pytest_twisted.ensureDeferred
async def test_once_shutdown_begins_the_fast_lane_steps_aside_for_the_503(daemon, users_file: Path) -> None:  # noqa: F811
    service = await daemon(CONFIG.format(users=users_file))
    port = service.port_of("S")
    site = next(iter(service.listeners.values())).site
    site.stopping.begin()
    (head, body), = await answers(port, [request_bytes("/in", "", b'{"n": 1}')], 1)
    assert status(head) == 503 and json.loads(body)["reason"] == "shutting-down" and header(head, "Retry-After") == "5"
    assert service.sources["Open"].counters["events_in"] == 0
