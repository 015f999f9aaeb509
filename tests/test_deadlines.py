"""Deadlines and connection budgets (issue 12, §4) and shutdown edges (§7).

Pure bookkeeping first (connections.py), then the port's mechanism over real
sockets on the in-process daemon with short deadlines, then real ``twistd``
children: a low ``ulimit -n``, slow connections from 127.0.0.2, SIGTERM and
SIGHUP.
"""

from __future__ import annotations

import json
import os
import re
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.load import load_files
from sse_daemon.edge.listener import CLOSE_GRACE
from sse_daemon.policy.connections import AddressCounts, DescriptorBudget, Stopping, headroom_for
from sse_daemon.daemon.reload import Reloader
from sse_daemon.events.schema import Event
from sse_daemon.daemon.service import DaemonService

from .test_tls import pki, tls_subscribe  # noqa: F401 (pki is a fixture)
from .conftest import RawHttpClient, TwistdProcess, deadline, header, next_response, sleep, status, subscribe, twistd_command, wait_for, write_config

# --------------------------------------------------------------------------- pure bookkeeping


@pytest.mark.reactor_free
def test_address_counts_cap_each_address_and_forget_closed_ones() -> None:
    counts = AddressCounts()
    assert [counts.admit("10.0.0.2", 2) for _ in range(3)] == [True, True, False]
    assert counts.admit("10.0.0.1", 2), "another address has its own share"
    assert counts.total == 3
    counts.release("10.0.0.2")
    assert counts.admit("10.0.0.2", 2), "a closed connection frees its slot"
    for _ in range(2):
        counts.release("10.0.0.2")
    counts.release("10.0.0.1")
    assert counts.by_address == {} and counts.total == 0, "nothing is kept for addresses with no connection"
    assert all(counts.admit("10.0.0.3", 0) for _ in range(100)), "0 is no cap"


@pytest.mark.reactor_free
@pytest.mark.parametrize(("limit", "headroom"), [(64, 32), (256, 32), (1024, 64), (65536, 1024), (1 << 20, 1024)])
def test_headroom_is_a_sixteenth_of_the_limit_within_bounds(limit: int, headroom: int) -> None:
    assert headroom_for(limit) == headroom


class FakeProcess:
    """A process's descriptor table for DescriptorBudget: a limit, a count, a clock, and how often it was listed."""

    def __init__(self, limit: int, others: int) -> None:
        self.limit = limit
        self.others = others  # descriptors that are not connections
        self.connections = 0
        self.listed = 0
        self.clock = Clock()

    def count(self) -> int:
        self.listed += 1
        return self.others + self.connections + 1  # + the one being admitted

    def budget(self, headroom: int | None = None) -> DescriptorBudget:
        return DescriptorBudget(lambda: self.limit, self.count, self.clock.seconds, headroom)

    def accept(self, budget: DescriptorBudget) -> bool:
        if budget.admit():
            budget.opened()
            self.connections += 1
            return True
        return False


@pytest.mark.reactor_free
def test_descriptor_budget_keeps_the_headroom_free() -> None:
    process = FakeProcess(limit=256, others=20)
    budget = process.budget()
    assert budget.headroom == 32
    admitted = sum(process.accept(budget) for _ in range(300))
    assert admitted == 256 - 32 - 20, "connections stop where the headroom begins"
    assert budget.in_use == 224
    budget.closed()
    process.connections -= 1
    assert process.accept(budget), "a closed connection frees room for one more"
    assert not process.accept(budget)


@pytest.mark.reactor_free
def test_descriptor_budget_lists_descriptors_rarely_and_sees_its_own_work_grow() -> None:
    process = FakeProcess(limit=1024, others=10)
    budget = process.budget()  # headroom 64: 960 usable
    for _ in range(100):
        process.accept(budget)
    assert process.listed == 1, "below half the budget: one listing in 10 s"
    process.others = 900  # the daemon's own work grew (sources, workers, files)
    process.clock.advance(9)
    assert process.accept(budget), "not seen until the next count"
    process.clock.advance(1)
    assert not process.accept(budget), "the daemon's own descriptors come first"
    assert process.listed == 2
    process.others = 10
    process.clock.advance(10)
    for _ in range(400):  # past half the budget: counted every second
        process.accept(budget)
    listed = process.listed
    process.clock.advance(1)
    process.accept(budget)
    assert process.listed == listed + 1


