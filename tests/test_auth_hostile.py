"""Issue 12, sections 3 and 5, over sockets: password checks off the reactor, answers that do not tell
which users exist, failure and pool limits, the order of checks, headers that are not UTF-8, cookie
CSRF, and the last-resort net for a bug. docs/reliability-auth.md has the figures these measure.
"""

from __future__ import annotations

from typing import Any

import base64
import json
import re
import statistics
import time
from pathlib import Path

import bcrypt
import pytest_twisted
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web.resource import Resource

from sse_daemon.edge.listener import ListenerService

from .conftest import TwistdProcess, deadline, header, raw_request, sleep, status, subscribe, wait_for, write_config

PASSWORD = "the right password"
TOKEN = "a-static-token-0123456789"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def users_file(tmp_path: Path, bcrypt_rounds: int, argon: PasswordHasher | None = None) -> Path:
    """alice with a bcrypt hash and, given ``argon``, bob with an Argon2 one (alice first: the old decoy)."""
    path = tmp_path / "users"
    lines = [f"alice:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=bcrypt_rounds)).decode()}"]
    if argon is not None:
        lines.append(f"bob:{argon.hash(PASSWORD)}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def exchange(port: int, request: bytes, source: str = "127.0.0.1") -> tuple[bytes, float]:
    """Send one request (Connection: close) from ``source`` and return the whole answer and the seconds it took."""
    client = await connect(port, source)
    started = time.perf_counter()
    client.transport.write(request)
    await deadline(client.closed)
    return bytes(client.received), time.perf_counter() - started


async def connect(port: int, source: str = "127.0.0.1") -> "RawClient":
    client = RawClient()
    await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0)), client))
    return client


