"""``worker.count`` on a sink: several processes serve its port (the daemon's side).

One process writes each event to every subscriber with one core; a sink with
``worker.count: N`` is served by N worker processes (sse_daemon/worker.py) instead. The
daemon binds the port itself (so a bind error stops it, as for any listener):
one listening socket per worker with SO_REUSEPORT, so the kernel spreads new
connections evenly, and keeps them open while workers come and go. The daemon still maps, numbers and keeps the
history of every event (the same SseSink, with no subscribers of its own) and
sends each encoded event, in order, to every worker over a pipe, so every
worker holds the same history and ids and a subscriber resumes correctly on
whichever worker its reconnection lands.

A worker that exits is started again (after a short, growing delay) and
first gets the history; its subscribers were cut and resume from it. A worker
that stops reading its pipe (full for STALL_SECONDS, with more than
``subscriber.queue.bytes`` waiting) is killed rather than holding the daemon's memory. On stop, every
worker drains its subscribers over ``drain.window`` as a single process does.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections import Counter
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from zope.interface import implementer

from sse_daemon.workers import channel
from sse_daemon.bus.interfaces import IBus, ISubscription
from sse_daemon.config.credentials import load_access
from sse_daemon.config.model import ConnectorDef
from sse_daemon.connectors.interfaces import IOwnPort, IReadiness, ISseSinkService, ISubscriberSink
from sse_daemon.edge.listener import BindError
from sse_daemon.mapping.mappers import IMapper
from sse_daemon.events.schema import Schema
from sse_daemon.connectors.sink import sink_for_bus
from sse_daemon.connectors.sink.durable import HistoryStore
from sse_daemon.policy.connections import LISTEN_BACKLOG

#: restart delays after a worker exits: doubling from the first, capped; reset by a worker that ran this long
RESTART_DELAY = 0.2
RESTART_DELAY_MAX = 10.0
STEADY_SECONDS = 30.0
#: a worker still running this long after drain.window is killed
STOP_GRACE = 10.0
#: a worker whose pipe stayed full this long, with subscriber.queue.bytes waiting for it, is killed
STALL_SECONDS = 5.0


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one port with SO_REUSEPORT, so the kernel spreads new
    connections evenly over the workers (one shared socket goes mostly to whichever worker wakes
    first: 80/20 in bench/). Without SO_REUSEPORT, one socket that every worker shares.

    A port another process listens on is refused first: SO_REUSEPORT alone would quietly share it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuseport = hasattr(socket, "SO_REUSEPORT")
    if reuseport and port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))  # raises EADDRINUSE when anyone listens there
    sockets: list[socket.socket] = []
    try:
        for _ in range(count if reuseport else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port the first one got
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _log_level() -> str:
    """The daemon's log level, for its workers to filter at (the daemon filters what they send again)."""
    from sse_daemon.ops.logs import LEVEL_ENV, _selected

    return _selected.get("level") or os.environ.get(LEVEL_ENV) or "info"