@pytest.mark.reactor_free
def test_descriptor_budget_follows_a_changed_limit_and_copes_without_a_count() -> None:
    process = FakeProcess(limit=1024, others=10)
    budget = process.budget()
    assert process.accept(budget)
    process.limit = 64  # prlimit on the running process
    process.clock.advance(10)
    admitted = sum(process.accept(budget) for _ in range(100))
    assert budget.limit == 64 and budget.headroom == 32 and admitted == 64 - 32 - 10 - 1
    blind = DescriptorBudget(lambda: 100, lambda: None, process.clock.seconds, headroom=40)
    opened = 0
    while blind.admit() and opened < 1000:  # bounded
        blind.opened()
        opened += 1
    assert opened == 60, "without a count (no /proc, no /dev/fd) connections alone are counted"


@pytest.mark.reactor_free
def test_stopping_is_shared_and_set_once() -> None:
    stopping = Stopping()
    assert not stopping
    stopping.begin()
    assert stopping and stopping.started


@pytest.mark.reactor_free
def test_connectors_sharing_a_port_must_agree_on_its_limits(tmp_path: Path) -> None:
    path = write_config(tmp_path, """\
        sources:
          In: {type: http, stream: S, schema: "n int", receiver.url: "http://127.0.0.1:8123/in", server.head.timeout: 5}
        sinks:
          Out: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 8123, server.head.timeout: 5,
                server.max.connections.per.address: 10}
          Other: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 8124, server.body.timeout: 1}
        """)
    with pytest.raises(ConfigError) as caught:
        load_files([str(path)])
    assert [str(issue).split(": ", 1)[1] for issue in caught.value.issues] == [
        "sink 'Out': option 'server.max.connections.per.address': port 8123 has server.max.connections.per.address 0 "
        f"from source 'In' (at {path}:2), found 10: connectors sharing a port must give the same",
    ]


# --------------------------------------------------------------------------- over sockets, in process

HEAD, BODY = 0.5, 0.5


def config(head: float | None = HEAD, body: float = BODY, per_address: int = 0, **sink: Any) -> str:
    """An ingest and a sink on one port; ``head=None`` leaves the port's options at their defaults."""
    port_options = ("" if head is None else
                    f", server.head.timeout: {head}, server.body.timeout: {body}, server.max.connections.per.address: {per_address}")
    extra = "".join(f", {k}: {v}" for k, v in sink.items())
    return f"""\
sources:
  In: {{type: http, stream: S, schema: "n int", receiver.url: "http://127.0.0.1:0/in"{port_options}}}
sinks:
  Events: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events{port_options}{extra}}}
"""


async def connect(port: int, source: str = "127.0.0.1") -> RawHttpClient:
    """A raw connection to ``port`` on 127.0.0.1 from the loopback address ``source``."""
    client = RawHttpClient()
    await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0)), client))
    return client


def post_bytes(n: int, close: bool = False) -> bytes:
    body = json.dumps({"n": n}).encode()
    return (b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
            % (b"Connection: close\r\n" if close else b"", len(body), body))


async def closed_after(client: RawHttpClient, since: float) -> float:
    await deadline(client.closed)
    return reactor.seconds() - since


def router_of(service: DaemonService) -> Any:
    (listener,) = service.listeners.values()
    return listener.router