class RawClient(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


def get(path: str, headers: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode()


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def reason(raw: bytes) -> str:
    return json.loads(raw.partition(b"\r\n\r\n")[2])["reason"]


# --------------------------------------------------------------------------- 3: the reactor stays free


class EventTimes(protocol.Protocol):
    """A subscriber that notes when each event ``n`` arrives."""

    def __init__(self) -> None:
        self.buffer = b""
        self.opened = False
        self.arrived: dict[int, float] = {}

    def dataReceived(self, data: bytes) -> None:
        now = time.perf_counter()
        self.opened = self.opened or b"stream open" in data
        self.buffer += data
        frames, _, self.buffer = self.buffer.rpartition(b"\n\n")
        for number in re.findall(rb'"n":(\d+)', frames):
            self.arrived.setdefault(int(number), now)


def check_time(hashed: bytes) -> float:
    """Seconds one wrong-password check of ``hashed`` takes here: what it would block a reactor for."""
    started = time.perf_counter()
    assert not bcrypt.checkpw(b"wrong", hashed)
    return time.perf_counter() - started


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_at_20_a_second_leave_streams_and_healthz_on_time(tmp_path: Path) -> None:
    """Seen: bcrypt on the reactor; 4 clients with wrong passwords froze every stream and /healthz.
    Done when: 20 wrong passwords a second for 10 s leave delivery and /healthz on time.

    "On time" is measured against a blocking baseline taken in the same run, not against a fixed
    figure a loaded machine can miss: one check of the same hash, run here and timed. Were checks
    on the daemon's reactor, 20 a second at that cost would keep it busy all the time, and events
    and /healthz would wait a whole check and more; off the reactor they wait a few milliseconds.
    (The 50 ms target itself is measured by docs/reliability-auth.md's run, not by a unit test.)"""
    users = users_file(tmp_path, bcrypt_rounds=12)  # the library's default cost: about 0.25 s a check
    alice_hash = users.read_text().split(":", 1)[1].strip().encode()
    blocked = statistics.median(check_time(alice_hash) for _ in range(3))
    config = write_config(tmp_path, f"""\
        streams:
          S: "n int"
        sources:
          In: {{type: http, stream: S, receiver.url: "http://127.0.0.1:0/in"}}
        sinks:
          Open: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: open, heartbeat.interval: 0}}
          Locked:
            type: sse-server
            stream: S
            server.host: 127.0.0.1
            server.port: 0
            server.path: locked
            auth.type: basic
            auth.users.file: {users}
            auth.failures.per.minute: 0   # no per-address limit: every wrong password is hashed
        admin:
          port: 0
        """)
    process, port = await TwistdProcess.start(config, tmp_path)
    try:
        admin = int((await wait_for(lambda: re.search(rb"listening on 127\.0\.0\.1:(\d+) for the admin listener", process.output),
                                    what="the admin listener")).group(1))
        watcher = EventTimes()
        await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), watcher))
        watcher.transport.write(get("/open", "Accept: text/event-stream\r\n"))
        await wait_for(lambda: watcher.opened, what="the stream to open")

        sent: dict[int, float] = {}
        attacks: list[defer.Deferred] = []
        health: list[float] = []
        answers: list[bytes] = []
        started = time.perf_counter()

        async def attack() -> None:
            for i in range(200):  # 20 a second for 10 s, each on its own connection, not waiting for the last
                request = get("/locked", f"Authorization: {basic('alice', f'wrong {i}')}\r\n")
                attacks.append(defer.ensureDeferred(exchange(port, request)).addCallback(lambda r: answers.append(r[0])))
                await sleep(max(0.0, started + (i + 1) * 0.05 - time.perf_counter()))

        async def publish() -> None:
            for n in range(100):  # 10 a second
                sent[n] = time.perf_counter()
                raw, _ = await exchange(port, post("/in", json.dumps({"n": n}).encode()))
                assert status(raw) == 200, raw
                await sleep(max(0.0, started + (n + 1) * 0.1 - time.perf_counter()))

        async def probe_health() -> None:
            for i in range(40):  # 4 a second
                raw, took = await exchange(admin, get("/healthz"))
                assert status(raw) == 200
                health.append(took)
                await sleep(max(0.0, started + (i + 1) * 0.25 - time.perf_counter()))

        await deadline(defer.gatherResults([defer.ensureDeferred(c()) for c in (attack, publish, probe_health)]), 60)
        await deadline(defer.gatherResults(attacks), 60)
        await wait_for(lambda: len(watcher.arrived) == len(sent), what="every event at the healthy subscriber")
        delays = [watcher.arrived[n] - sent[n] for n in sent]
        codes = sorted({status(a) for a in answers})
        refused = {reason(a) for a in answers}
        print(f"\ndelivery delay p50 {statistics.median(delays) * 1000:.1f} ms, p99 {p99(delays) * 1000:.1f} ms, "
              f"max {max(delays) * 1000:.1f} ms; /healthz p50 {statistics.median(health) * 1000:.1f} ms, "
              f"max {max(health) * 1000:.1f} ms; one check on this machine now {blocked * 1000:.1f} ms; attack answers {codes} {sorted(refused)}: "
              f"{sum(status(a) == 401 for a in answers)} x 401, {sum(status(a) == 503 for a in answers)} x 503")
        assert set(codes) <= {401, 503} and refused <= {"bad-credentials", "auth-busy"}, (codes, refused)
        # the pool did hash wrong passwords meanwhile (how many depends on the CPU left over: a few on a
        # 2-core machine that runs other suites at the same time, about 40 on a quiet one)
        assert sum(status(a) == 401 for a in answers) >= 5, "the pool did hash wrong passwords meanwhile"
        assert p99(delays) < blocked, f"delivery delay p99 {p99(delays) * 1000:.1f} ms, one check {blocked * 1000:.1f} ms"
        assert p99(health) < blocked, f"/healthz p99 {p99(health) * 1000:.1f} ms, one check {blocked * 1000:.1f} ms"
        watcher.transport.loseConnection()
        await process.stop("TERM")
        assert process.reason.value.exitCode == 0, process.output[-2000:]
        assert b"Traceback" not in process.output
    finally:
        await process.kill()


# --------------------------------------------------------------------------- 3: the same time for every user


BASIC_SINK = """\
streams:
  S: "n int"
sinks:
  Locked:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: locked
    heartbeat.interval: 0
    auth.type: basic
    auth.users.file: {users}
    auth.failures.per.minute: {failures}
"""


