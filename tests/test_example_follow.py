"""examples/follow.py, the client's documented example, run as a program against a local server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import protocol, reactor

from .conftest import wait_for
from .sse_servers import ScriptedServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "follow.py"


class _Program(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.status: int | None = None
        self.ended = False

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.status = reason.value.exitCode
        self.ended = True


@pytest_twisted.ensureDeferred
async def test_follow_prints_events_and_resumes_after_a_drop() -> None:
    server = ScriptedServer(retry=50)
    server.start()
    program = _Program()
    try:
        server.publish('{"n": 1}')
        server.publish("two", event="reading")
        args = [sys.executable, str(EXAMPLE), server.url(), "--count", "3"]
        reactor.spawnProcess(program, sys.executable, args, env=os.environ.copy())
        await wait_for(lambda: program.out.count(b"\n") == 2, what="the two stored events")
        server.drop()  # the program reconnects with Last-Event-ID 2...
        server.publish("three")  # ...and gets what it missed
        await wait_for(lambda: program.ended, what="the program to end after three events")
    finally:
        if not program.ended:
            program.transport.signalProcess("KILL")
        await server.stop()
    lines = [json.loads(line) for line in program.out.decode().splitlines()]
    assert lines == [{"id": "1", "event": "message", "data": '{"n": 1}'}, {"id": "2", "event": "reading", "data": "two"},
                     {"id": "3", "event": "message", "data": "three"}]
    assert program.status == 0, program.err
    assert [s.last_event_id for s in server.seen] == [None, "2"]
    err = program.err.decode()
    assert "connected to http://127.0.0.1" in err and "reconnecting in 0.05s" in err, err