@pytest_twisted.ensureDeferred
async def test_head_deadline_is_not_extended_by_trickling(daemon, log_events) -> None:
    """Seen: a byte every 20 s held a connection for good. Now a byte every fifth of the deadline still ends at the deadline."""
    service = await daemon(config())
    port = service.port_of("Events")
    started = reactor.seconds()
    client = await connect(port, "127.0.0.2")
    head = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    for byte in head:  # bounded: 70 bytes, stops at the close
        if client.is_closed:
            break
        client.transport.write(bytes([byte]))
        await sleep(HEAD / 5)
    took = await closed_after(client, started)
    raw = bytes(client.received)
    assert status(raw) == 408 and header(raw, "Connection") == "close", raw
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["reason"] == "head-timeout"
    assert HEAD * 0.9 <= took < HEAD + 1.5, f"closed {took:.2f}s after the accept"
    assert router_of(service).rejected["head-timeout"] == 1
    assert any(e.get("reason") == "head-timeout" and e.get("peer") == "127.0.0.2" for e in log_events)
    assert not service.sinks["Events"].sink.subscribers


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_gets_408_at_the_head_deadline(daemon) -> None:
    service = await daemon(config())
    started = reactor.seconds()
    client = await connect(service.port_of("Events"))
    took = await closed_after(client, started)
    assert status(bytes(client.received)) == 408
    assert HEAD * 0.9 <= took < HEAD + 1.5


