"""A sink's history kept in a file (``history.path``): acknowledged means durable.

The file (historyfile.py) is used from one dedicated thread per file
(:class:`HistoryStore`), so the reactor never waits on the disk. A sink with a
file (:class:`DurableHistory`) starts from what the file holds (its ids go on
above the newest there), and writes each reactor turn's events in one commit
(or, while a commit is under way, everything that arrives meanwhile in the next):
every publish of those events gets a Deferred that fires once the commit is done,
and fails with :class:`~sse_daemon.connectors.sink.historyfile.HistoryUnavailable`
when it failed (the bus fails the publish with it: ingest answers 503,
``history-unavailable``). The next commit that succeeds recovers; nothing is
retried by the daemon (the publisher retries).

An event is kept in the sink's memory history and sent to its subscribers (and
its workers) only once its commit is done: one whose commit failed reaches no
one, so its publisher, told 503, may send it again without anyone seeing it
twice. Subscribers get events one commit later than without a file; fan-out
itself is unchanged (frames are still encoded once and written per turn).

One store per path in the process (:class:`HistoryFiles`): a sink restarted by
a reload with the same ``history.path`` shares its predecessor's store, takes
over as its only writer when it starts (the old one, draining, writes no more)
and first copies what the old one kept meanwhile and what it still holds for its
commit (the old one commits those and answers their publishers).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from sse_daemon.config.options import SseServerOptions
from sse_daemon.connectors.history import History
from sse_daemon.connectors.sink.historyfile import HistoryCorrupt, HistoryFile, HistoryUnavailable, Tail, move_aside
from sse_daemon.policy.limits import should_log

__all__ = ["DurableHistory", "HistoryFiles", "HistoryRefused", "HistoryStore"]

log = Logger()


class HistoryRefused(Exception):
    """A history file is corrupt and ``history.on.corrupt`` is ``refuse``: the daemon does not start."""


class HistoryStore:
    """One history file open in this process: its dedicated thread, its users and its writer."""

    def __init__(self, file: HistoryFile, reactor: Any, tail: Tail) -> None:
        self.file = file
        self.path = file.path
        self.reactor = reactor
        #: what the file held when it was opened (the first sink starts from it)
        self.tail = tail
        self.pool = ThreadPool(1, 1, name=f"history {file.path}")
        self.users = 0
        #: the one sink that commits to the file now (a restarted sink takes over from its predecessor)
        self.writer: DurableHistory | None = None
        self._closed: Deferred | None = None

    def run(self, work: Callable[..., Any], *args: Any) -> Deferred:
        """``work(*args)`` on the file's thread, in order with everything else run there."""
        if not self.pool.started:
            self.pool.start()
        return deferToThreadPool(self.reactor, self.pool, work, *args)

    def release(self) -> Deferred:
        """One user fewer; the last closes the file (after every commit queued) and stops the thread."""
        self.users -= 1
        if self.users > 0:
            return succeed(None)
        if not self.pool.started:  # never committed: no thread uses the file
            self.file.close()
            return succeed(None)
        done = self.run(self.file.close)

        def stop(result: object) -> object:
            if self.pool.started:
                self.pool.stop()
            return result
        return done.addBoth(stop)