@pytest_twisted.ensureDeferred
async def test_unknown_and_known_users_take_the_same_time_whatever_their_hash(daemon, tmp_path: Path) -> None:
    """Seen: 236 ms for an unknown user, 121 ms for an Argon2 one: which users exist showed."""
    users = users_file(tmp_path, bcrypt_rounds=10, argon=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    service = await daemon(BASIC_SINK.format(users=users, failures=0))
    port = service.port_of("Locked")
    times: dict[str, list[float]] = {"alice": [], "bob": [], "nobody": []}
    for round_ in range(7):  # interleaved, so a slow moment of the machine hits every user alike
        for user in times:
            raw, took = await exchange(port, get("/locked", f"Authorization: {basic(user, f'wrong {round_}')}\r\n"))
            assert status(raw) == 401 and reason(raw) == "bad-credentials"
            times[user].append(took)
    medians = {user: statistics.median(t) for user, t in times.items()}
    print("\nmedian answer to a wrong password: " + ", ".join(f"{u} {m * 1000:.1f} ms" for u, m in medians.items()))
    assert min(medians.values()) > 0.6 * max(medians.values()), medians


# --------------------------------------------------------------------------- 3: cache, failure limit, full pool


@pytest_twisted.ensureDeferred
async def test_a_reconnect_is_not_hashed_again_and_failures_are_limited_per_address(daemon, tmp_path: Path) -> None:
    service = await daemon(BASIC_SINK.format(users=users_file(tmp_path, bcrypt_rounds=4), failures=3))
    port = service.port_of("Locked")
    pool = service.passwords
    sink = service.sinks["Locked"].sink
    right = f"Authorization: {basic('alice', PASSWORD)}\r\n"
    first = await subscribe(port, "/locked", right)
    hashed = pool.counters["checks"]
    again = await subscribe(port, "/locked", right)
    assert pool.counters["checks"] == hashed, "an EventSource reconnect within auth.cache.ttl costs no hash"
    for client in (first, again):
        await client.close()
    for n in range(3):
        raw, _ = await exchange(port, get("/locked", f"Authorization: {basic('alice', f'guess {n}')}\r\n"))
        assert status(raw) == 401
    raw, took = await exchange(port, get("/locked", right))
    assert status(raw) == 429 and reason(raw) == "auth-failures" and int(header(raw, "Retry-After")) >= 1, raw
    assert pool.counters["checks"] == hashed + 3, "refused without a hash, even with the right password"
    elsewhere, _ = await exchange(port, get("/locked", f"Authorization: {basic('alice', 'x')}\r\n"), source="127.0.0.2")
    assert status(elsewhere) == 401, "another address has its own budget"
    other = await connect(port, source="127.0.0.2")
    other.transport.write(get("/locked", "Accept: text/event-stream\r\n" + right))
    await wait_for(lambda: b"stream open" in other.received, what="a stream for the right password from 127.0.0.2")
    other.transport.loseConnection()
    await deadline(other.closed)
    assert (sink.rejected["auth-failures"], sink.rejected["bad-credentials"]) == (1, 4)


@pytest_twisted.ensureDeferred
async def test_guesses_sent_at_once_are_limited_like_guesses_sent_one_by_one(daemon, tmp_path: Path) -> None:
    """Seen: with auth.failures.per.minute 2, six wrong passwords sent at once were all hashed (six 401s):
    a failure counted only once its hash was done."""
    service = await daemon(BASIC_SINK.format(users=users_file(tmp_path, bcrypt_rounds=10), failures=2))
    port = service.port_of("Locked")
    gate = service.listeners[("127.0.0.1", 0)].router.routes["/locked"].passwords
    await wait_for(lambda: gate.padding is not None, what="the hashes to be timed at load")
    hashed = service.passwords.counters["checks"]
    results = await deadline(defer.gatherResults([
        defer.ensureDeferred(exchange(port, get("/locked", f"Authorization: {basic('alice', f'guess {n}')}\r\n")))
        for n in range(6)
    ]))
    assert sorted(reason(raw) for raw, _ in results) == ["auth-failures"] * 4 + ["bad-credentials"] * 2
    assert service.passwords.counters["checks"] == hashed + 2, "no more hashes than the limit allows"


@pytest_twisted.ensureDeferred
async def test_a_full_pool_refuses_at_once_with_retry_after(daemon, tmp_path: Path) -> None:
    service = await daemon(BASIC_SINK.format(users=users_file(tmp_path, bcrypt_rounds=11), failures=0))
    port = service.port_of("Locked")
    gate = service.listeners[("127.0.0.1", 0)].router.routes["/locked"].passwords
    await wait_for(lambda: gate.padding is not None, what="the hashes to be timed at load")
    capacity = service.passwords.capacity
    results = await deadline(defer.gatherResults([
        defer.ensureDeferred(exchange(port, get("/locked", f"Authorization: {basic('alice', f'wrong {n}')}\r\n")))
        for n in range(capacity + 20)
    ]))
    busy = [(raw, took) for raw, took in results if status(raw) == 503]
    checked = [(raw, took) for raw, took in results if status(raw) == 401]
    assert len(busy) + len(checked) == len(results), {status(raw) for raw, _ in results}
    assert len(busy) >= 10 and all(reason(raw) == "auth-busy" and int(header(raw, "Retry-After")) >= 1 for raw, _ in busy)
    assert max(took for _, took in busy) < min(took for _, took in checked), "refused before any check was answered"
    await wait_for(lambda: service.passwords.pending == 0, what="the pool to drain")


# --------------------------------------------------------------------------- 5: order of checks


@pytest_twisted.ensureDeferred
async def test_bad_credentials_do_not_spend_the_sinks_connection_rate(daemon, monkeypatch) -> None:
    """Seen: unauthenticated requests spent max.connections.per.second; a token holder was refused 7 times in 8."""
    monkeypatch.setenv("HOSTILE_TOKENS", TOKEN)
    service = await daemon("""\
streams:
  S: "n int"
sinks:
  Guarded:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: guarded
    auth.type: bearer
    auth.tokens.env: HOSTILE_TOKENS
    max.connections.per.second: 5
""")
    port = service.port_of("Guarded")
    admitted = 0
    for _ in range(8):
        for n in range(25):  # a flood of bad tokens between each real subscriber
            raw, _ = await exchange(port, get("/guarded", f"Authorization: Bearer not-the-token-{n:04d}-xxxxxxxx\r\n"))
            assert status(raw) == 401
        client = await raw_request(port, get("/guarded", f"Authorization: Bearer {TOKEN}\r\n"))
        await client.wait_for(b"\r\n\r\n")
        admitted += status(bytes(client.received)) == 200
        await client.close()
        await sleep(0.2)  # the token holder's own pace: one new stream per 0.2 s, the rate's budget
    sink = service.sinks["Guarded"].sink
    assert admitted == 8, (admitted, sink.rejected)
    assert sink.rejected["connection-rate"] == 0 and sink.rejected["invalid-token"] == 200


# --------------------------------------------------------------------------- 5: headers that are not UTF-8


HEADERS_CONFIG = """\
streams:
  S: "n int"
sources:
  In: {type: http, stream: S, receiver.url: "http://127.0.0.1:0/in", cors.origins: "https://app.example.com"}
sinks:
  Open: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: open}
  Guarded:
    type: sse-server
    stream: S
    server.host: 127.0.0.1
    server.port: 0
    server.path: guarded
    auth.type: bearer
    auth.tokens.env: HOSTILE_TOKENS
    auth.cookie: tok
admin:
  port: 0
"""


@pytest_twisted.ensureDeferred
async def test_headers_that_are_not_utf8_are_a_400_on_sinks_ingest_and_admin(daemon, monkeypatch, log_events) -> None:
    """Seen: a 0xff byte in Origin, Last-Event-ID or Accept answered 500 with a traceback."""
    monkeypatch.setenv("HOSTILE_TOKENS", TOKEN)
    service = await daemon(HEADERS_CONFIG)
    port, admin = service.port_of("Open"), service.admin.port
    targets = [(port, "GET", "/open"), (port, "HEAD", "/guarded"), (port, "GET", "/guarded"), (port, "POST", "/in"),
               (port, "OPTIONS", "/in"), (admin, "GET", "/metrics"), (admin, "GET", "/healthz"), (admin, "GET", "/events/S"),
               (admin, "GET", "/nowhere")]
    names = [b"Authorization", b"Origin", b"Last-Event-ID", b"Accept", b"Cookie", b"X-Anything"]
    for (to, method, path), name in [(t, n) for t in targets for n in names]:
        for value in (b"\xff\xfe", b"Bearer \xc3\x28", b"tok=" + b"\xe9t\xe9"):
            request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 8\r\n".encode()
                       + name + b": " + value + b"\r\n\r\n" + b'{"n": 1}')
            raw, _ = await exchange(to, request)
            assert status(raw) == 400, (method, path, name, value, raw[:300])
            if method == "HEAD":
                continue
            assert reason(raw) == "invalid-header", raw
            assert f"the {name.decode()} header is not utf-8 text".lower().encode() in raw.lower()
    routers = [service.listeners[("127.0.0.1", 0)].router, service.admin.listener.router]
    assert sum(r.rejected["invalid-header"] for r in routers) == len(targets) * len(names) * 3
    raw, _ = await exchange(admin, get("/metrics"))
    samples = {(s.name, s.labels.get("listener"), s.labels.get("reason")): s.value
               for family in text_string_to_metric_families(raw.partition(b"\r\n\r\n")[2].decode()) for s in family.samples}
    for to, router in zip((port, admin), routers):
        label = f"127.0.0.1:{to}"
        assert samples[("sse_daemon_listener_requests_rejected_total", label, "invalid-header")] == router.rejected["invalid-header"]
    assert not [e for e in log_events if e.get("log_failure") is not None or e.get("isError")], "no traceback"
    fine = await subscribe(port, "/open", "Last-Event-ID: café\r\n")  # UTF-8 is fine
    await fine.close()


