"""Two real ``twistd -n sse-daemon`` processes sharing one bus on a real redis-server.

The in-process versions of these scenarios are in tests/test_redisbus.py; here each
instance is its own process, so "the other instance" is really another process and
"an instance that vanishes" is a SIGKILL, not a clean ``stopService``.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from .conftest import TwistdProcess, sleep, subscribe, wait_for, write_config
from .redis_server import redis_server  # noqa: F401  (the fixture)
from .test_redisbus import ids_and_numbers, post
from .test_resume import head


#: a twistd process gets this long to start (imports, Redis connection) before the test fails
START = 30.0


class Instance(TwistdProcess):
    """One ``twistd -n sse-daemon`` process; its output is kept for the port and the lease lines."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.port = 0

    @property
    def took_lease(self) -> int:
        return self.output.count(b"took the lease ")

    async def boot(self, config: Path, cwd: Path) -> None:
        self.port = await self.launch(config, cwd)


async def clean_up(clients: list, instances: list) -> None:
    """Close every client, then KILL every process and wait for it to end; one failure stops none of the rest."""
    errors = []
    for step in [client.close for client in clients] + [instance.kill for instance in instances]:
        try:
            await step()
        except Exception as e:  # noqa: BLE001  (reported below, after everything was cleaned up)
            errors.append(e)
    assert not errors, errors


def redis_command(port: int, *args: str) -> bytes:
    """One command to the test's redis-server, the raw reply (small replies only: CLIENT LIST, GET)."""
    request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(request)
        reply = b""
        while True:
            chunk = s.recv(65536)
            assert chunk, f"redis-server closed the connection after {reply!r}"
            reply += chunk
            if reply.startswith((b"+", b"-", b":")) and reply.endswith(b"\r\n"):
                return reply
            if reply.startswith(b"$-1\r\n"):
                return reply
            if reply.startswith(b"$"):
                size, _, rest = reply[1:].partition(b"\r\n")
                if len(rest) >= int(size) + 2:
                    return rest[: int(size)]


def readers_blocked(port: int) -> int:
    """How many connections have issued XREAD: a daemon's reader does so only once every stream
    it reads has its position (the stream's end), so from then on it misses nothing published."""
    return sum(1 for line in redis_command(port, "CLIENT", "LIST").splitlines() if b" cmd=xread " in line)


async def wait_placed(redis_port: int, count: int) -> None:
    end = reactor.seconds() + START
    while readers_blocked(redis_port) < count:
        assert reactor.seconds() < end, f"timed out waiting for {count} bus readers in XREAD"
        await sleep(0.05)


def bus_section(redis_server: Any, prefix: str, extra: str = "") -> str:
    """The shared ``bus:`` section, indented like the rest of each test's YAML (write_config dedents)."""
    return (
        "        bus:\n"
        "          type: redis\n"
        f"          url: {redis_server.url}\n"
        f'          key.prefix: "{prefix}"\n'
        "          reconnect.max.delay: 0.3\n"
        + (f"          {extra}\n" if extra else "")
    )


