"""How an SSE source treats an upstream that answers every request with the same body.

One ``SseSourceService`` (default options unless given) against a scripted upstream on
127.0.0.1 that answers each request ``200 text/event-stream`` with BODY and closes; after
WINDOW seconds it prints one JSON line: requests, their rate, the source's log lines (info
and above, and debug), whether its loop stopped, and the first reconnect delays it chose.
Run from the repository root (docs/reliability-admin.md has the figures)::

    .venv/bin/python -m bench.hostile_upstream --window 2.7 --body 'retry: 0\\n\\n'
    .venv/bin/python -m bench.hostile_upstream --window 3 --body ': hi\\n\\n'
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from sse_daemon.bus.memory import MemoryBus
from sse_daemon.config.model import load_yaml, validate
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.events.schema import parse_schema
from sse_daemon.connectors.source import SseSourceService
from tests.sse_servers import Canned, ScriptedServer


async def measure(reactor: Any, window: float, body: bytes, options: dict[str, Any]) -> dict[str, Any]:
    server = ScriptedServer()
    server.start()
    server.script.extend([Canned(200, body, "text/event-stream")] * 1_000_000)
    entry = {"type": "sse", "schema": "param1 string", "receiver.url": server.url(), **options}
    connector = validate(load_yaml(json.dumps({"sources": {"Src": entry}}), "bench.yaml")).sources[0]
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    source = SseSourceService(connector, make_mapper(connector.options, parse_schema("param1 string")), MemoryBus(), reactor)
    source.startService()
    await task.deferLater(reactor, window, lambda: None)
    await source.stopService()
    globalLogPublisher.removeObserver(events.append)
    await server.stop()
    mine = [e for e in events if e.get("source") == "Src"]
    return {
        "window_s": window,
        "requests": len(server.seen),
        "requests_per_s": round(len(server.seen) / window, 1),
        "log_lines": sum(e["log_level"].name != "debug" for e in mine),
        "debug_lines": sum(e["log_level"].name == "debug" for e in mine),
        "stopped_unexpectedly": any("stopped unexpectedly" in str(e.get("log_format")) for e in events),
        "failures": source.counters["failures"],
        "first_delays": [round(e["delay"], 3) for e in mine if "delay" in e][:6],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=2.7, help="seconds to watch (default 2.7)")
    parser.add_argument("--body", default="retry: 0\\n\\n", help="the upstream's whole answer; \\n escapes allowed")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="a source option")
    args = parser.parse_args()
    body = args.body.encode().decode("unicode_escape").encode("utf-8")
    options = dict(item.split("=", 1) for item in args.option)

    async def run(reactor: Any) -> None:
        print(json.dumps(await measure(reactor, args.window, body, options)))

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