# --------------------------------------------------------------------------- 6 (a guard check): cookie CSRF


@pytest_twisted.ensureDeferred
async def test_a_cookie_authenticated_ingest_refuses_a_simple_cross_site_post(daemon, monkeypatch) -> None:
    """Seen: a text/plain POST from any origin, with the cookie, published."""
    monkeypatch.setenv("HOSTILE_TOKENS", TOKEN)
    service = await daemon("""\
streams:
  S: "n int"
sources:
  In: {type: http, stream: S, receiver.url: "http://127.0.0.1:0/in", auth.type: bearer, auth.tokens.env: HOSTILE_TOKENS, auth.cookie: tok}
  App:
    type: http
    stream: S
    receiver.url: "http://127.0.0.1:0/app"
    auth.type: bearer
    auth.tokens.env: HOSTILE_TOKENS
    auth.cookie: tok
    cors.origins: "https://app.example.com"
    cors.credentials: true
sinks:
  Out: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: out, heartbeat.interval: 0}
""")
    port = service.port_of("Out")
    watcher = await subscribe(port, "/out")
    cookie = f"Cookie: tok={TOKEN}\r\n"
    cases = [
        ("/in", cookie + "Origin: https://evil.example\r\nContent-Type: text/plain\r\n", 403, 1),
        ("/in", cookie + "Origin: null\r\nContent-Type: application/x-www-form-urlencoded\r\n", 403, 2),
        ("/in", cookie + "Content-Type: multipart/form-data; boundary=x\r\n", 403, 3),
        ("/in", cookie, 403, 4),  # no Content-Type: a Blob body, still a simple request
        ("/app", cookie + "Origin: https://evil.example\r\nContent-Type: text/plain\r\n", 403, 5),  # unlisted: CORS says no
        ("/in", cookie + "Origin: https://evil.example\r\nContent-Type: application/json\r\n", 200, 6),  # needs a preflight
        ("/in", cookie + "Content-Type: text/plain\r\nX-Requested-With: XMLHttpRequest\r\n", 200, 7),
        ("/app", cookie + "Origin: https://app.example.com\r\nContent-Type: text/plain\r\n", 200, 8),  # a listed origin
        ("/in", f"Authorization: Bearer {TOKEN}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n", 200, 9),
    ]
    for path, headers, expected, n in cases:
        raw, _ = await exchange(port, post(path, json.dumps({"n": n}).encode(), headers))
        assert status(raw) == expected, (path, headers, raw[:300])
        if expected == 403 and path == "/in":
            assert reason(raw) == "cross-site-request"
    await watcher.wait_for(b'"n":9')
    assert re.findall(rb'"n":(\d+)', bytes(watcher.received)) == [b"6", b"7", b"8", b"9"], "nothing refused was published"
    assert service.sources["In"].rejected["cross-site-request"] == 4
    await watcher.close()


