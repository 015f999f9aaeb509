"""One worker process of a sink with ``worker.count`` above 1 (``python -m sse_daemon.worker``).

The daemon (workers/pool.py) binds the sink's port and starts the workers; each
worker accepts subscribers on that shared socket and serves them with the
same SseSink as a single-process daemon. Events arrive already encoded, with
their ids, over a pipe, in the daemon's order, so every worker holds the same
history and a subscriber resumes correctly whichever worker it lands on.

File descriptors, set up by the daemon:

- 0: messages from the daemon (workers/channel.py): the sink's definition, the
  history so far, then live events;
- 1: reports to the daemon: a JSON line of figures every second;
- 2: log events, one JSON line each (the daemon logs them as its own);
- 3: the listening socket, adopted once the history is loaded.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from twisted.internet import stdio
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import FilteringLogObserver, Logger, LogLevelFilterPredicate, globalLogBeginner, jsonFileLogObserver

from sse_daemon.bus.memory import MemoryBus
from sse_daemon.bus.streamids import STREAM_IDS
from sse_daemon.config.credentials import AccessSecrets
from sse_daemon.connectors.sink import SseSink, SseSinkService, bus_history
from sse_daemon.connectors.sink.ids import LOCAL_IDS
from sse_daemon.daemon.build import Builder
from sse_daemon.edge.listener import descriptor_budget
from sse_daemon.edge.passwords import PasswordPool
from sse_daemon.policy.connections import Stopping
from sse_daemon.workers import channel

LISTEN_FD = 3
REPORT_INTERVAL = 1.0

log = Logger()


class Worker(channel.MessageReceiver):
    """Builds the sink from the daemon's first message, then feeds it what follows."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.sink: SseSink | None = None
        self.service: SseSinkService | None = None
        self.passwords: PasswordPool | None = None
        #: the daemon's builder, for this process's part: one sink on the socket the daemon bound
        self.builder: Builder | None = None
        self.port: Any = None
        self.report: LoopingCall | None = None
        self.stopping: Deferred | None = None
        #: set when the worker starts to drain: its port answers 503 to any further request
        self.shutting_down = Stopping()
        #: the process's exit status: 1 once it could not follow the daemon's set-up
        self.exit_status = 0
        self.index = -1
        self.family = 0
        #: the sink's secrets as the daemon read them at its start (not the files now: they may have changed since)
        self.access: AccessSecrets | None = None

    # -- messages from the daemon
    def setup(self, spec: dict[str, Any]) -> None:
        connector, schema = spec["connector"], spec["schema"]
        self.index, self.family, self.access = spec["index"], spec["family"], spec["access"]
        self.passwords = PasswordPool(self.reactor)  # this process's own threads for auth.type basic
        # events come by pipe, not from a bus; the descriptors are this process's own
        self.builder = Builder(MemoryBus(), self.reactor, self.reactor, self.passwords, descriptor_budget(self.reactor),
                               self.shutting_down)
        # the daemon's history continues here, keyed as the daemon keys it: a shared bus's ids or its own
        ids = STREAM_IDS if spec["bus_ids"] else LOCAL_IDS
        floor, newest = (None if spec[k] is None else ids.key(spec[k]) for k in ("floor", "newest"))
        self.sink = self.builder.sink(connector, schema, bus_history(connector.options, self.reactor, ids, floor, newest))

    def history_entry(self, id_text: str, frame: bytes, at: float) -> None:
        assert self.sink is not None
        self.sink.history.append(self.sink.history.key(id_text), frame, at)

    def go(self) -> None:
        """The history is in: serve."""
        assert self.sink is not None
        assert self.builder is not None and self.passwords is not None
        builder, sink = self.builder, self.sink
        connector = sink.connector
        self.service = SseSinkService(sink, builder.bus, connector.stream, self.reactor)
        self.service.startService()
        self.passwords.startService()
        table = builder.route_table([(connector.options.server_path, connector)], lambda c: builder.guarded_sink(c, sink, self.access))
        site = table.site(self.reactor, builder.descriptors, builder.stopping)
        self.port = self.reactor.adoptStreamPort(LISTEN_FD, self.family, site)
        os.close(LISTEN_FD)  # adoptStreamPort works on its own copy
        self.report = LoopingCall(self._report)
        self.report.clock = self.reactor
        self.report.start(REPORT_INTERVAL, now=True)
        log.info("worker {worker} of sink {sink} serving (pid {pid}, {history} events of history)",
                 worker=self.index, sink=sink.name, pid=os.getpid(), history=len(sink.history))

    def event(self, id_text: str | None, frame: bytes) -> None:
        assert self.sink is not None
        self.sink.deliver(None if id_text is None else self.sink.history.key(id_text), frame)

    def _report(self, last: bool = False) -> None:
        assert self.sink is not None
        figures = {"subscribers": len(self.sink.subscribers), "counters": dict(self.sink.counters),
                   "rejected": dict(self.sink.rejected)}
        line = json.dumps(figures).encode() + b"\n"
        if last:  # the reactor stops next: write it now (a few hundred bytes, under the pipe's atomic size)
            os.write(1, line)
        else:
            assert self.transport is not None
            self.transport.write(line)

    def unusable(self) -> None:
        """The set-up failed (logged): end, so the daemon starts this worker again after its delay and says so,
        rather than keep a process that never serves while connections the kernel hands its socket wait."""
        self.exit_status = 1
        self.stop()

    # -- the end
    def connectionLost(self, reason: object = None) -> None:
        """The daemon is gone (or closed our pipe): drain and exit."""
        self.stop()

    def stop(self) -> Deferred:
        """Stop accepting, close subscribers in stages (drain.window), report, exit."""
        if self.stopping is not None:
            return self.stopping
        self.shutting_down.begin()
        if self.port is not None:
            self.port.stopListening()
        if self.report is not None and self.report.running:
            self.report.stop()
        if self.service is not None:
            service = self.service
            self.stopping = service.drain(self.reactor)
            self.stopping.addBoth(lambda _: service.stopService())
            self.stopping.addBoth(lambda _: self._report(last=True))
        else:
            self.stopping = succeed(None)
        if self.passwords is not None and self.passwords.running:
            passwords = self.passwords
            self.stopping.addBoth(lambda _: passwords.stopService())
        self.stopping.addBoth(lambda _: self.reactor.stop())
        return self.stopping


def main() -> None:
    from twisted.internet import reactor as installed

    from sse_daemon.ops.logs import parse_level

    reactor: Any = installed  # the platform's reactor: it spawns, threads and reads stdio (the stubs know IReactorCore only)

    level = parse_level(sys.argv[1] if len(sys.argv) > 1 else "info")
    observer = FilteringLogObserver(jsonFileLogObserver(sys.stderr, recordSeparator=""), [LogLevelFilterPredicate(level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    worker = Worker(reactor)
    standard_io: Any = stdio.StandardIO  # POSIX's (the stubs show the Windows signature)
    standard_io(worker, stdin=0, stdout=1, reactor=reactor)
    # SIGINT too: a Ctrl-C in a terminal reaches the whole process group
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: reactor.callFromThread(worker.stop))
    reactor.run(installSignalHandlers=False)
    sys.exit(worker.exit_status)


if __name__ == "__main__":
    main()