@pytest_twisted.ensureDeferred
async def test_two_processes_share_a_stream_and_a_subscriber_resumes_on_the_other(redis_server, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    text = bus_section(redis_server, prefix) + """\
        sources:
          In: {type: http, schema: "n int", stream: S, receiver.url: "http://127.0.0.1:0/in"}
        sinks:
          Out: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, retry.max: 0}
        """
    a, b, c = Instance("A"), Instance("B"), Instance("C")
    clients: list = []
    try:
        await a.boot(write_config(tmp_path, text, "a.yaml"), tmp_path)
        await b.boot(write_config(tmp_path, text, "b.yaml"), tmp_path)
        await wait_placed(redis_server.port, 2)
        on_a = await subscribe(a.port, "/events")
        on_b = await subscribe(b.port, "/events")
        clients += [on_a, on_b]
        for n in (1, 2, 3):
            assert (await post(a.port, n))[0] == 200
        await on_a.wait_for(b'"n":3}')
        await on_b.wait_for(b'"n":3}')
        seen_a, seen_b = ids_and_numbers(on_a.received), ids_and_numbers(on_b.received)
        assert [n for _, n in seen_a] == [1, 2, 3]
        assert seen_b == seen_a, "the same events with the same ids on both processes"

        await on_a.close()  # read 1..3 on A, then away
        for n in (4, 5):
            assert (await post(a.port, n))[0] == 200
        await on_b.wait_for(b'"n":5}')  # 4 and 5 are in Redis and delivered
        again = await subscribe(b.port, "/events", f"Last-Event-ID: {seen_a[-1][0]}\r\n")
        clients.append(again)
        assert head(bytes(again.received)).get("sse-replay-from") == seen_a[-1][0]
        assert (await post(a.port, 6))[0] == 200  # live after the resume
        await again.wait_for(b'"n":6}')
        await on_b.wait_for(b'"n":6}')
        resumed = ids_and_numbers(again.received)
        assert [n for _, n in resumed] == [4, 5, 6], "the missed ones, then live ones: no loss, no repeat"
        assert resumed == ids_and_numbers(on_b.received)[3:], "the same ids as B's own subscriber saw"

        # B's own history covered that id; a process started after all that holds none of it,
        # so its sink asks Redis (XREVRANGE) for what follows.
        await c.boot(write_config(tmp_path, text, "c.yaml"), tmp_path)
        await wait_placed(redis_server.port, 3)
        from_redis = await subscribe(c.port, "/events", f"Last-Event-ID: {seen_a[-1][0]}\r\n")
        clients.append(from_redis)
        assert head(bytes(from_redis.received)).get("sse-replay-from") == seen_a[-1][0]
        assert (await post(b.port, 7))[0] == 200
        await from_redis.wait_for(b'"n":7}')
        await again.wait_for(b'"n":7}')
        assert ids_and_numbers(from_redis.received) == ids_and_numbers(again.received)
        assert [n for _, n in ids_and_numbers(from_redis.received)] == [4, 5, 6, 7]
    finally:
        await clean_up(clients, [a, b, c])


@pytest_twisted.ensureDeferred
async def test_killing_the_lease_holder_hands_the_source_to_the_other_process(redis_server, tmp_path: Path) -> None:
    from .sse_servers import ScriptedServer

    ttl = 2.0  # short, but long enough that a busy machine does not make the holder miss a renewal
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    upstream = ScriptedServer()
    upstream.start()
    text = bus_section(redis_server, prefix, f"source.lease.ttl: {ttl}") + f"""\
        sources:
          Up: {{type: sse, schema: "n int", stream: S, receiver.url: "{upstream.url()}", reconnect.initial.delay: 0.05}}
        sinks:
          Out: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, retry.max: 0}}
        """
    instances = [Instance("A"), Instance("B")]
    clients: list = []
    try:
        for instance, config in zip(instances, ("a.yaml", "b.yaml")):
            await instance.boot(write_config(tmp_path, text, config), tmp_path)
        await wait_placed(redis_server.port, 2)
        await wait_for(lambda: sum(i.took_lease for i in instances) == 1 and len(upstream.streams) == 1,
                       timeout=START, what="one process to take the lease and read the upstream")
        holder, survivor = instances if instances[0].took_lease else instances[::-1]
        assert not survivor.took_lease
        on_survivor = await subscribe(survivor.port, "/events")
        clients.append(on_survivor)
        for n in (1, 2, 3):
            upstream.publish(f'{{"n": {n}}}')
        await on_survivor.wait_for(b'"n":3}')
        assert len(upstream.seen) == 1, "one reader per upstream"
        cursor_key = f"{prefix}source:Up:cursor"
        # At least once is documented: a holder that dies between publishing an event and saving
        # its cursor has that event read again. This test is about the hand-over itself, so it
        # kills the holder while idle: once the cursor of the last event is saved.
        await wait_for(lambda: redis_command(redis_server.port, "GET", cursor_key) == b"3", timeout=10,
                       what="the holder to save its cursor")

        await holder.kill()
        killed_at = reactor.seconds()
        for n in (4, 5):  # nobody reads now; the next holder asks for them with the cursor
            upstream.publish(f'{{"n": {n}}}')
        await wait_for(lambda: survivor.took_lease and len(upstream.streams) == 1 and len(upstream.seen) == 2,
                       timeout=10, what="the surviving process to take the lease and connect")
        assert reactor.seconds() - killed_at < ttl + 5.0, "taken over once the lease ran out (not never)"
        assert upstream.seen[1].last_event_id == "3", "resumed from the cursor the killed holder saved"
        upstream.publish('{"n": 6}')  # live, read by the new holder
        await on_survivor.wait_for(b'"n":6}')
        await wait_for(lambda: redis_command(redis_server.port, "GET", cursor_key) == b"6", timeout=10,
                       what="the new holder to save its cursor")
        seen = ids_and_numbers(on_survivor.received)
        assert [n for _, n in seen] == [1, 2, 3, 4, 5, 6], "every upstream event exactly once"
        assert len({i for i, _ in seen}) == 6
        assert survivor.took_lease == 1 and not survivor.ended
    finally:
        try:
            await clean_up(clients, instances)
        finally:
            await upstream.stop()