@pytest_twisted.ensureDeferred
async def test_body_deadline_is_not_extended_by_trickling(daemon) -> None:
    service = await daemon(config(head=5))
    client = await connect(service.port_of("In"))
    client.transport.write(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n")
    head_sent = reactor.seconds()
    for byte in b'{"n": 1}' + b" " * 32:  # bounded: 40 bytes, stops at the close
        if client.is_closed:
            break
        client.transport.write(bytes([byte]))
        await sleep(BODY / 5)
    took = await closed_after(client, head_sent)
    raw = bytes(client.received)
    assert status(raw) == 408 and json.loads(raw.partition(b"\r\n\r\n")[2])["reason"] == "body-timeout", raw
    assert BODY * 0.9 <= took < BODY + 1.5
    assert router_of(service).rejected["body-timeout"] == 1
    assert service.sources["In"].counters["events_in"] == 0, "nothing of a late body is published"


@pytest_twisted.ensureDeferred
async def test_an_sse_stream_has_no_deadline_once_its_head_is_in(daemon) -> None:
    service = await daemon(config(head=0.2, body=0.2, **{"heartbeat.interval": 0.1}))
    client = await subscribe(service.port_of("Events"))
    await wait_for(lambda: client.received.count(b": heartbeat") >= 10 or client.is_closed, what="ten heartbeats (5x the deadlines)")
    assert not client.is_closed and client.received.count(b": heartbeat") >= 10
    service.bus.publish("S", [Event({"n": 7})])
    await client.wait_for(b'"n":7')
    assert not router_of(service).rejected
    await client.close()


@pytest_twisted.ensureDeferred
async def test_on_a_kept_alive_connection_the_head_deadline_counts_from_the_last_response(daemon) -> None:
    service = await daemon(config())
    port = service.port_of("In")
    client = await connect(port)
    for n in range(3):  # each request comes 0.6 deadlines after the last answer: 1.8 deadlines in all
        client.transport.write(post_bytes(n))
        await wait_for(lambda: client.received.count(b'{"accepted": 1}') == n + 1 or client.is_closed, what=f"answer {n}")
        await sleep(HEAD * 0.6)
    answered = reactor.seconds() - HEAD * 0.6
    took = await closed_after(client, answered)
    raw = bytes(client.received)
    assert raw.count(b"HTTP/1.1 200 OK") == 3 and b"408" not in raw, "an idle kept-alive connection just closes"
    assert HEAD * 0.9 <= took < HEAD + 1.5
    assert not router_of(service).rejected, "a normal keep-alive close is no refusal"
    # a next request begun and not finished is answered 408
    client = await connect(port)
    client.transport.write(post_bytes(9))
    await client.wait_for(b'{"accepted": 1}\n')
    client.transport.write(b"POST /in HTTP/1.1\r\nHost: x\r\n")
    await deadline(client.closed)
    assert bytes(client.received).count(b"HTTP/1.1 408 Request Timeout") == 1
    assert router_of(service).rejected["head-timeout"] == 1


@pytest_twisted.ensureDeferred
async def test_per_address_cap_counts_connections_from_accept(daemon) -> None:
    """Seen: half-open requests never reached max.subscribers.per.address. The port's cap counts them."""
    service = await daemon(config(head=30, body=30, per_address=3, **{"max.subscribers.per.address": 3}))
    port = service.port_of("Events")
    router = router_of(service)
    held = []
    for _ in range(3):
        client = await connect(port, "127.0.0.2")
        client.transport.write(b"GET /events HTTP/1.1\r\nHo")  # half a head, and then nothing
        held.append(client)
    await wait_for(lambda: service.listeners[("127.0.0.1", 0)].site.connections.by_address["127.0.0.2"] == 3,
                   what="three connections counted")
    refused = await connect(port, "127.0.0.2")
    await deadline(refused.closed, 5)
    assert refused.received == b"", "closed at accept, before anything is read"
    assert router.rejected["too-many-connections-from-address"] == 1
    # another address is not held back
    subscriber = await subscribe(port)
    publisher = await connect(port)
    publisher.transport.write(post_bytes(1, close=True))
    await publisher.wait_for(b'{"accepted": 1}')
    await subscriber.wait_for(b'"n":1')
    # a slot freed is a slot for the same address again
    await held.pop().close()
    await wait_for(lambda: service.listeners[("127.0.0.1", 0)].site.connections.by_address["127.0.0.2"] == 2, what="a slot freed")
    again = await subscribe(port, headers="")
    assert not again.is_closed
    for client in (*held, subscriber, again):
        await client.close()
    await wait_for(lambda: not service.listeners[("127.0.0.1", 0)].site.connections.by_address, what="every connection released")


@pytest_twisted.ensureDeferred
async def test_near_the_descriptor_limit_connections_are_closed_at_accept_and_counted(tmp_path: Path) -> None:
    text = config(head=30, body=30) + "admin: {port: 0, host: 127.0.0.1}\n"
    budget = DescriptorBudget(lambda: 40, lambda: None, reactor.seconds, headroom=32)  # room for 8 connections
    service = DaemonService(load_files([str(write_config(tmp_path, text))]), reactor, descriptors=budget)
    service.privilegedStartService()
    service.startService()
    try:
        port = service.port_of("Events")
        held = [await connect(port, "127.0.0.2") for _ in range(8)]
        await wait_for(lambda: budget.connections == 8, what="eight connections counted")
        refused = await connect(port)
        await deadline(refused.closed, 5)
        assert refused.received == b"", "closed at accept: no answer (an EventSource retries, a 503 would stop it)"
        assert service.listeners[("127.0.0.1", 0)].router.rejected["descriptors-low"] == 1
        for client in held[:2]:
            await client.close()
        await wait_for(lambda: budget.connections == 6, what="two released")
        subscriber = await subscribe(port)  # the headroom is back: served again
        metrics = await connect(service.admin.port)
        metrics.transport.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        await deadline(metrics.closed)
        text = bytes(metrics.received).decode()
        assert f'sse_daemon_listener_requests_rejected_total{{listener="127.0.0.1:{port}",reason="descriptors-low"}} 1.0' in text
        assert f'sse_daemon_listener_connections{{listener="127.0.0.1:{port}"}} 7.0' in text
        for client in (*held[2:], subscriber):
            await client.close()
    finally:
        await deadline(service.stopService())


async def second_answer(client: RawHttpClient) -> bytes:
    """The second response on a kept-alive connection (its head, and its body if it has one)."""
    def done() -> bool:
        if client.received.count(b"HTTP/1.1 ") < 2:
            return client.is_closed
        second = bytes(client.received)[bytes(client.received).index(b"HTTP/1.1 ", 1):]
        return client.is_closed or second.endswith(b"}\n") or b"text/event-stream" in second
    await wait_for(done, timeout=10, what="a second answer")
    raw = bytes(client.received)
    assert raw.count(b"HTTP/1.1 ") >= 2, raw
    return raw[raw.index(b"HTTP/1.1 ", 1):]


@pytest_twisted.ensureDeferred
async def test_once_shutdown_begins_kept_alive_clients_get_503_and_nothing_accepted_is_lost(daemon) -> None:
    """Seen: during the drain keep-alive publishers got 200s for events that reached nobody."""
    service = await daemon(config(head=None, **{"drain.window": 1.0, "drain.batch.min": 1}))
    port = service.port_of("In")
    subscribers = [await subscribe(port) for _ in range(2)]
    publisher = await connect(port)
    publisher.transport.write(post_bytes(1))
    await publisher.wait_for(b'{"accepted": 1}\n')
    reader = await connect(port)  # a kept-alive client that will ask for a stream during the drain
    reader.transport.write(post_bytes(2))
    await reader.wait_for(b'{"accepted": 1}\n')
    stopping = service.stopService()
    publisher.transport.write(post_bytes(3))
    answer = await second_answer(publisher)
    assert status(answer) == 503, answer
    assert header(answer, "Retry-After") == "5" and header(answer, "Connection") == "close"
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["reason"] == "shutting-down"
    await deadline(publisher.closed)
    reader.transport.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(await second_answer(reader)) == 503
    await deadline(reader.closed)
    await deadline(stopping)
    for subscriber in subscribers:
        await deadline(subscriber.closed)
        assert b'"n":1' in subscriber.received and b'"n":2' in subscriber.received, "every event answered 200 was delivered"
        assert b'"n":3' not in subscriber.received
    assert service.sources["In"].counters["events_in"] == 2
    assert router_of(service).rejected["shutting-down"] == 2


@pytest_twisted.ensureDeferred
async def test_a_reload_during_shutdown_is_ignored_and_logged(daemon, tmp_path: Path, log_events) -> None:
    service = await daemon(config(head=None, **{"drain.window": 1.0, "drain.batch.min": 1}))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    clients = [await subscribe(service.port_of("Events")) for _ in range(2)]
    write_config(tmp_path, config(head=None) + "  Added: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: added}\n")
    stopping = service.stopService()
    assert await deadline(reloader.reload()) is False
    assert reloader.ignored == 1 and reloader.counters == {"reloads": 0, "rejected": 0}
    assert "Added" not in service.sinks and len(service.listeners) == 1
    assert any(e.get("log_format", "").startswith("reload ignored: the daemon is shutting down") for e in log_events)
    await deadline(stopping)
    for client in clients:
        await deadline(client.closed)


# --------------------------------------------------------------------------- real twistd: a low ulimit, slow clients, signals


class LimitedTwistd(TwistdProcess):
    """``twistd -n sse-daemon`` under ``ulimit -n`` (a low descriptor limit, set by the shell that execs it)."""

    def __init__(self, nofile: int) -> None:
        super().__init__()
        self.nofile = nofile

    async def launch(self, config: Path, cwd: Path) -> int:
        args = twistd_command("-n", "--pidfile=", "sse-daemon", "--config", str(config))
        reactor.spawnProcess(self, "/bin/sh", ["sh", "-c", f'ulimit -n {self.nofile} && exec "$0" "$@"', *args],
                             env=os.environ.copy(), path=str(cwd))
        line = await wait_for(lambda: re.search(rb"listening on 127\.0\.0\.1:(\d+) for", self.output) or self.ended,
                              what="twistd to listen")
        assert not self.ended, self.output.decode(errors="replace")
        return int(line.group(1))

    def cpu_seconds(self) -> float:
        """User and system CPU time of the child so far (it is twistd itself: the shell exec'd it)."""
        fields = Path(f"/proc/{self.transport.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SlowClient(RawHttpClient):
    """An attacker's connection: it sends a request head one byte at a time, never finishing soon."""

    HEAD = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def trickle(self) -> None:
        if not self.is_closed and self.sent < len(self.HEAD):
            self.transport.write(self.HEAD[self.sent:self.sent + 1])
            self.sent += 1


class SlowAttack:
    """``count`` slow connections from 127.0.0.2, each sending a byte every ``every`` seconds; with
    ``reopen`` every connection the daemon closes is opened again (bounded: ``max_opens``)."""

    def __init__(self, port: int, count: int, every: float, reopen: bool, max_opens: int = 5000) -> None:
        self.port, self.count, self.every, self.reopen, self.max_opens = port, count, every, reopen, max_opens
        self.clients: list[SlowClient] = []
        self.opens = 0
        self.running = True

    def open_now(self) -> int:
        return sum(not c.is_closed for c in self.clients)

    def answers(self) -> dict[str, int]:
        """What the daemon answered the attacker's connections, by status line (or nothing)."""
        seen: dict[str, int] = {}
        for client in self.clients:
            key = bytes(client.received).split(b"\r\n")[0].decode() or "(closed, nothing)" if client.is_closed else "(open)"
            seen[key] = seen.get(key, 0) + 1
        return seen

    async def _open_one(self) -> None:
        client = SlowClient()
        self.opens += 1
        try:
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5, bindAddress=("127.0.0.2", 0)), client)
        except Exception:  # refused or timed out in the backlog: counted as a failed open
            client.is_closed = True
        self.clients.append(client)

    async def run(self, seconds: float) -> None:
        end = reactor.seconds() + seconds
        await defer.gatherResults([defer.ensureDeferred(self._open_one()) for _ in range(self.count)])
        while self.running and reactor.seconds() < end:
            for client in self.clients:
                client.trickle()
            if self.reopen:
                missing = min(self.count - self.open_now(), self.max_opens - self.opens)
                await defer.gatherResults([defer.ensureDeferred(self._open_one()) for _ in range(max(0, missing))])
            await sleep(self.every)

    async def stop(self) -> None:
        self.running = False
        for client in self.clients:
            if not client.is_closed:
                client.transport.abortConnection()


