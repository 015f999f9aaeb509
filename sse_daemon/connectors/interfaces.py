"""What the daemon, the admin and the figures rely on in sources and sinks, declared.

Sources and sinks keep plain counters; these interfaces name them, so
``ops/figures.py`` and ``ops/admin.py`` read declared attributes and tell the
kinds of sink apart with ``providedBy``, never by probing for a name.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class ISource(Interface):
    """A source (an ingest or an SSE source): events in, and what it refused."""

    connector = Attribute("Its ConnectorDef.")
    counters = Attribute("Its figures (a Counter): events_in, ...")
    rejected = Attribute("Requests or messages refused, by reason (a Counter).")


class IUpstreamSource(ISource):
    """An SSE source: reads an upstream stream and publishes its events."""

    connected = Attribute("Whether a stream is open now.")
    reconnects = Attribute("Times it connected again after a stream ended or failed.")
    last_event_id = Attribute("The last upstream id it read ('' before the first).")
    stopped_reason = Attribute("Why the upstream told it to stop (HTTP 204), or None.")
    mapping_errors = Attribute("Upstream messages its mapper refused, by reason (a Counter).")

    def resume_after(last_event_id: str | None) -> None:
        """Start (again) from this Last-Event-ID (a leased source's cursor)."""


class ISubscriberSink(Interface):
    """What is shown of an SSE sink: its subscribers, history and counters."""

    name = Attribute("The connector's name.")
    connector = Attribute("Its ConnectorDef.")
    subscribers = Attribute("The subscribers connected now (only its length is read).")
    counters = Attribute("Its figures (a Counter): connections_opened, events_in, events_out, resume_*, ...")
    rejected = Attribute("Requests refused before they became subscribers, by reason (a Counter).")
    history = Attribute("Its History (``len`` is what it holds).")
    lag_observer = Attribute("Called with the seconds from an event's ingress to its hand-off to the sockets, or None.")


class ISseSinkService(IService):
    """An SSE sink as the daemon runs it, in this process or in worker processes."""

    connector = Attribute("Its ConnectorDef.")
    sink = Attribute("Its ISubscriberSink (figures).")

    def drain(io: Any = None) -> Deferred:
        """Close the subscribers in stages over ``drain.window`` (shutdown, a reload)."""


class ILogSinkService(IService):
    """A log sink: counts what it writes to the log."""

    connector = Attribute("Its ConnectorDef.")
    counters = Attribute("Its figures (a Counter): events_in, events_unmapped.")


class IReadiness(Interface):
    """A piece ``/readyz`` asks (a sink's worker processes)."""

    def readiness() -> str:
        """"ok", or why it cannot serve now."""


class IOwnPort(Interface):
    """A sink that binds its own port (worker processes) instead of sharing a listener."""

    bound_port = Attribute("The port it listens on.")