@implementer(IPushProducer)
class WorkerProcess(ProcessProtocol):
    """One worker: feeds its pipe, reads its reports and log lines, notices when it ends."""

    log = Logger()

    def __init__(self, pool: "SinkWorkers", index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.started_at = pool.clock.seconds()
        self.ended: Deferred = Deferred()
        self.figures: dict[str, Any] = {}
        self.behind = 0  # bytes written to the pipe while the worker was not reading it
        self.paused = False
        self.paused_at = 0.0
        #: killed for being behind: what is sent until it has ended would only kill and log it again
        self.killed = False
        self._lines = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.pid = transport.pid
        # a process transport is also the consumer of the worker's stdin pipe (IProcessTransport does not say so)
        cast(IConsumer, transport).registerProducer(self, True)  # tells us when the pipe backs up

    def send(self, message: bytes, live: bool = True) -> None:
        """Write to the worker's pipe; live events count against its bound, its start-up copy of the history does not."""
        if self.transport is None or self.ended.called or self.killed:
            return
        if self.paused and live:
            self.behind += len(message)
            # a burst fills the pipe too, but a reading worker drains it (resumeProducing) within the stall time
            if self.behind > self.pool.feed.queue_bytes and self.pool.clock.seconds() - self.paused_at > self.pool.stall_seconds:
                self.pool.counters["worker_kills_behind"] += 1
                self.log.warn("worker {worker} of sink {sink} (pid {pid}) is {behind} bytes behind: killed, to be restarted",
                              worker=self.index, sink=self.pool.feed.name, pid=self.pid, behind=self.behind)
                self.killed = True
                self.signal("KILL")
                return
        self.transport.write(message)

    def signal(self, name: str) -> None:
        try:
            if self.transport is not None:
                self.transport.signalProcess(name)
        except Exception:  # already gone: processEnded follows
            pass

    # IPushProducer, for the pipe to the worker
    def pauseProducing(self) -> None:
        self.paused = True
        self.paused_at = self.pool.clock.seconds()

    def resumeProducing(self) -> None:
        self.paused = False
        self.behind = 0

    def stopProducing(self) -> None:
        self.paused = True

    # what the worker writes
    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._lines:
            return
        *lines, self._lines[fd] = (self._lines[fd] + data).split(b"\n")
        for line in lines:
            if line.strip():
                (self._report if fd == 1 else self._log)(line)

    def retire(self) -> dict[str, Any]:
        """Its last figures, handed over once (the pool keeps totals of workers that ended)."""
        figures, self.figures = self.figures, {}
        return figures

    def _report(self, line: bytes) -> None:
        try:
            self.figures = json.loads(line)
        except ValueError:
            self.log.warn("worker {worker} of sink {sink} wrote an unreadable report: {line!r}",
                          worker=self.index, sink=self.pool.feed.name, line=line[:200])

    def _log(self, line: bytes) -> None:
        """A worker's log event, logged here with the worker's number (a traceback line as it is)."""
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            self.log.warn("worker {worker} of sink {sink}: {line}", worker=self.index, sink=self.pool.feed.name,
                          line=line.decode("utf-8", "replace"))
            return
        event.update(worker=self.index, worker_pid=self.pid, log_system=f"worker {self.index}")
        globalLogPublisher(event)

    def processEnded(self, reason: Any) -> None:
        for fd, rest in self._lines.items():
            if rest.strip():
                self.childDataReceived(fd, b"\n")
        self.ended.callback(reason.value)
        self.pool.worker_ended(self, reason.value)


@implementer(ISseSinkService, IReadiness, IOwnPort)
class SinkWorkers(Service):
    """The sink's port, its N worker processes and the daemon-side sink that feeds them."""

    log = Logger()

    def __init__(self, connector: ConnectorDef, mapper: IMapper, schema: Schema, bus: IBus, clock: IReactorTime,
                 reactor: Any, history_store: HistoryStore | None = None) -> None:
        #: the daemon's copy of the sink: maps, numbers and keeps the history of every event, and feeds the workers
        #: (on a shared bus, the bus's ids, as on every instance); with ``history_store`` (history.path) it
        #: starts from the file and commits to it, and the workers get what it loaded
        sink = self.feed = sink_for_bus(bus, connector.stream, connector, mapper, clock, turns=reactor, forward=self._forward,
                                        history_store=history_store)
        self.connector = connector
        self.schema = schema
        self.bus = bus
        self.reactor = reactor
        self.clock = clock
        self.count: int = sink.connector.options.worker_count
        #: the users, tokens and JWT key its auth options name, read once: every worker, one started again
        #: after the files changed too, checks these (only a restart changes such a sink; a reload refuses to)
        self.access = load_access(connector.options)
        self.log_level = _log_level()
        self.stall_seconds = STALL_SECONDS
        self.workers: list[WorkerProcess | None] = [None] * self.count
        self.counters: Counter[str] = Counter()
        #: figures of workers that have exited, so totals never go down
        self.retired: Counter[str] = Counter()
        self.retired_rejected: Counter[str] = Counter()
        #: the listening sockets, one per worker (or one shared by all without SO_REUSEPORT); kept across restarts
        self.sockets: list[socket.socket] = []
        self._failures = [0] * self.count
        self._restarts: dict[int, Any] = {}
        self._subscription: ISubscription | None = None
        self._stopping = False
        self.setName(f"sink:{sink.name}")
        #: what the status page and /metrics read (sink_figures)
        self.sink = PooledSinkFigures(self)

    # -- the port
    @property
    def bound_port(self) -> int:
        assert self.sockets, "not listening"
        return self.sockets[0].getsockname()[1]

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        host, port = self.connector.options.server_host, self.connector.options.server_port
        try:
            self.sockets = listening_sockets(host, port, self.count)
        except OSError as e:
            raise BindError(f"cannot listen on {host}:{port} for {self.connector.label}: {e.strerror or e}") from None
        self.log.info("listening on {host}:{port} for {connector} with {count} worker processes",
                      host=host, port=self.bound_port, connector=self.connector.label, count=self.count)

    # -- start and stop
    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        super().startService()
        self.feed.start_writing()
        self._subscription = self.bus.subscribe(self.connector.stream, self.feed.publish)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping or not self.sockets:
            return
        listening = self.sockets[index % len(self.sockets)]
        worker = WorkerProcess(self, index)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the daemon's own imports, also from a checkout
        try:
            self.reactor.spawnProcess(
                worker, sys.executable, [sys.executable, "-m", "sse_daemon.worker", self.log_level], env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
            )
        except OSError as e:  # out of processes or memory: try again later, as for a worker that died
            self._restart_later(index, 0.0, f"could not start: {e}")
            return
        self.workers[index] = worker
        history = self.feed.history
        show = history.show
        worker.send(channel.setup({
            "connector": self.connector, "schema": self.schema, "index": index, "family": listening.family,
            "access": self.access,
            "bus_ids": self.feed.bus_replay is not None,
            "floor": None if history.floor is None else show(history.floor),
            "newest": None if history.newest is None else show(history.newest),
        }), live=False)
        for event_id, frame, at in history.entries():
            worker.send(channel.history(show(event_id), frame, at), live=False)
        worker.send(channel.go(), live=False)
        self.log.info("started worker {worker} of sink {sink} (pid {pid})", worker=index, sink=self.feed.name, pid=worker.pid)

    def worker_ended(self, worker: WorkerProcess, reason: Any) -> None:
        self._retire(worker)
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        if self._stopping:
            return
        self._restart_later(worker.index, self.clock.seconds() - worker.started_at, f"pid {worker.pid} ended: {reason}")

    def _restart_later(self, index: int, ran: float, why: str) -> None:
        """Start worker ``index`` again: at once after a long run, then after growing delays."""
        self._failures[index] = 0 if ran >= STEADY_SECONDS else self._failures[index] + 1
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY * 2 ** max(0, self._failures[index] - 1)) if self._failures[index] else 0.0
        self.counters["worker_restarts"] += 1
        self.log.warn("worker {worker} of sink {sink} stopped after {ran:.1f}s ({why}); "
                      "starting it again in {delay:.1f}s; its subscribers reconnect and resume",
                      worker=index, sink=self.feed.name, ran=ran, why=why, delay=delay)
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def _retire(self, worker: WorkerProcess) -> None:
        figures = worker.retire()
        counters = Counter(figures.get("counters", {}))
        counters.pop("events_in", None)  # the daemon counts what comes in
        self.retired.update(counters)
        self.retired_rejected.update(figures.get("rejected", {}))

    def drain(self, io: Any = None) -> Deferred:
        """Ask every worker to drain its subscribers (drain.window) and exit; kill any that do not."""
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        running = [w for w in self.workers if w is not None and not w.ended.called]
        grace = self.connector.options.drain_window + STOP_GRACE
        for worker in running:
            worker.signal("TERM")
            kill = self.reactor.callLater(grace, worker.signal, "KILL")
            worker.ended.addBoth(_cancel, kill)
        return DeferredList([w.ended for w in running], consumeErrors=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        written = self.feed.stop_writing()  # this turn's events to the workers and the history file
        done = self.drain() if any(w is not None for w in self.workers) else succeed(None)

        def close(_: object) -> Deferred:
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            return written
        return done.addBoth(close)

    # -- events
    def _forward(self, id_text: str | None, frame: bytes) -> None:
        message = channel.event(id_text, frame)
        for worker in self.workers:
            if worker is not None:
                worker.send(message)

    def readiness(self) -> str:
        """For /readyz: "ok" when every worker serves (has reported); connections the kernel
        hands to a missing worker's socket wait until it is back."""
        serving = sum(1 for w in self.workers if w is not None and w.figures and not w.ended.called)
        return "ok" if serving == self.count else f"{serving} of {self.count} worker processes serving"

    def pids(self) -> list[int | None]:
        return [None if w is None else w.pid for w in self.workers]


def _cancel(_: object, call: IDelayedCall) -> None:
    if call.active():
        call.cancel()


@implementer(ISubscriberSink)
class PooledSinkFigures:
    """What the daemon shows of a sink its workers serve: its own history and events in,
    the workers' subscribers and deliveries (as last reported, about once a second)."""

    def __init__(self, pool: SinkWorkers) -> None:
        self.pool = pool
        self.connector = pool.connector
        self.name = pool.feed.name
        self.lag_observer = None  # not measured across processes

    @property
    def history(self) -> Any:
        return self.pool.feed.history

    @property
    def subscribers(self) -> range:
        """Only its length means anything: the subscribers the workers last reported."""
        return range(sum(w.figures.get("subscribers", 0) for w in self.pool.workers if w is not None))

    @property
    def counters(self) -> Counter[str]:
        total = Counter(self.pool.feed.counters) + self.pool.retired + self.pool.counters
        for worker in self.pool.workers:
            if worker is not None:
                reported = Counter(worker.figures.get("counters", {}))
                reported.pop("events_in", None)
                total.update(reported)
        return total

    @property
    def rejected(self) -> Counter[str]:
        total = Counter(self.pool.retired_rejected)
        for worker in self.pool.workers:
            if worker is not None:
                total.update(worker.figures.get("rejected", {}))
        return total