async def post_once(port: int, n: int, timeout: float = 3) -> int | None:
    """One POST from 127.0.0.1 with Connection: close; the status, or None if the connection failed or closed without one."""
    client = RawHttpClient()
    try:
        await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout), client), timeout)
    except Exception:
        return None
    client.transport.write(post_bytes(n, close=True))
    try:
        await deadline(client.closed, timeout)
    except defer.TimeoutError:
        client.transport.abortConnection()
        return None
    raw = bytes(client.received)
    return status(raw) if raw.startswith(b"HTTP/1.1 ") else None


def twistd_config(tmp_path: Path, port_options: str = "", **sink: Any) -> Path:
    extra = "".join(f", {k}: {v}" for k, v in sink.items())
    return write_config(tmp_path, f"""\
        sources:
          In: {{type: http, stream: S, schema: "n int", receiver.url: "http://127.0.0.1:0/in"{port_options}}}
        sinks:
          Events: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events{port_options}{extra}}}
        """)


@pytest_twisted.ensureDeferred
async def test_real_twistd_a_trickling_flood_holds_descriptors_only_until_the_head_deadline(tmp_path: Path) -> None:
    """Seen: 300 connections sending a byte every 20 s held every descriptor of a daemon under
    ``ulimit -n 256`` (and legitimate clients got resets) for as long as they trickled. With the
    defaults (no option set), each is cut at the 10 s head deadline; the daemon keeps its
    headroom (no EMFILE) and does not spin; a publisher from 127.0.0.1 gets 200 soon after."""
    process = LimitedTwistd(nofile=256)
    port = await process.launch(twistd_config(tmp_path, **{"heartbeat.interval": 1}), tmp_path)
    try:
        subscriber = await subscribe(port)  # connected before the flood: it keeps its stream
        attack = SlowAttack(port, count=300, every=1.0, reopen=False)
        started, cpu = reactor.seconds(), process.cpu_seconds()
        flood = defer.ensureDeferred(attack.run(seconds=20))
        accepted_at = None
        for n in range(60):  # bounded: one POST every 0.25 s for at most ~20 s
            if await post_once(port, n) == 200:
                accepted_at = reactor.seconds() - started
                break
            await sleep(0.25)
        assert accepted_at is not None, f"no 200 within the flood; attacker saw {attack.answers()}"
        assert accepted_at < 10 + 5, f"a publisher waited {accepted_at:.1f}s (head deadline 10 s)"
        await wait_for(lambda: attack.open_now() == 0, timeout=10, what="every slow connection to be closed")
        held_for = reactor.seconds() - started
        await subscriber.wait_for(b'"n":')
        assert not subscriber.is_closed
        used = process.cpu_seconds() - cpu
        assert used < 0.5 * held_for, f"{used:.1f}s of CPU in {held_for:.1f}s: the listener must not spin"
        answers = attack.answers()
        assert answers.get("HTTP/1.1 408 Request Timeout", 0) >= 150, answers
        output = process.output.decode(errors="replace")
        assert "EMFILE" not in output and "Too many open files" not in output
        assert "(descriptors-low, 1 so far)" in output and "(head-timeout, 1 so far)" in output
        await attack.stop()
        await deadline(flood)
        await subscriber.close()
    finally:
        await process.kill()


