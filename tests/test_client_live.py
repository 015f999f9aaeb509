"""The SSE client as its users meet it: a real server on 127.0.0.1 port 0, the real reactor and treq.

tests/test_client.py pins the rules with StubTreq and a task.Clock; these check what only real
sockets show (a connection closes later than stop() asks) and that docs/client.md's example runs.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from sse_daemon.client import EventSource, Handler, Interruption, Opened, ReconnectPolicy, Settings, http_client
from sse_daemon.wire.eventstream import Message

from .conftest import wait_for
from .sse_servers import ScriptedServer
from .test_example_follow import _Program  # a child process whose output and end a test reads

QUICK = ReconnectPolicy(initial=0.05, maximum=1.0, jitter=lambda: 0.0)


class Recorder(Handler):
    def __init__(self) -> None:
        self.reports: list[Any] = []

    def opened(self, opened: Opened) -> None:
        self.reports.append(("opened", opened.last_event_id))

    def message(self, message: Message) -> None:
        self.reports.append(("message", message.data))

    def comment(self, text: str) -> None:
        if text != "scripted stream open":
            self.reports.append(("comment", text))

    def interrupted(self, interruption: Interruption) -> None:
        self.reports.append(("interrupted", interruption.kind))


async def _open(handler: Handler, **settings: Any) -> tuple[ScriptedServer, EventSource]:
    server = ScriptedServer(retry=50)
    server.start()
    source = EventSource(Settings(server.url(), reconnect=QUICK, **settings), handler, http_client(reactor), reactor)
    source.start()
    await wait_for(lambda: source.connected, what="the stream")
    return server, source


@pytest_twisted.ensureDeferred
async def test_started_again_at_once_after_stop_it_keeps_one_stream_and_the_old_one_says_nothing() -> None:
    got = Recorder()
    server, source = await _open(got)
    try:
        server.publish("a")
        await wait_for(lambda: ("message", "a") in got.reports, what="a")
        source.stop()
        source.start()  # without waiting for stop()'s Deferred: the old connection is still closing
        await wait_for(lambda: len(server.seen) == 2 and source.connected, what="the second stream")
        server.publish("b")
        await wait_for(lambda: ("message", "b") in got.reports, what="b")
        # once the server has seen the old stream close, a second loop would have heard its end (it reads no
        # more) and said so: nothing may have been reported since "b"
        await wait_for(lambda: len(server.streams) == 1, what="the old stream closed on the server")
        assert got.reports == [("opened", ""), ("message", "a"), ("opened", "1"), ("message", "b")]
        assert len(server.seen) == 2 and source.connected
    finally:
        await source.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_failing_message_callback_loses_nothing_else_of_the_read() -> None:
    class Broken(Recorder):
        def message(self, message: Message) -> None:
            super().message(message)
            if message.data == "a":
                raise RuntimeError("bug")

    got = Broken()
    server, source = await _open(got)
    try:
        server.write(b"data: a\n\ndata: b\n\n: c\n\ndata: d\n\n")  # one write: one read
        await wait_for(lambda: ("message", "d") in got.reports, what="d")
        assert got.reports == [("opened", ""), ("message", "a"), ("message", "b"), ("comment", "c"), ("message", "d")]
        assert source.counters["internal_errors"] == 1 and source.connected
    finally:
        await source.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_stop_in_a_callback_ends_the_calls_even_within_one_read() -> None:
    class StopAtA(Recorder):
        def message(self, message: Message) -> None:
            super().message(message)
            source.stop()

    got = StopAtA()
    server, source = await _open(got)
    try:
        server.write(b"data: a\n\ndata: b\n\n: c\n\n")
        await wait_for(lambda: not source.connected and not server.streams, what="the stop, seen by the server")
        assert got.reports == [("opened", ""), ("message", "a")]
    finally:
        await source.stop()
        await server.stop()


def _docs_examples() -> list[tuple[str, str]]:
    """The python examples of docs/client.md and of the package's docstring, as written."""
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "client.md").read_text(encoding="utf-8")
    found = [(f"docs/client.md#{n}", body) for n, body in enumerate(re.findall(r"^```python\n(.*?)^```", doc, re.M | re.S))]
    import sse_daemon.client

    docstring = sse_daemon.client.__doc__ or ""
    block = docstring.split("::\n", 1)[1].split("\nModules", 1)[0]
    found.append(("sse_daemon/client/__init__.py", textwrap.dedent(block)))
    return found


@pytest.mark.parametrize("where, code", _docs_examples(), ids=lambda v: v if "\n" not in v else "")
@pytest_twisted.ensureDeferred
async def test_the_documented_example_runs_as_written(where: str, code: str) -> None:
    server = ScriptedServer()
    server.start()
    url = re.search(r'Settings\("([^"]+)"\)', code)
    assert url, f"{where}: no Settings(url) to point at the local server"
    program = _Program()
    reactor.spawnProcess(program, sys.executable, [sys.executable, "-c", code.replace(url.group(1), server.url())],
                         env=os.environ.copy())
    try:
        server.publish("hello", event="greeting")
        await wait_for(lambda: b"1 greeting hello" in program.out or program.ended, what=f"{where} to print the event")
        assert b"1 greeting hello" in program.out, program.err.decode()
    finally:
        if not program.ended:
            program.transport.signalProcess("KILL")
        await server.stop()


def test_settings_refuse_what_cannot_work_with_a_clear_error() -> None:
    for bad, words in [
        (dict(url="ftp://a/events"), "http:// or https://"),
        (dict(url="127.0.0.1:8020/events"), "http:// or https://"),
        (dict(url="http://a/", connect_timeout=-1), "connect_timeout must be"),
        (dict(url="http://a/", read_timeout=float("nan")), "read_timeout must be"),
        (dict(url="http://a/", max_event_size=0), "max_event_size must be"),
    ]:
        with pytest.raises(ValueError, match=words):
            Settings(**bad)  # type: ignore[arg-type]
    assert Settings("HTTPS://a/", connect_timeout=0, read_timeout=0).read_timeout == 0
