"""A durable sink's group commits, on fakes (no thread, no file): events are held until their
commit, a commit under way makes later events wait for the next one, and a refused batch is
neither kept nor sent. The real file and thread are tested in test_history_file.py."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sse_daemon.bus.memory import MemoryBus
from sse_daemon.connectors.sink.durable import DurableHistory
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable
from sse_daemon.events.schema import Event


class FakeFile:
    path = "fake.sqlite3"

    def commit(self, entries: Any, floor: Any) -> None:
        raise AssertionError("runs on the store's thread, which this fake replaces")


class FakeStore:
    """A HistoryStore whose commits wait until the test finishes them."""

    def __init__(self) -> None:
        self.reactor = Clock()
        self.file = FakeFile()
        self.path = self.file.path
        self.writer: DurableHistory | None = None
        self.commits: list[tuple[list[int], Deferred]] = []

    def run(self, work: Callable[..., Any], entries: list[tuple[int, float, bytes]], floor: Any) -> Deferred:
        done: Deferred = Deferred()
        self.commits.append(([event_id for event_id, _, _ in entries], done))
        return done


def durable() -> tuple[FakeStore, DurableHistory, list[int], Counter[str]]:
    store = FakeStore()
    kept: list[int] = []
    counters: Counter[str] = Counter()
    history = DurableHistory(store, "S", counters, lambda entries: kept.extend(i for i, _, _, _ in entries))
    store.writer = history
    return store, history, kept, counters


def outcome(d: Deferred) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_a_turns_events_share_one_commit_and_later_ones_wait_for_the_next() -> None:
    store, history, kept, _ = durable()
    first = [history.add(i, 0.0, b"f", None) for i in (1, 2)]
    assert first[0] is first[1], "one Deferred for the whole batch"
    store.reactor.advance(0)  # the end of the turn
    assert [ids for ids, _ in store.commits] == [[1, 2]] and kept == []
    second = history.add(3, 0.0, b"f", None)
    store.reactor.advance(0)
    history.add(4, 0.0, b"f", None)
    store.reactor.advance(0)
    assert len(store.commits) == 1, "no second commit while the first is under way"
    seen_first, seen_second = outcome(first[0]), outcome(second)
    store.commits[0][1].callback(None)
    assert kept == [1, 2] and seen_first == [None] and seen_second == []
    assert [ids for ids, _ in store.commits[1:]] == [[3, 4]], "what waited goes in one commit"
    store.commits[1][1].callback(None)
    assert kept == [1, 2, 3, 4] and seen_second == [None]


def test_a_refused_batch_is_not_kept_and_the_next_one_goes_on() -> None:
    store, history, kept, counters = durable()
    refused = history.add(1, 0.0, b"f", None)
    store.reactor.advance(0)
    seen = outcome(refused)
    store.commits[0][1].errback(HistoryUnavailable("disk full"))
    assert kept == [] and counters["history_commit_failures"] == 1
    (failure,) = seen
    assert failure.check(HistoryUnavailable)
    history.add(2, 0.0, b"f", None)
    store.reactor.advance(0)
    store.commits[1][1].callback(None)
    assert kept == [2]


def test_settled_waits_for_every_held_event() -> None:
    store, history, kept, _ = durable()
    history.add(1, 0.0, b"f", None)
    store.reactor.advance(0)
    history.add(2, 0.0, b"f", None)  # held: the first commit is under way
    settled = outcome(history.settled())
    store.commits[0][1].callback(None)
    assert settled == [] and [ids for ids, _ in store.commits[1:]] == [[2]]
    store.commits[1][1].callback(None)
    assert settled == [None] and kept == [1, 2]


def test_several_publishes_wait_on_one_batch_and_each_sees_its_outcome() -> None:
    store, history, _, _ = durable()
    bus = MemoryBus()
    bus.subscribe("s", lambda events: [history.add(int(event.values["n"]), 0.0, b"f", None) for event in events][-1])
    one = outcome(bus.publish("s", [Event({"n": 1}), Event({"n": 2})]))
    two = outcome(bus.publish("s", [Event({"n": 3})]))
    store.reactor.advance(0)
    store.commits[0][1].errback(HistoryUnavailable("disk full"))
    assert [o.check(HistoryUnavailable) for o in (*one, *two)] == [HistoryUnavailable, HistoryUnavailable]


def test_a_bug_handing_committed_events_on_still_answers_their_publishers(log_events) -> None:
    """The events are in the file; their publishers must not wait for ever because the hand-off raised (a bug,
    logged sampled), and the next batch goes on."""
    store = FakeStore()
    calls: list[list[int]] = []

    def hand_on(entries: Any) -> None:
        calls.append([i for i, _, _, _ in entries])
        if len(calls) == 1:
            raise RuntimeError("a bug")

    counters: Counter[str] = Counter()
    history = DurableHistory(store, "S", counters, hand_on)
    store.writer = history
    first = outcome(history.add(1, 0.0, b"f", None))
    store.reactor.advance(0)
    store.commits[0][1].callback(None)
    assert first == [None], "answered: the events are committed"
    assert counters["internal_errors"] == 1
    assert [e for e in log_events if "handing" in e.get("log_format", "")]
    second = outcome(history.add(2, 0.0, b"f", None))
    store.reactor.advance(0)
    store.commits[1][1].callback(None)
    assert second == [None] and calls == [[1], [2]]