@pytest_twisted.ensureDeferred
async def test_real_twistd_one_address_cannot_starve_the_others_under_a_low_ulimit(tmp_path: Path) -> None:
    """The issue's "done when": 127.0.0.2 keeps 300 slow connections coming (more than its cap of
    64, more than the descriptors of ``ulimit -n 256``); a subscriber and a publisher from
    127.0.0.1 get 200 all along, and the subscriber gets the events."""
    options = ", server.head.timeout: 2, server.body.timeout: 2, server.max.connections.per.address: 64"
    process = LimitedTwistd(nofile=256)
    port = await process.launch(twistd_config(tmp_path, options, **{"heartbeat.interval": 1}), tmp_path)
    try:
        attack = SlowAttack(port, count=300, every=0.5, reopen=True)
        flood = defer.ensureDeferred(attack.run(seconds=30))
        await wait_for(lambda: attack.opens >= 300, what="the flood to be under way")
        subscribers = []
        for round_ in range(3):  # over ~3 head deadlines: connections are cut and reopened meanwhile
            subscribers.append(await subscribe(port))
            assert await post_once(port, round_) == 200
            for subscriber in subscribers:
                await subscriber.wait_for(b'"n":%d' % round_)
            await sleep(2)
        assert attack.opens > 300, "the attacker's cut connections were reopened"
        assert all(not s.is_closed for s in subscribers)
        output = process.output.decode(errors="replace")
        assert "EMFILE" not in output and "Too many open files" not in output
        for reason in ("too-many-connections-from-address", "head-timeout"):
            assert f"({reason}, 1 so far)" in output, reason
        await attack.stop()
        await deadline(flood)
        for subscriber in subscribers:
            await subscriber.close()
    finally:
        await process.kill()


