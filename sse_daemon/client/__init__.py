"""A Server-Sent Events client for Twisted programs (``EventSource``), usable without the daemon.

Usage (see ``docs/client.md`` and ``examples/follow.py``)::

    from twisted.internet import reactor

    from sse_daemon.client import EventSource, Handler, Settings, http_client

    class Print(Handler):
        def message(self, message):
            print(message.id, message.event, message.data)

    source = EventSource(Settings("https://example.org/events"), Print(), http_client(reactor), reactor)
    source.start()
    reactor.run()

Modules: :mod:`.eventsource` (the client, its settings and handler interface),
:mod:`.decisions` (pure: reconnect policy, judging a response head),
:mod:`.failures` (one-line causes), :mod:`.body` (body protocols),
:mod:`.http` (the default treq client). It imports only the wire format,
pure policy helpers, Twisted and treq: nothing of the daemon.
"""

from sse_daemon.client.decisions import ReconnectPolicy, Verdict, judge_response, reconnect_delay, retry_after
from sse_daemon.client.eventsource import EventSource, EventSourceHandler, Handler, Interruption, Opened, Settings
from sse_daemon.client.failures import describe_failure
from sse_daemon.client.http import HttpGet, http_client
from sse_daemon.wire.eventstream import Message, Rejection

__all__ = [
    "EventSource", "EventSourceHandler", "Handler", "HttpGet", "Interruption", "Message", "Opened",
    "ReconnectPolicy", "Rejection", "Settings", "Verdict", "describe_failure", "http_client",
    "judge_response", "reconnect_delay", "retry_after",
]
