"""Follow a Server-Sent Events stream and print each event as a JSON line.

    python examples/follow.py http://127.0.0.1:8020/testsse [--last-event-id ID] [--count N]

A small Twisted program using sse_daemon's EventSource client on its own (no
daemon): it reconnects with Last-Event-ID after drops, backs off on failures,
and says on stderr why a connection ended and when it will try again.
"""

from __future__ import annotations

import argparse
import json
import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from sse_daemon.client import EventSource, Handler, Interruption, Message, Opened, Settings, http_client


class Printer(Handler):
    """Prints messages to stdout and news to stderr; fires ``done`` after ``count`` messages."""

    def __init__(self, count: int | None) -> None:
        self.left = count
        self.done: Deferred[None] = Deferred()

    def opened(self, opened: Opened) -> None:
        print(f"connected to {opened.url} (Last-Event-ID {opened.last_event_id!r})", file=sys.stderr, flush=True)

    def message(self, message: Message) -> None:
        print(json.dumps({"id": message.id, "event": message.event, "data": message.data}), flush=True)
        if self.left is not None:
            self.left -= 1
            if self.left == 0 and not self.done.called:
                self.done.callback(None)

    def interrupted(self, interruption: Interruption) -> None:
        then = f"reconnecting in {interruption.reconnect_in:.2f}s" if interruption.will_reconnect else "giving up"
        print(f"{interruption.reason}; {then}", file=sys.stderr, flush=True)
        if not interruption.will_reconnect and not self.done.called:
            self.done.callback(None)


async def follow(reactor, url: str, last_event_id: str, count: int | None) -> None:
    printer = Printer(count)
    source = EventSource(Settings(url, last_event_id=last_event_id), printer, http_client(reactor), reactor)
    source.start()
    try:
        await printer.done
    finally:
        await source.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--last-event-id", default="", help="resume after this id")
    parser.add_argument("--count", type=int, default=None, help="stop after this many events")
    args = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(follow(reactor, args.url, args.last_event_id, args.count)))


if __name__ == "__main__":
    main()