# --------------------------------------------------------------------------- 1: the last-resort net


class Broken(Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        raise ZeroDivisionError("a bug")


@pytest_twisted.ensureDeferred
async def test_a_bug_is_a_counted_500_and_cannot_flood_the_log(log_events) -> None:
    listener = ListenerService(reactor, "127.0.0.1", 0)
    listener.add("/broken", Broken(), "a broken resource")
    listener.startService()
    try:
        for _ in range(60):
            raw, _ = await exchange(listener.bound_port, get("/broken"))
            assert status(raw) == 500 and reason(raw) == "internal-error" and b"ZeroDivisionError" not in raw
        assert listener.router.rejected["internal-error"] == 60
        failures = [e for e in log_events if e.get("log_failure") is not None]
        assert len(failures) == 10 and all(e["log_failure"].check(ZeroDivisionError) for e in failures), len(failures)
        assert failures[-1]["count"] == 10
    finally:
        await deadline(defer.maybeDeferred(listener.stopService))


class BrokenMidway(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.write(b"the first half")
        raise ZeroDivisionError("a bug")


@pytest_twisted.ensureDeferred
async def test_a_bug_after_the_answer_started_cuts_it_rather_than_ending_it() -> None:
    """A chunked answer closed cleanly after its first chunk would look whole to a client that does not
    check for the last chunk; cut, it cannot (HTTP/2: the stream is reset, tests/test_http2_channel.py)."""
    listener = ListenerService(reactor, "127.0.0.1", 0)
    listener.add("/half", BrokenMidway(), "a resource that fails midway")
    listener.startService()
    try:
        raw, _ = await exchange(listener.bound_port, get("/half"))
        assert raw.startswith(b"HTTP/1.1 200 OK") and b"the first half" in raw
        assert not raw.endswith(b"0\r\n\r\n"), "no last chunk: the answer is visibly cut"
        assert listener.router.rejected["internal-error"] == 1
    finally:
        await deadline(defer.maybeDeferred(listener.stopService))


@pytest_twisted.ensureDeferred
async def test_what_twisted_web_did_quietly_is_counted_and_sampled(daemon, tmp_path: Path, log_events) -> None:
    """Found by the audit: a header line past 16 KiB was closed without an answer or a count, and
    every HEAD refusal (404, 405, 401) wrote twisted.web's "I think I'll eat it" warning: one
    log line per request, unsampled."""
    service = await daemon(BASIC_SINK.format(users=users_file(tmp_path, bcrypt_rounds=4), failures=10) + "admin:\n  port: 0\n")
    port = service.port_of("Locked")
    router = service.listeners[("127.0.0.1", 0)].router
    for to in (port, service.admin.port):
        raw, _ = await exchange(to, get("/healthz", "Cookie: x=" + "a" * 20_000 + "\r\n"))
        assert status(raw) == 400, raw
    assert router.rejected["malformed-request"] == 1 and service.admin.listener.router.rejected["malformed-request"] == 1
    for path in ["/nope", "/locked"] * 30:
        raw, _ = await exchange(port, get(path, method="HEAD"))
        assert status(raw) in (401, 404) and raw.endswith(b"\r\n\r\n") and int(header(raw, "Content-Length")) > 0
    raw, _ = await exchange(service.admin.port, get("/nope", method="HEAD"))
    assert status(raw) == 404
    assert not [e for e in log_events if "eat it" in (e.get("log_format") or "")], "no line per HEAD"
    assert len([e for e in log_events if e.get("reason") in ("not-found", "missing-credentials")]) == 21, "sampled: ten of each, then none"
