"""Bad input: random requests, headers, Last-Event-ID values, query strings, payloads and slow clients.

Seeded and bounded (a few hundred requests per seed, well under a second of
CPU each), so a failure names its seed and the request that caused it. After
the storm the daemon must still serve a normal subscriber and ingest, have
answered every request with a status below 500 (a clear 4xx for what was
malformed), and hold no connection or subscriber it should have let go.

Every request path is in the storm (issue 12): open, bearer- and
password-protected sinks, a plain and a cookie-authenticated ingest, and the
admin listener; every method (HEAD, OPTIONS and odd ones) on each; request
targets that are absolute URIs, ``*``, or hold NUL, bad percent-encoding or
bytes that are not UTF-8; header names and values that are not UTF-8.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import string
from urllib.parse import quote

import bcrypt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import globalLogPublisher

from .conftest import RawHttpClient, deadline, raw_request, subscribe, wait_for

TOKEN = "fuzz-static-token-0123456789"
PASSWORD = "fuzz password"

CONFIG = """\
admin:
  port: 0
streams:
  S: "n int, text string"
sources:
  In:
    type: http
    stream: S
    receiver.url: http://127.0.0.1:0/in
    max.body.size: 4096
    cors.origins: "https://app.example.com"
  Cookied:
    type: http
    stream: S
    receiver.url: http://127.0.0.1:0/cookied
    auth.type: bearer
    auth.tokens.env: FUZZ_TOKENS
    auth.cookie: sse_token
sinks:
  Open:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: open
    history.size: 5
  Guarded:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: guarded
    auth.type: bearer
    auth.tokens.env: FUZZ_TOKENS
    auth.cookie: sse_token
    auth.query.token: true
    max.subscribers.per.address: 50
  Basic:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: basic
    auth.type: basic
    auth.users.file: {users}
