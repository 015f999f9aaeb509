"""An SSE sink as a service: subscribed to its stream, beating its heartbeat, draining on stop."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, ISharedBus, ISubscription
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import SseServerOptions
from sse_daemon.connectors.history import History
from sse_daemon.connectors.interfaces import ISseSinkService
from sse_daemon.connectors.sink.core import Forward, LagObserver, SseSink, bus_history
from sse_daemon.connectors.sink.drain import drain_sink  # staged close on shutdown
from sse_daemon.connectors.sink.durable import HistoryStore
from sse_daemon.connectors.sink.replay import BusReplayer
from sse_daemon.events.schema import Schema
from sse_daemon.mapping.mappers import IMapper


def sink_for_bus(
    bus: IBus, stream: str, connector: ConnectorDef[SseServerOptions], mapper: IMapper, clock: IReactorTime,
    turns: IReactorTime | None = None, forward: Forward | None = None, lag_observer: LagObserver | None = None,
    history: History | None = None, history_store: HistoryStore | None = None, schema: Schema | None = None,
) -> SseSink:
    """An SseSink of ``stream`` on ``bus``. On a shared bus (unless raw) it sends the bus's ids, the
    same on every instance, and asks the bus what follows an id its history does not cover (another
    instance's, or older); elsewhere it numbers its events itself. ``history``: one given whole (a worker's copy);
    ``history_store``: its history file (``history.path``; never on a shared bus, which keeps history itself)."""
    bus_replay: BusReplayer | None = None
    if ISharedBus.providedBy(bus) and connector.options.sse_format != "raw":
        if history is None:
            history = bus_history(connector.options, clock, bus.ids)

        def bus_replay(after: str | None, limit: int) -> Deferred:
            return bus.replay(stream, after, limit)

    return SseSink(connector, mapper, clock, turns=turns, forward=forward, lag_observer=lag_observer,
                   history=history, bus_replay=bus_replay, history_store=history_store, schema=schema)


@implementer(ISseSinkService)
class SseSinkService(Service):
    """Connects a sink to the bus and drives its heartbeat; on stop, ends every stream."""

    def __init__(self, sink: SseSink, bus: IBus, stream: str, clock: IReactorTime) -> None:
        self.sink = sink
        self.bus = bus
        self.stream = stream
        self.clock = clock
        self.setName(f"sink:{sink.name}")
        self._subscription: ISubscription | None = None
        self._heartbeat: LoopingCall | None = None

    @property
    def connector(self) -> ConnectorDef[SseServerOptions]:
        return self.sink.connector

    def startService(self) -> None:
        super().startService()
        self.sink.start_writing()  # with a history file: its only writer from now on
        self._subscription = self.bus.subscribe(self.stream, self.sink.publish)
        interval = self.sink.connector.options.heartbeat_interval
        if interval > 0 and not self.sink.raw:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(interval, now=False)

    def drain(self, io: IReactorTime | None = None) -> Deferred:
        """Close subscribers in stages over ``drain.window`` (sink/drain.py); the bus keeps feeding the others."""
        return drain_sink(self.sink, self.sink.connector.options.drain_window, self.sink.connector.options.drain_batch_min,
                          self.clock, self.sink.jitter, io)

    def _beat(self) -> None:
        # A LoopingCall stops for good on the first exception; a heartbeat must not.
        with self.sink.log.failuresHandled("heartbeat of sink {sink} failed", sink=self.sink.name):
            self.sink.heartbeat()

    def stopService(self) -> Deferred:
        """Fires once the history file (if any) has every commit of this sink and is let go."""
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self.sink.close_all()
        return self.sink.stop_writing()