class KeepAlivePublisher(RawHttpClient):
    """POSTs one event after another on one kept-alive connection, each when the last is answered;
    stops at the first answer that is not 200 (or after ``limit`` requests)."""

    def __init__(self, index: int, limit: int) -> None:
        super().__init__()
        self.index, self.limit = index, limit
        self.sent = 0
        self.pending: int | None = None
        self.answers: list[tuple[int, int, bytes]] = []  # (n, status, head)
        self._buffer = b""

    def connectionMade(self) -> None:
        self._send()

    def _send(self) -> None:
        self.pending = self.index * 1_000_000 + self.sent
        self.sent += 1
        self.transport.write(post_bytes(self.pending))

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._buffer += data
        while (response := next_response(self._buffer)) is not None:
            head, _, self._buffer = response
            assert self.pending is not None
            self.answers.append((self.pending, status(head), head))
            if status(head) != 200 or self.sent >= self.limit:
                self.transport.loseConnection()
                return
            self._send()

    def acked(self) -> set[int]:
        return {n for n, code, _ in self.answers if code == 200}


def received_ns(client: RawHttpClient) -> set[int]:
    return {int(n) for n in re.findall(rb'"n":(\d+)', bytes(client.received))}


@pytest_twisted.ensureDeferred
async def test_real_twistd_sigterm_kept_alive_publishers_get_503_and_every_accepted_event_is_delivered(tmp_path: Path) -> None:
    """Seen: during the SIGTERM drain keep-alive publishers got 10,296 x 200, and accepted events reached nobody."""
    config_path = twistd_config(tmp_path, **{"drain.window": 2.0, "drain.batch.min": 1})
    process, port = await TwistdProcess.start(config_path, tmp_path)
    try:
        subscribers = [await subscribe(port) for _ in range(3)]  # closed over the drain window, one by one
        publishers = [KeepAlivePublisher(i + 1, limit=20_000) for i in range(4)]
        for publisher in publishers:
            await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), publisher))
        await wait_for(lambda: all(len(p.acked()) >= 20 for p in publishers), what="publishing under way")
        process.signal("TERM")
        await wait_for(lambda: all(p.is_closed for p in publishers), timeout=20, what="every publisher to stop")
        await wait_for(lambda: process.ended, timeout=20, what="twistd to exit")
        assert process.reason.value.exitCode == 0, process.output
        for publisher in publishers:
            n, code, head = publisher.answers[-1]
            assert code == 503, f"publisher {publisher.index} last got {code} (after {len(publisher.acked())} x 200)"
            assert header(head, "Retry-After") == "5" and header(head, "Connection") == "close"
        acked = set().union(*(p.acked() for p in publishers))
        for subscriber in subscribers:
            assert subscriber.is_closed and b"server shutting down" in subscriber.received
            lost = acked - received_ns(subscriber)
            assert not lost, f"{len(lost)} of {len(acked)} events answered 200 never reached a subscriber still connected"
    finally:
        await process.kill()


