"""Log sink (``type: log``): every event of a stream through twisted.logger."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from twisted.application.service import Service
from twisted.logger import Logger, LogLevel

from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, ISubscription
from sse_daemon.connectors.interfaces import ILogSinkService
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import LogSinkOptions
from sse_daemon.policy.limits import should_log
from sse_daemon.mapping.mappers import IMapper, MappingError
from sse_daemon.events.schema import Event


#: the ``priority`` option (Siddhi's log levels) as twisted.logger levels; ``off`` logs nothing
LEVELS = {"trace": LogLevel.debug, "debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error, "fatal": LogLevel.critical}


@implementer(ILogSinkService)
class LogSinkService(Service):
    log = Logger()

    def __init__(self, connector: ConnectorDef[LogSinkOptions], mapper: IMapper, bus: IBus) -> None:
        self.connector = connector
        self.mapper = mapper
        self.bus = bus
        self.prefix: str = connector.options.prefix
        self.level = LEVELS.get(connector.options.priority)  # None: priority off
        self.counters: Counter[str] = Counter()
        self._subscription: ISubscription | None = None
        self.setName(f"sink:{connector.name}")

    def startService(self) -> None:
        super().startService()
        self._subscription = self.bus.subscribe(self.connector.stream, self.write)

    def stopService(self) -> None:
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def write(self, events: Sequence[Event]) -> None:
        for event in events:
            self._write(event)

    def _write(self, event: Event) -> None:
        self.counters["events_in"] += 1
        try:
            payload = self.mapper.encode(event)
        except Exception as e:  # map.validate.json refused the output; anything else is a bug (events are checked on entry)
            self.counters["events_unmapped"] += 1
            count = self.counters["events_unmapped"]
            if not should_log(count):  # counted in /metrics; a bug hit by every event must not flood the log
                return
            if isinstance(e, MappingError):
                self.log.warn("sink {sink} dropped an event: {reason} ({count} so far)", sink=self.connector.name, reason=str(e), count=count)
            else:
                self.log.failure("sink {sink} could not encode an event ({count} so far); it is dropped", sink=self.connector.name, count=count)
            return
        if self.level is None:
            return
        self.log.emit(
            self.level, "{prefix}{payload}", prefix=self.prefix, payload=payload,
            sink=self.connector.name, stream=self.connector.stream,
        )
