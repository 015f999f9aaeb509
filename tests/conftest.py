"""Shared test helpers: deadlines instead of sleeps, a daemon on port 0, raw HTTP clients.

pytest-twisted runs the real reactor but has no per-test timeout and no
dirty-reactor check, so every awaited Deferred goes through ``deadline`` and
an autouse fixture fails a test that leaves delayed calls behind.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import globalLogPublisher

from sse_daemon.config.load import load_files
from sse_daemon.daemon.service import DaemonService, build_service

DEADLINE = 30.0


def deadline(d: Any, seconds: float = DEADLINE) -> defer.Deferred:
    """Wrap a Deferred or coroutine so a hang fails the test instead of CI."""
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d)
    return d.addTimeout(seconds, reactor)


def sleep(seconds: float) -> defer.Deferred:
    """Only for pacing poll loops; never to wait for a result."""
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    end = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(0.005)


class ReactorStops:
    """Notes a stop of the shared reactor, which no test may cause.

    pytest-twisted runs the reactor in a greenlet; once it stops, the test's
    ``blockon`` is switched back to with the reactor's return value and fails
    with "illegal switch in blockon", and every later test fails the same way or
    with "twisted reactor has stopped". The usual cause is a SIGTERM or SIGINT to
    the pytest process (Twisted's handlers call ``reactor.stop``): a timeout
    wrapper or a cancelled job signals the whole process group, and the twistd
    children of the real-process tests share it. This turns that into one clear
    message and ends the run instead of a cascade of misleading failures.
    """

    def __init__(self) -> None:
        self.test = "(between tests)"
        self.seen: str | None = None

    def before_shutdown(self) -> None:
        self.seen = f"the reactor was stopped during {self.test}"

    def check(self) -> None:
        if self.seen is not None:
            pytest.exit(f"{self.seen}: a SIGTERM or SIGINT to the test process (or a reactor.stop() call) ends the run here", returncode=3)


reactor_stops = ReactorStops()
reactor.addSystemEventTrigger("before", "shutdown", reactor_stops.before_shutdown)


@pytest.fixture(autouse=True)
def no_leftover_delayed_calls(request: pytest.FixtureRequest):
    reactor_stops.check()
    reactor_stops.test = request.node.nodeid
    before = set(reactor.getDelayedCalls())
    yield
    reactor_stops.check()
    reactor_stops.test = "(between tests)"
    if "reactor_free" in request.keywords:
        return

    def leftovers() -> list:
        return [c for c in reactor.getDelayedCalls() if c not in before and c.active()]

    if not leftovers():
        return
    # A client-side close reaches the server a reactor turn later: give it time.
    # (no deadline() here: its own timer would count as a leftover; wait_for has a timeout)
    pytest_twisted.blockon(defer.ensureDeferred(wait_for(lambda: not leftovers(), timeout=10, what="delayed calls to end")).addErrback(lambda _: None))
    left = [(c, c.func, c.getTime() - reactor.seconds()) for c in leftovers()]
    for call, _, _ in left:
        call.cancel()
    assert not left, f"test left delayed calls behind: {left}"


@pytest.fixture
def log_events():
    """Every log event emitted during the test, as dicts (assert on keys, not text)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def write_config(tmp_path: Path, text: str, name: str = "sse.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def daemon(tmp_path: Path):
    """``await daemon(yaml_text)`` starts a DaemonService on the real reactor; stopped after the test.
    ``name`` chooses the file, so its front end (``app.siddhi``, ``conf.sql``)."""
    started: list[DaemonService] = []

    async def start(text: str, clock: Any = None, name: str = "sse.yaml") -> DaemonService:
        config = load_files([str(write_config(tmp_path, text, name))])
        service = build_service(config, reactor, clock=clock)
        service.privilegedStartService()
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(deadline(defer.maybeDeferred(service.stopService)))


class RawHttpClient(protocol.Protocol):
    """Sends bytes, records every byte received; for exact-bytes assertions."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = defer.Deferred()
        self.is_closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.is_closed = True
        self.closed.callback(None)

    async def wait_for(self, needle: bytes, timeout: float = DEADLINE) -> bytes:
        await wait_for(lambda: needle in self.received or self.is_closed, timeout, what=f"{needle!r} from the server")
        assert needle in self.received, f"connection closed before {needle!r}; got {bytes(self.received)!r}"
        return bytes(self.received)

    def close(self) -> Awaitable:
        if not self.is_closed:
            self.transport.loseConnection()
        return deadline(self.closed)


async def raw_request(port: int, request: bytes) -> RawHttpClient:
    client = RawHttpClient()
    await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client))
    client.transport.write(request)
    return client


def status(raw: bytes) -> int:
    """The status code of a raw HTTP response."""
    return int(raw.split(b" ", 2)[1])


def header(raw: bytes, name: str) -> str | None:
    """A header of a raw HTTP response's head, by case-insensitive name."""
    for line in raw.partition(b"\r\n\r\n")[0].decode().split("\r\n")[1:]:
        key, _, value = line.partition(": ")
        if key.lower() == name.lower():
            return value
    return None


def next_response(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The first whole response (with a Content-Length) of kept-alive answers read so far:
    (head, body, what follows), or None while it is incomplete."""
    if b"\r\n\r\n" not in buffer:
        return None
    head, _, rest = buffer.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    length = int(header(head, "Content-Length") or 0)
    if len(rest) < length:
        return None
    return head, rest[:length], rest[length:]


async def subscribe(port: int, path: str = "/events", headers: str = "") -> RawHttpClient:
    """Open an SSE stream and wait for the head and opening comment."""
    client = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{headers}\r\n".encode())
    await client.wait_for(b"stream open\n\n")
    return client


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reactor_free: the test does not need the leftover-delayed-call check")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Run hypothesis tests directly, outside pytest-twisted.

    pytest-twisted 1.14 wraps ``hypothesis.inner_test`` on the shared function
    object once per parametrized item, so the second item nests a blockon
    inside the reactor greenlet and fails. Our property tests are pure and need
    no reactor.
    """
    if getattr(pyfuncitem.obj, "hypothesis", None) is None:
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    pyfuncitem.obj(**args)
    return True


def twistd_command(*args: str) -> list[str]:
    """``twistd ARGS`` with this interpreter (the venv's twistd, without relying on PATH)."""
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()", *args]


class TwistdProcess(protocol.ProcessProtocol):
    """A real ``twistd -n sse-daemon`` child: its output, its port, its end."""

    def __init__(self) -> None:
        self.output = b""
        self.ended = False
        self.reason: Any = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended = True
        self.reason = reason

    @classmethod
    async def start(cls, config: Path, cwd: Path) -> tuple["TwistdProcess", int]:
        """Spawn one and wait for its first listener; returns the process and that port."""
        process = cls()
        return process, await process.launch(config, cwd)

    async def launch(self, config: Path, cwd: Path) -> int:
        reactor.spawnProcess(self, sys.executable, twistd_command("-n", "--pidfile=", "sse-daemon", "--config", str(config)),
                             env=os.environ.copy(), path=str(cwd))
        line = await wait_for(lambda: re.search(rb"listening on 127\.0\.0\.1:(\d+) for", self.output) or self.ended,
                              what="twistd to listen")
        assert not self.ended, self.output.decode(errors="replace")
        return int(line.group(1))

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)

    async def stop(self, name: str = "TERM", timeout: float = DEADLINE) -> None:
        if not self.ended:
            self.signal(name)
        await wait_for(lambda: self.ended, timeout=timeout, what=f"twistd to end after SIG{name}")

    async def kill(self) -> None:
        """For ``finally:``: make sure nothing outlives the test."""
        if not self.ended:
            await self.stop("KILL")


def port_channel(resource: Any, *, takes_posts: bool = True, transport_class: Any = None) -> tuple[Any, Any, Any, Any]:
    """A port's channel serving ``resource`` at /in (head and body deadlines of 10 s), on a StringTransport
    (or ``transport_class``) and a Clock: the listener's own code without a socket. (channel, transport,
    router, clock)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from sse_daemon.edge.listener import PathRouter, QuietSite
    from sse_daemon.policy.connections import PortPolicy

    clock = Clock()
    router = PathRouter()
    router.add("/in", resource, takes_posts=takes_posts)
    site = QuietSite(router, clock, 1000, PortPolicy(head_timeout=10, body_timeout=10))
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(address)
    transport = (transport_class or StringTransport)(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport, router, clock