class HistoryFiles:
    """The history files this process has open, one :class:`HistoryStore` per path."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stores: dict[str, HistoryStore] = {}
        #: files a reload opened off the reactor (:meth:`prepare`), for :meth:`acquire` to take
        self.prepared: dict[str, tuple[HistoryFile, Tail]] = {}

    def _open_now(self, path: str) -> bool:
        store = self.stores.get(path)
        return store is not None and store.users > 0

    async def _prepare(self, options: list[SseServerOptions], now: float) -> None:
        pool = self.reactor.getThreadPool()
        for each in options:
            path = each.history_path
            assert path is not None
            if self._open_now(path) or path in self.prepared:
                continue
            self.prepared[path] = await deferToThreadPool(self.reactor, pool, self._open, each, now)

    def prepare(self, options: list[SseServerOptions], now: float) -> Deferred:
        """Open the files of ``options`` that this process has not got open, on the reactor's thread
        pool: a reload opens them so, and its staging then takes them from here. A corrupt file fails
        it with :class:`HistoryRefused` (or is moved aside there), as :meth:`acquire` would."""
        return Deferred.fromCoroutine(self._prepare(options, now))

    def discard_prepared(self) -> None:
        """Close the files prepared and not taken (the reload that prepared them was rejected)."""
        for file, _ in self.prepared.values():
            file.close()
        self.prepared.clear()

    def acquire(self, options: SseServerOptions, now: float) -> HistoryStore:
        """The store of ``options.history_path``; opened now if this process has not got it open nor
        prepared it (at start-up, before the reactor serves anyone). A corrupt file is refused
        (:class:`HistoryRefused`) or moved aside, as ``history.on.corrupt`` says."""
        path = options.history_path
        assert path is not None, "a sink without history.path keeps its history in memory"
        store = self.stores.get(path)
        if store is None or store.users <= 0:
            prepared = self.prepared.pop(path, None)
            file, tail = prepared if prepared is not None else self._open(options, now)
            store = self.stores[path] = HistoryStore(file, self.reactor, tail)
            log.info("history file {path} opened: {count} events, resume from id {floor}",
                     path=path, count=len(store.tail.entries), floor=store.tail.floor)
        store.users += 1
        return store

    def _open(self, options: SseServerOptions, now: float) -> tuple[HistoryFile, Tail]:
        path = options.history_path
        assert path is not None
        file = HistoryFile(path)
        try:
            file.open()
        except HistoryCorrupt as e:
            if options.history_on_corrupt != "move-aside":
                raise HistoryRefused(f"{e}; set history.on.corrupt: move-aside to start with an empty history "
                                     "(the file is kept, renamed), or move it away yourself") from None
            aside = move_aside(path, now)
            log.warn("{error}: moved aside to {aside} (history.on.corrupt: move-aside); the sink starts with an empty history",
                     error=str(e), aside=aside)
            file.open()
        return file, file.load(options.history_size, options.history_max_age, options.history_max_bytes, now)


class DurableHistory:
    """A sink's side of its history file: its start, and its group commits.

    Events are held until their commit: one per reactor turn, or, while a commit is under
    way, one for everything that arrived meanwhile. ``on_committed`` then gets them (the sink
    keeps and sends them); a refused batch is not kept nor sent, its publishers get 503."""

    def __init__(self, store: HistoryStore, name: str, counters: Counter[str],
                 on_committed: Callable[[list[tuple[int, float, bytes, float | None]]], None]) -> None:
        self.store = store
        self.name = name
        self.counters = counters
        #: events waiting for their commit: (id, at, frame, ingress)
        self.pending: list[tuple[int, float, bytes, float | None]] = []
        self.history: History | None = None
        #: called with a batch's events once they are in the file: the sink keeps and sends them then
        self.on_committed = on_committed
        self._batch: Deferred | None = None  # the pending batch's Deferred
        self._writing: Deferred | None = None  # the commit under way
        self._writing_entries: list[tuple[int, float, bytes, float | None]] = []  # and its events
        self._turn: Any = None  # the call that commits at the end of this reactor turn
        self._failing = 0

    def start_history(self, options: SseServerOptions, clock: IReactorTime) -> History:
        """The in-memory history this sink starts with: the current writer's (a sink restarted by a
        reload), or the file's tail, under this sink's bounds."""
        previous = self.store.writer
        if previous is not None and previous.history is not None:
            entries: list[tuple[Any, float, bytes]] = [(i, at, frame) for i, frame, at in previous.history.entries()]
            floor, newest = previous.history.floor, previous.history.newest
        else:
            tail = self.store.tail
            entries, floor, newest = list(tail.entries), tail.floor, tail.newest
        start = floor if floor is not None else int(clock.seconds() * 1_000_000)
        history = History(options.history_size, clock.seconds, start, options.history_max_age, options.history_max_bytes,
                          newest=max(newest, start) if newest is not None else None)
        for event_id, at, frame in entries:
            history.append(event_id, frame, at)
        self.history = history
        return history

    def take_over(self) -> list[tuple[Any, bytes, float]]:
        """Become the file's only writer. What the previous writer kept after this history was
        copied from it (a reload's turns in between) is returned, for the sink to keep too."""
        previous, self.store.writer = self.store.writer, self
        if previous is None or previous is self or previous.history is None or self.history is None:
            return []
        newest = self.history.newest
        kept = [entry for entry in previous.history.entries() if newest is None or entry[0] > newest]
        # held by the previous writer for its commit (it still commits them, and answers their publishers)
        held = [(i, frame, at) for i, at, frame, _ in (*previous._writing_entries, *previous.pending)
                if newest is None or i > newest]
        return kept + held

    @property
    def writing(self) -> bool:
        return self.store.writer is self

    def add(self, event_id: int, frame: bytes, at: float, ingress: float | None) -> Deferred:
        """Hold an event until it is committed: the Deferred of its batch (the same object for every
        event of the batch), which fires once the batch is in the file and fails with
        HistoryUnavailable when it could not be written. Only the writer adds (see ``writing``)."""
        self.pending.append((event_id, at, frame, ingress))
        if self._batch is None:
            self._batch = Deferred()
        if self._turn is None:  # one commit for all of this turn's events, at its end
            self._turn = self.store.reactor.callLater(0, self._end_of_turn)
        return self._batch

    def _end_of_turn(self) -> None:
        self._turn = None
        self.commit()

    def settled(self) -> Deferred:
        """Fires once every event held has been committed (or refused)."""
        self.commit()
        if self._writing is None:
            return succeed(None)
        done: Deferred = Deferred()

        def again(result: object) -> object:
            self.settled().chainDeferred(done)
            return result
        self._writing.addBoth(again)
        return done

    def commit(self) -> None:
        """Write what is pending in one transaction on the file's thread, unless a commit is under
        way: then what arrives meanwhile waits and goes in the next one (group commit: the busier
        the sink, the more events share a transaction)."""
        if self._writing is not None or not self.pending:
            return
        entries, self.pending = self.pending, []
        self._writing_entries = entries
        batch, self._batch = self._batch, None
        floor = self.history.floor if self.history is not None else None
        self._writing = self.store.run(self.store.file.commit, [(i, at, frame) for i, at, frame, _ in entries], floor)
        self._writing.addCallbacks(self._committed, self._failed, (entries, batch), errbackArgs=(entries, batch))
        self._writing.addBoth(self._next)

    def _next(self, _: object) -> None:
        self._writing = None
        self._writing_entries = []
        self.commit()

    def _committed(self, _: object, entries: list[tuple[int, float, bytes, float | None]], batch: Deferred | None) -> None:
        if self._failing:
            log.info("history file {path} of sink {sink} takes events again (after {count} failed commits)",
                     path=self.store.path, sink=self.name, count=self._failing)
            self._failing = 0
        try:
            self.on_committed(entries)
        except Exception:  # a bug: the events are in the file (a resume gets them); their publishers must not wait for ever
            self.counters["internal_errors"] += 1
            if should_log(self.counters["internal_errors"]):
                log.failure("sink {sink}: handing {count} committed events on failed ({errors} so far)", sink=self.name,
                            count=len(entries), errors=self.counters["internal_errors"])
        if batch is not None:
            batch.callback(None)

    def _failed(self, failure: Failure, entries: list[tuple[int, float, bytes, float | None]], batch: Deferred | None) -> None:
        self.counters["history_commit_failures"] += 1
        self._failing += 1
        error = failure.value if isinstance(failure.value, HistoryUnavailable) else HistoryUnavailable(
            f"history file {self.store.path}: {failure.getErrorMessage()}")
        if should_log(self.counters["history_commit_failures"]):
            log.warn("sink {sink} could not save {count} events: {error}; their publishers are answered 503 and "
                     "no subscriber gets them ({failures} failed commits so far)", sink=self.name, count=len(entries),
                     error=str(error), failures=self.counters["history_commit_failures"])
        if batch is not None:
            batch.errback(Failure(error))
            batch.addErrback(lambda _: None)  # every publish waiting on it has seen the failure by now