"""

METHODS = ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE", "CONNECT", "get", "G\tT", "X" * 300, "",
           "M\udcffM", "PROPFIND"]
PATHS = ["/open", "/guarded", "/basic", "/in", "/cookied", "/", "/nope", "/open/", "//open", "/open?", "/%00", "/../open", "*",
         "open", "/" + "a" * 9000, "/open#frag", "/\u00e9".encode().decode("latin-1"), "/\udcff", "/open%ff", "/%zz",
         "http://x/open", "https://127.0.0.1/in", "http://x", "//x/open", "/metrics", "/healthz", "/status.json", "/events/S",
         "/events/%ff", "/readyz", "/status.js"]
#: bytes that are not UTF-8 (written through surrogateescape): in any header name or value they are a 400
NOT_UTF8 = ["\udcff", "\udcfe\udcff", "\udcc3(", "\udce9t\udce9", "\udc80"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1 extra", "", "HTTP/", "FOO/1.1"]
ODD = ["", " ", "\x00", "\xff", "\r", "\n", "\r\n", ":", ";", ",", "=", "%", "%zz", "%00", "\u00e9", "\\", '"', "'", "-1", "0",
       "1e309", "NaN", "9" * 400, "\t"]


def junk(rng: random.Random, limit: int = 40) -> str:
    pieces = [rng.choice(ODD) if rng.random() < 0.3 else rng.choice(string.printable) for _ in range(rng.randrange(limit))]
    return "".join(pieces)


def last_event_id(rng: random.Random) -> str:
    return rng.choice([
        "0", "-1", "1", str(rng.randrange(1 << 70)), "18446744073709551616", "1.5", " 12 ", "abc", "",
        "9" * rng.randrange(1, 5000), junk(rng), "\u2603", "1" + "\x00" + "2",
    ])


def query(rng: random.Random) -> str:
    keys = ["lastEventId", "last_event_id", "access_token", "x", "", "lastEventId[]", junk(rng, 10)]
    parts = [f"{rng.choice(keys)}={rng.choice([last_event_id(rng), junk(rng), TOKEN, 'a.b.c'])}" for _ in range(rng.randrange(4))]
    if rng.random() < 0.2:
        parts.append("&" * rng.randrange(50) + "=" * rng.randrange(50))
    return ("?" + "&".join(parts)) if parts else ""


def headers(rng: random.Random, body: bytes, host: str = "x") -> list[str]:
    chosen: list[str] = [f"Host: {host}"]
    for _ in range(rng.randrange(8)):
        chosen.append(rng.choice([
            f"Last-Event-ID: {last_event_id(rng)}",
            f"Authorization: {rng.choice(['Basic', 'Bearer', 'bearer', 'Digest', ''])} {rng.choice([junk(rng), TOKEN, 'a.b.c', 'eyJ' + junk(rng) + '.e30.x', '!!!'])}",
            f"Cookie: {rng.choice(['sse_token', 'x', ''])}={junk(rng)}; {junk(rng, 10)}",
            f"Origin: {rng.choice(['https://app.example.com', 'https://evil.example', 'null', junk(rng)])}",
            f"Access-Control-Request-Method: {rng.choice(['POST', 'GET', junk(rng, 8)])}",
            f"Access-Control-Request-Headers: {rng.choice(['content-type', 'x-evil', junk(rng)])}",
            f"Content-Type: {rng.choice(['application/json', 'text/plain', junk(rng)])}",
            f"Content-Length: {rng.choice([str(len(body)), '-1', '99999999999', 'abc', str(len(body) + 5), ''])}",
            "Transfer-Encoding: chunked",
            f"Expect: {rng.choice(['100-continue', junk(rng)])}",
            f"{junk(rng, 12)}: {junk(rng)}",
            f"X-Big: {'v' * rng.choice([10, 20000, 70000])}",
            junk(rng),
        ]))
    return chosen


def body(rng: random.Random) -> bytes:
    return rng.choice([
        b"", b'{"n": 1, "text": "a"}', b'[{"event": {"n": 2, "text": "b"}}]', b"{", b"null", b"[]", b'{"n": "1"}',
        b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
        json.dumps({"n": rng.randrange(-(1 << 70), 1 << 70), "text": junk(rng)}).encode(),
        os.urandom(rng.randrange(200)), b"x" * 5000,
        # values no sink could write (issue 12): a 400 naming them, never a 200 that reaches no one, nor a 500
        b'{"n": 1, "text": "\\ud800"}', b'[{"n": 1, "text": "a"}, {"n": 2, "text": "\\udfff"}]', b'{"n": 1, "text": 1e400}',
        b'{"n": -1e400, "text": "a"}', b'{"n": 1, "text": ' + b"9" * 400 + b"}", b'{"n": 1, "text": NaN}',
        b'{"n": 1, "text": ' + b"[" * 2000 + b"]" * 2000 + b"}", b'{"n": 1, "text": {"\\ud800": 1}}',
    ])


def printable(rng: random.Random, limit: int = 40) -> str:
    """Hostile but well-formed header text: no CR, LF or NUL, some non-ASCII."""
    return "".join(c for c in junk(rng, limit) if c not in "\r\n\x00\x0b\x0c")


SINK_PATHS = ["/open", "/guarded", "/basic", "/in", "/cookied", "/nope", "/open/", "/guarded/", "/basic/"]
ADMIN_PATHS = ["/metrics", "/healthz", "/readyz", "/status.json", "/", "/status.js", "/events/S", "/events/%53", "/nope"]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def plausible(rng: random.Random, admin: bool = False) -> bytes:
    """Well-formed HTTP/1.x with hostile values: these reach the guard, the sinks, the ingest and the admin listener."""
    method = rng.choice(["GET", "GET", "GET", "POST", "POST", "HEAD", "HEAD", "OPTIONS", "OPTIONS", "PUT", "DELETE", "PATCH",
                         "TRACE", "get", "PROPFIND"])
    path = rng.choice(ADMIN_PATHS if admin else SINK_PATHS)
    if rng.random() < 0.1:
        path = rng.choice(["http://x", "http://127.0.0.1:1", "https://evil.example"]) + path  # an absolute-URI target
    if rng.random() < 0.05:
        path = rng.choice(["*", path + "%00", path + "%zz", path + "%ff", path + "\udcff", path + "/\x00"])
    params = [f"{rng.choice(['lastEventId', 'last_event_id', 'access_token', 'x', 'name[]'])}={quote(rng.choice([last_event_id(rng), printable(rng), TOKEN]))}"
              for _ in range(rng.randrange(3))]
    payload = body(rng) if method == "POST" else b""
    lines = [f"{method} {path}{'?' + '&'.join(params) if params else ''} {rng.choice(['HTTP/1.1', 'HTTP/1.0'])}",
             f"Host: {'127.0.0.1' if admin else 'x'}"]
    for _ in range(rng.randrange(5)):
        lines.append(rng.choice([
            f"Last-Event-ID: {printable(rng) if rng.random() < 0.3 else last_event_id(rng).replace(chr(0), '')[:3000]}",
            f"Authorization: {rng.choice(['Basic', 'Bearer', 'Digest'])} {rng.choice([printable(rng), TOKEN, 'a.b.c', '!!!', 'eyJhbGciOiJub25lIn0.e30.'])}",
            f"Authorization: {rng.choice([basic('alice', PASSWORD), basic('alice', printable(rng)), basic(printable(rng), PASSWORD), basic('', '')])}",
            f"Cookie: sse_token={rng.choice([TOKEN, printable(rng)]).replace(';', '')}",
            f"Origin: {rng.choice(['https://app.example.com', 'https://evil.example', 'null', printable(rng, 20)])}",
            f"Access-Control-Request-Method: {rng.choice(['POST', 'GET', 'PUT', printable(rng, 8)])}",
            f"Access-Control-Request-Headers: {rng.choice(['content-type', 'authorization, content-type', 'x-evil', printable(rng, 20)])}",
            f"Content-Type: {rng.choice(['application/json', 'text/plain', 'multipart/form-data', printable(rng, 20)])}",
            f"Accept: {rng.choice(['text/event-stream', 'application/openmetrics-text; version=1.0.0', 'application/openmetrics-text;;q=x', printable(rng, 30)])}",
            f"X-Requested-With: {printable(rng, 10)}",
            "Expect: 100-continue",
        ]))
    if rng.random() < 0.1:  # bytes that are not UTF-8 in a header's value or name: a 400 wherever it goes
        name = rng.choice(["Authorization", "Origin", "Last-Event-ID", "Accept", "Cookie", "X-Odd" + rng.choice(NOT_UTF8)])
        lines.insert(rng.randrange(1, len(lines) + 1), f"{name}: {rng.choice(['Basic ', 'Bearer ', 'sse_token=', ''])}{rng.choice(NOT_UTF8)}")
    lines.append(f"Content-Length: {len(payload)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + payload


def mutant(rng: random.Random, admin: bool = False) -> bytes:
    """Anything goes: random bytes, odd request lines, broken headers, lengths that lie."""
    if rng.random() < 0.15:
        return os.urandom(rng.randrange(1, 300)) + b"\r\n\r\n"
    payload = body(rng) if rng.random() < 0.6 else b""
    line = f"{rng.choice(METHODS)} {rng.choice(PATHS)}{query(rng)} {rng.choice(VERSIONS)}"
    head = "\r\n".join([line, *headers(rng, payload, "127.0.0.1" if admin else "x"), "Connection: close"]) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + payload


def request(rng: random.Random) -> tuple[bool, bytes]:
    """Whether it goes to the admin listener, and the request."""
    admin = rng.random() < 0.25
    return admin, (plausible(rng, admin) if rng.random() < 0.7 else mutant(rng, admin))


def statuses_of(raw: bytes) -> list[int]:
    """Every final status on the connection (bytes after a request can be a second request,
    when a Content-Length lies); interim 100 Continue skipped; empty when nothing came."""
    found = [int(code) for code in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", raw)]
    return [code for code in found if code != 100]


def incomplete(sent: bytes) -> bool:
    """Whether a request announces more body than it sends (chunked, or a larger Content-Length)."""
    head, _, payload = sent.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    if b"transfer-encoding: chunked" in lines:
        return True
    lengths = [line.split(b":", 1)[1].strip() for line in lines if line.startswith(b"content-length:")]
    return any(value.isdigit() and int(value) > len(payload) for value in lengths)


def trailing(sent: bytes) -> bool:
    """Whether bytes follow the body the request declares (a lying or missing Content-Length)."""
    head, _, payload = sent.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1].strip() for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    declared = int(lengths[-1]) if lengths and lengths[-1].isdigit() else 0
    return len(payload) > declared


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def errors():
    """Every log event that carries a failure (an exception in our code or Twisted's)."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_random_requests_get_clear_answers_and_leave_nothing_behind(daemon, monkeypatch, errors, tmp_path, seed: int) -> None:
    monkeypatch.setenv("FUZZ_TOKENS", TOKEN)
    users = tmp_path / "users"
    users.write_text(f"alice:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
    service = await daemon(CONFIG.format(users=users))
    port, admin = service.port_of("Open"), service.admin.port
    watcher = await subscribe(port, "/open")
    fds = open_fds()
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    router = next(iter(service.listeners.values())).router
    counters = [router.rejected, service.admin.listener.router.rejected, *(service.sinks[name].sink.rejected for name in ("Open", "Guarded", "Basic")),
                service.sources["In"].rejected, service.sources["Cookied"].rejected, service.admin.rejected]

    def counted() -> int:
        return sum(sum(c.values()) for c in counters)

    for index in range(200):
        to_admin, sent = request(rng)
        before = counted()
        client = await raw_request(admin if to_admin else port, sent)
        # A request whose body is announced but not all sent is rightly waited for: give it a
        # moment (a refusal may still come), then hang up. Anything else must be answered.
        pending = incomplete(sent)
        try:
            # a final answer's head, not only an interim "100 Continue" (which may come in a segment of its own)
            await wait_for(lambda: client.is_closed or bool(statuses_of(bytes(client.received))), timeout=0.3 if pending else 10,
                           what=f"an answer to request {index} of seed {seed}: {sent[:200]!r}")
        except AssertionError:
            if not pending:
                raise
        if not client.is_closed:
            await client.close()  # also ends a stream a valid-looking request opened
        raw = bytes(client.received)
        answers = statuses_of(raw)
        for status in answers or [0]:
            statuses[status] = statuses.get(status, 0) + 1
        assert all(status < 500 for status in answers), f"seed {seed} request {index} got {raw[:300]!r} for {sent[:300]!r}"
        refusals = sum(400 <= status < 500 for status in answers)
        if refusals:
            await wait_for(lambda: counted() - before >= refusals, timeout=2, what=f"seed {seed} request {index}'s refusals to be counted: {sent[:300]!r}")
        # bytes past the declared body are a second request: refused and counted, maybe unanswered (Connection: close)
        extra = 1 if trailing(sent) else 0
        assert refusals <= counted() - before <= refusals + extra, ("every 4xx is counted once, by reason", seed, index, answers, counters, sent[:300])
    assert not errors, f"seed {seed}: something failed: {errors[0]}"
    assert set(statuses) - {0, 200, 204} <= {400, 401, 403, 404, 405, 413, 429}, statuses
    for code in (200, 400, 401, 404, 405):
        assert statuses.get(code, 0) >= 3, (code, statuses)  # the storm reached every layer

    # slow clients: half a request line, then headers a byte at a time, never finished
    slow = [await raw_request(port, b"GET /open HTTP/1.1\r\nHo") for _ in range(20)]
    for client in slow:
        client.transport.write(b"s")
    # the daemon still serves a normal subscriber and a normal ingest meanwhile
    fresh = await subscribe(port, "/open")
    guarded = await subscribe(port, "/guarded", headers=f"Authorization: Bearer {TOKEN}\r\n")
    # from another address: 127.0.0.1 may well be past its budget of failed passwords by now
    password = RawHttpClient()
    await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=("127.0.0.2", 0)), password))
    password.transport.write(f"GET /basic HTTP/1.1\r\nHost: x\r\nAuthorization: {basic('alice', PASSWORD)}\r\n\r\n".encode())
    await password.wait_for(b"stream open\n\n")
    post = await raw_request(port, b'POST /in HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 22\r\n\r\n{"n": 42, "text": "x"}')
    await deadline(post.closed)
    assert post.received.startswith(b"HTTP/1.1 200"), bytes(post.received)
    for client in (watcher, fresh, guarded, password):
        await client.wait_for(b'"n":42')
    health = await raw_request(admin, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await health.wait_for(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    for client in slow + [watcher, fresh, guarded, password, health]:
        await client.close()

    sinks = [service.sinks[name].sink for name in ("Open", "Guarded", "Basic")]
    await wait_for(lambda: not any(sink.subscribers for sink in sinks), what="every stream to be let go")
    for path in ("/guarded", "/basic"):
        guard = next(iter(service.listeners.values())).router.routes[path]
        assert guard.admission.total == 0 and not guard.admission.by_address, "the per-address counts return to zero"
    await wait_for(lambda: open_fds() <= fds - 1, what=f"file descriptors back to {fds - 1} (from {open_fds()})")
