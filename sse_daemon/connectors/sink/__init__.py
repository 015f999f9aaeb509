"""The SSE sink (``type: sse-server``), in pieces: :class:`SseSink` (core.py) ties together
mapping (encoding.py), ids (ids.py), per-turn batching (batching.py), subscribers
(subscriber.py), resume from a shared bus (replay.py), the HTTP resource (http.py) and
the service that subscribes it to the bus (service.py)."""

from sse_daemon.connectors.sink.core import OPENING, SseSink, bus_history, own_history
from sse_daemon.connectors.sink.http import SseSinkResource
from sse_daemon.connectors.sink.ids import EventIds
from sse_daemon.connectors.sink.replay import BUS_REPLAY_TIMEOUT
from sse_daemon.connectors.sink.service import SseSinkService, sink_for_bus
from sse_daemon.connectors.sink.subscriber import HEARTBEAT, Subscriber

__all__ = ["BUS_REPLAY_TIMEOUT", "HEARTBEAT", "OPENING", "EventIds", "SseSink", "SseSinkResource", "SseSinkService",
           "Subscriber", "bus_history", "own_history", "sink_for_bus"]