@pytest_twisted.ensureDeferred
async def test_real_twistd_ignores_and_logs_sighup_during_the_drain(tmp_path: Path) -> None:
    """Seen: a SIGHUP during the drain was applied: a new port was bound and served while shutting down."""
    config_path = twistd_config(tmp_path, **{"drain.window": 3.0, "drain.batch.min": 1})
    process, port = await TwistdProcess.start(config_path, tmp_path)
    try:
        subscribers = [await subscribe(port) for _ in range(3)]  # the drain takes 3 s
        with socket.socket() as probe:  # a port nobody listens on, for the reload to add
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        process.signal("TERM")
        await wait_for(lambda: b"closing 3 subscribers over" in process.output, what="the drain to begin")
        config_path.write_text(config_path.read_text() + textwrap.indent(
            f"Added: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: {free}, server.path: added}}\n", "  "))
        process.signal("HUP")
        await wait_for(lambda: re.search(rb"reload ignored|configuration reloaded|reload rejected", process.output),
                       timeout=10, what="the SIGHUP to be handled")
        assert b"reload ignored: the daemon is shutting down" in process.output
        with pytest.raises(ConnectionRefusedError):
            await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", free), RawHttpClient()))
        await wait_for(lambda: process.ended, timeout=20, what="twistd to exit")
        assert process.reason.value.exitCode == 0, process.output
        assert b"configuration reloaded" not in process.output and b"listening on 127.0.0.1:%d" % free not in process.output
        assert all(s.is_closed for s in subscribers)
    finally:
        await process.kill()


@pytest_twisted.ensureDeferred
async def test_a_tls_port_has_the_same_budgets(daemon, pki) -> None:
    """Behind TLS too: a refused connection is cut at once, and a client that never finishes
    its handshake is cut at the head deadline (its 408 cannot be sent: after CLOSE_GRACE)."""
    tls = f"server.tls.cert: {pki['cert']}, server.tls.key: {pki['key']}, server.head.timeout: 0.5, server.max.connections.per.address: 1"
    service = await daemon(f"""\
sources:
  In: {{type: http, stream: S, schema: "n int", receiver.url: "https://127.0.0.1:0/in", {tls}}}
sinks:
  Events: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, {tls}}}
""")
    port = service.port_of("Events")
    subscriber = await tls_subscribe(port, pki["ca"])
    second = await connect(port)
    await deadline(second.closed, 5)
    assert second.received == b""
    silent = await connect(port, "127.0.0.2")  # no ClientHello, ever
    started = reactor.seconds()
    took = await closed_after(silent, started)
    assert took < 0.5 + CLOSE_GRACE + 1.5, f"a silent TLS connection held {took:.1f}s"
    assert router_of(service).rejected == {"too-many-connections-from-address": 1, "head-timeout": 1}
    assert not subscriber.is_closed, "the stream itself has no deadline"
    await subscriber.close()


@pytest_twisted.ensureDeferred
async def test_a_reload_applies_new_port_limits_to_a_kept_port(daemon, tmp_path: Path) -> None:
    service = await daemon(config(head=30))
    port = service.port_of("Events")
    write_config(tmp_path, config(head=0.3))
    assert await deadline(Reloader(service, [str(tmp_path / "sse.yaml")]).reload()) is True
    assert service.port_of("Events") == port, "the port is kept"
    started = reactor.seconds()
    client = await connect(port)
    assert await closed_after(client, started) < 0.3 + 1.5
    assert status(bytes(client.received)) == 408
