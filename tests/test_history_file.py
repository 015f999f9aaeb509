"""history.path: a sink's history in a file (SQLite), acknowledged means durable, resume across restarts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Sequence

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from sse_daemon.config.load import load_files
from sse_daemon.connectors.sink.historyfile import HistoryCorrupt, HistoryFile, HistoryUnavailable, check_file, move_aside
from sse_daemon.daemon.service import build_service
from sse_daemon.events.schema import Event

from .conftest import deadline, subscribe, wait_for, write_config
from .test_resume import head, numbers, parsed

# --------------------------------------------------------------------------- the store, on its own


def frames(n: int) -> list[tuple[int, float, bytes]]:
    return [(i, 1000.0 + i, b"frame%d" % i) for i in range(1, n + 1)]


@pytest.mark.reactor_free
def test_a_new_file_holds_nothing_and_has_no_floor(tmp_path: Path) -> None:
    store = HistoryFile(str(tmp_path / "h.db"))
    store.open()
    tail = store.load(10, 0, 0, now=2000.0)
    assert tail.entries == () and tail.floor is None and tail.newest is None
    assert store.connection is not None and store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


@pytest.mark.reactor_free
def test_commits_survive_a_reopen_with_the_floor_and_the_newest_id(tmp_path: Path) -> None:
    path = str(tmp_path / "h.db")
    store = HistoryFile(path)
    store.open()
    store.load(10, 0, 0, now=2000.0)
    store.commit(frames(3), floor=0)
    store.commit([(4, 1004.0, b"frame4")], floor=1)  # the bounds evicted 1
    store.close()
    again = HistoryFile(path)
    again.open()
    tail = again.load(10, 0, 0, now=2000.0)
    assert [e[0] for e in tail.entries] == [2, 3, 4] and tail.floor == 1 and tail.newest == 4
    assert tail.entries[0] == (2, 1002.0, b"frame2")
    again.close()


@pytest.mark.reactor_free
def test_the_newest_id_survives_a_commit_that_evicts_every_event(tmp_path: Path) -> None:
    """Commits write the newest id to the meta table only with a deletion; a deletion that empties
    the events table must still leave it, or ids would start again below what subscribers hold."""
    path = str(tmp_path / "h.db")
    store = HistoryFile(path)
    store.open()
    store.load(10, 0, 0, now=2000.0)
    store.commit(frames(3), floor=0)  # the first commit sets the floor (and the newest with it)
    store.commit([(4, 1004.0, b"frame4"), (5, 1005.0, b"frame5")], floor=0)
    assert store.connection is not None
    assert store.connection.execute("SELECT value FROM meta WHERE key = 'newest'").fetchone() == (3,), \
        "a commit without a deletion leaves the newest id to the events table"
    store.commit([], floor=5)  # the bounds evicted all five
    store.close()
    again = HistoryFile(path)
    again.open()
    tail = again.load(10, 0, 0, now=2000.0)
    assert tail.entries == () and tail.floor == 5 and tail.newest == 5
    again.close()


@pytest.mark.reactor_free
@pytest.mark.parametrize(("size", "max_age", "max_bytes", "kept", "floor"), [
    (3, 0, 0, [4, 5, 6], 3),  # count
    (10, 0, 12, [5, 6], 4),  # bytes: 6 each
    (10, 996.5, 0, [4, 5, 6], 3),  # age: at 2000, 1-3 (arrived at 1001-1003) are older than 996.5 s
    (0, 0, 0, [], 6),  # size 0 keeps nothing, but still knows the newest
])
def test_loading_applies_the_bounds_on_disk_too(tmp_path: Path, size: int, max_age: float, max_bytes: int,
                                                kept: list[int], floor: int) -> None:
    path = str(tmp_path / "h.db")
    store = HistoryFile(path)
    store.open()
    store.commit(frames(6), floor=0)
    tail = store.load(size, max_age, max_bytes, now=2000.0)
    assert [e[0] for e in tail.entries] == kept and tail.floor == floor and tail.newest == 6
    rows = [r[0] for r in store.connection.execute("SELECT id FROM events ORDER BY id")]  # type: ignore[union-attr]
    assert rows == kept, "what lies outside the bounds is deleted from the file"
    store.close()


@pytest.mark.reactor_free
def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"this is not SQLite at all\n" * 200)
    with pytest.raises(HistoryCorrupt, match=str(path)):
        HistoryFile(str(path)).open()
    assert check_file(str(path)) is not None and str(path) in (check_file(str(path)) or "")


@pytest.mark.reactor_free
def test_another_sqlite_database_is_not_taken_for_a_history(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (name TEXT)")
    with pytest.raises(HistoryCorrupt, match="not a sink's history"):
        HistoryFile(str(path)).open()
    assert "not a sink's history" in (check_file(str(path)) or "")


@pytest.mark.reactor_free
def test_check_file_names_a_missing_or_unwritable_directory(tmp_path: Path) -> None:
    assert check_file(str(tmp_path / "new.db")) is None, "a file not there yet is fine: it is created"
    assert "does not exist" in (check_file(str(tmp_path / "nowhere" / "h.db")) or "")


@pytest.mark.reactor_free
def test_move_aside_renames_the_file_and_its_companions(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"junk")
    (tmp_path / "h.db-wal").write_bytes(b"wal")
    aside = move_aside(str(path), now=0)
    assert aside == f"{path}.corrupt-19700101T000000Z"
    assert not path.exists() and Path(aside).read_bytes() == b"junk" and Path(aside + "-wal").read_bytes() == b"wal"


@pytest.mark.reactor_free
def test_a_full_disk_is_unavailable_and_the_next_commit_recovers(tmp_path: Path) -> None:
    store = HistoryFile(str(tmp_path / "h.db"))
    store.open()
    store.commit(frames(2), floor=0)
    db = store.connection
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full: not one page more
    big = [(i, 1000.0, b"x" * 8192) for i in range(3, 10)]
    with pytest.raises(HistoryUnavailable) as raised:
        store.commit(big, floor=0)
    assert not isinstance(raised.value, HistoryCorrupt) and "full" in str(raised.value)
    assert [r[0] for r in db.execute("SELECT id FROM events")] == [1, 2], "nothing of the failed commit is kept"
    db.execute(f"PRAGMA max_page_count = {pages + 100}")  # space returns
    store.commit(big[:1], floor=0)
    assert [r[0] for r in db.execute("SELECT id FROM events")] == [1, 2, 3]
    store.close()


@pytest.mark.reactor_free
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_under_the_daemon_takes_no_more_events(tmp_path: Path, how: str) -> None:
    """SQLite goes on writing to a deleted (or renamed over) file's inode: commits would succeed, their publishers
    be told 200, and the next start find none of them. Such a commit is refused instead (the publishers get 503)."""
    path = tmp_path / "h.db"
    store = HistoryFile(str(path))
    store.open()
    store.commit(frames(2), floor=0)
    if how == "deleted":
        path.unlink()
    else:
        other = HistoryFile(str(tmp_path / "other.db"))
        other.open()
        other.close()
        (tmp_path / "other.db").replace(path)
    with pytest.raises(HistoryUnavailable, match="deleted or replaced"):
        store.commit([(3, 1003.0, b"frame3")], floor=0)
    store.close()


# --------------------------------------------------------------------------- a daemon, in process

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    retry.max: 0
    history.path: {path}
    {extra}
"""


def config_text(path: Path, **extra: object) -> str:
    return SINK.format(path=path, extra="\n    ".join(f"{k}: {v}" for k, v in extra.items()))


async def start(tmp_path: Path, text: str):
    config = load_files([str(write_config(tmp_path, text))])
    service = build_service(config, reactor)
    service.privilegedStartService()
    service.startService()
    return service


async def stop(service) -> None:
    await deadline(defer.maybeDeferred(service.stopService))


def stored_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT id FROM events ORDER BY id")]


@pytest_twisted.ensureDeferred
async def test_a_publish_is_acknowledged_once_it_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = await start(tmp_path, config_text(path))
    try:
        published = service.bus.publish("Events", [Event({"n": n}) for n in (1, 2, 3)])
        assert not published.called, "the commit runs on the file's thread: not acknowledged yet"
        await deadline(published)
        assert len(stored_ids(path)) == 3, "acknowledged means in the file"
    finally:
        await stop(service)


@pytest_twisted.ensureDeferred
async def test_after_a_restart_a_client_resumes_with_exactly_what_it_missed(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = await start(tmp_path, config_text(path))
    await deadline(first.bus.publish("Events", [Event({"n": n}) for n in (1, 2, 3)]))
    seen = await subscribe(first.port_of("Events"))
    await deadline(first.bus.publish("Events", [Event({"n": 4})]))
    await wait_for(lambda: numbers(parsed(bytes(seen.received))) == [4], what="event 4 live")
    last_id = parsed(bytes(seen.received))[-1].id
    await deadline(first.bus.publish("Events", [Event({"n": n}) for n in (5, 6)]))
    await seen.close()
    await stop(first)

    second = await start(tmp_path, config_text(path))
    try:
        newest = max(stored_ids(path))
        assert second.sinks["Events"].sink.ids.next() > newest, "ids go on above the file's"
        client = await subscribe(second.port_of("Events"), headers=f"Last-Event-ID: {last_id}\r\n")
        await wait_for(lambda: len(numbers(parsed(bytes(client.received)))) >= 2, what="the missed events")
        messages = parsed(bytes(client.received))
        assert [m.event for m in messages] == ["message", "message"], "no reset event"
        assert numbers(messages) == [5, 6]
        assert head(bytes(client.received))["sse-replay-from"] == last_id
        await client.close()
    finally:
        await stop(second)


@pytest_twisted.ensureDeferred
async def test_an_id_from_before_the_file_began_gets_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    service = await start(tmp_path, config_text(path))
    try:
        await deadline(service.bus.publish("Events", [Event({"n": 1})]))
        client = await subscribe(service.port_of("Events"), headers="Last-Event-ID: 5\r\n")
        await wait_for(lambda: len(parsed(bytes(client.received))) >= 2, what="reset and the event")
        messages = parsed(bytes(client.received))
        assert messages[0].event == "reset" and json.loads(messages[0].data)["reason"] == "too-old"
        await client.close()
    finally:
        await stop(service)


# --------------------------------------------------------------------------- ingest: 200 after the commit, 503 when it fails

INGEST = """\
streams:
  Readings: "n int"
  Narrow: "n int"
sources:
  In:
    type: http
    stream: Readings
    receiver.url: http://127.0.0.1:0/publish
sinks:
  Live:
    type: sse-server
    stream: Readings
    server.host: 127.0.0.1
    server.port: 0
    history.path: {live}
  Routed:
    type: sse-server
    stream: Narrow
    server.host: 127.0.0.1
    server.port: 0
    history.path: {routed}
routes:
  - {{from: Readings, to: Narrow}}
"""


def fill_disk(service, path: Path, full: bool) -> None:
    """The file's disk is full (not one page more), or has room again: set on the file's own thread's connection."""
    store = service.builder.history_files.stores[str(path)]
    connection = store.file.connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages if full else pages + 10_000}")


@pytest_twisted.ensureDeferred
async def test_ingest_answers_200_once_committed_and_503_while_the_disk_is_full(tmp_path: Path, log_events) -> None:
    from .test_ingest import post

    live, routed = tmp_path / "live.db", tmp_path / "routed.db"
    service = await start(tmp_path, INGEST.format(live=live, routed=routed))
    try:
        port = service.port_of("In")
        code, body = await post(port, json.dumps([{"n": 1}, {"n": 2}]).encode())
        assert (code, body) == (200, {"accepted": 2})
        assert len(stored_ids(live)) == 2 and len(stored_ids(routed)) == 2, "a 200: in both files, the routed one too"

        fill_disk(service, routed, full=True)  # the route's target cannot commit: the original publish fails too
        big = json.dumps([{"n": 1000 + i} for i in range(300)]).encode()
        code, body = await post(port, big)
        assert code == 503 and body["reason"] == "history-unavailable", body
        assert service.sources["In"].rejected["history-unavailable"] == 1
        assert service.sinks["Routed"].sink.counters["history_commit_failures"] == 1
        assert service.routes[0].rejected["history-unavailable"] == 300, "counted by event, as every route rejection"
        assert any("could not save" in (e.get("log_format") or "") for e in log_events)

        fill_disk(service, routed, full=False)  # space returns: the next commit recovers
        code, body = await post(port, json.dumps([{"n": 3}]).encode())
        assert (code, body) == (200, {"accepted": 1})
        assert len(stored_ids(routed)) == 3, "the failed turn is not in the file; the next one is"
        assert any("takes events again" in (e.get("log_format") or "") for e in log_events)
    finally:
        await stop(service)


# --------------------------------------------------------------------------- a corrupt file at start


def test_a_corrupt_file_with_refuse_stops_the_start_naming_file_and_option(tmp_path: Path) -> None:
    from sse_daemon.connectors.sink.durable import HistoryRefused

    path = tmp_path / "events.db"
    path.write_bytes(b"garbage" * 1000)
    config = load_files([str(write_config(tmp_path, config_text(path)))])
    with pytest.raises(HistoryRefused) as refused:
        build_service(config, reactor)
    assert str(path) in str(refused.value) and "history.on.corrupt" in str(refused.value)
    assert path.read_bytes() == b"garbage" * 1000, "refuse leaves the file as it is"


def test_a_file_that_cannot_be_opened_stops_the_start_with_one_line(tmp_path: Path) -> None:
    """Seen: a full disk at start (here a file size limit of 0) passed --check, and the start ended in a
    HistoryUnavailable traceback."""
    import resource
    import subprocess

    from .conftest import twistd_command

    path = tmp_path / "events.db"
    config = write_config(tmp_path, config_text(path))
    result = subprocess.run(twistd_command("-n", "--pidfile=", "sse-daemon", "--config", str(config)), capture_output=True,
                            text=True, timeout=60, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY)))
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert f"history file {path}: cannot read: disk I/O error" in output


@pytest_twisted.ensureDeferred
async def test_a_corrupt_file_with_move_aside_is_renamed_and_the_sink_starts_empty(tmp_path: Path, log_events) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"garbage" * 1000)
    service = await start(tmp_path, config_text(path, **{"history.on.corrupt": "move-aside"}))
    try:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("events.db.corrupt-")]
        assert len(aside) == 1 and aside[0].read_bytes() == b"garbage" * 1000
        assert any("moved aside" in (e.get("log_format") or "") for e in log_events)
        await deadline(service.bus.publish("Events", [Event({"n": 1})]))
        assert len(stored_ids(path)) == 1
    finally:
        await stop(service)


# --------------------------------------------------------------------------- worker processes

WORKERS = """\
sinks:
  S: {{type: sse-server, stream: S, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: /events,
      worker.count: 2, history.size: 100, drain.window: 0.2, history.path: {path}}}
"""


@pytest_twisted.ensureDeferred
async def test_workers_resume_from_the_history_the_daemon_loaded(tmp_path: Path) -> None:
    from .test_sink import messages
    from .test_workers import numbers as worker_numbers, started

    path = tmp_path / "events.db"
    first = await start(tmp_path, WORKERS.format(path=path))
    try:
        await started(first)
        await deadline(first.bus.publish("S", [Event({"n": n}) for n in (1, 2, 3)]))
    finally:
        await stop(first)
    ids = stored_ids(path)
    assert len(ids) == 3

    second = await start(tmp_path, WORKERS.format(path=path))
    try:
        await started(second)
        client = await subscribe(second.port_of("S"), headers=f"Last-Event-ID: {ids[0]}\r\n")  # lands on either worker
        await wait_for(lambda: worker_numbers(client) == [2, 3], what="the replay from the loaded history")
        assert all(m.event == "message" for m in messages(bytes(client.received))), "an exact resume: no reset event"
        await client.close()
    finally:
        await stop(second)


# --------------------------------------------------------------------------- reload

RELOAD = """\
sinks:
  Events: {{type: sse-server, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: events,
           retry.max: 0, drain.window: 0, heartbeat.interval: {beat}, history.path: {path}}}
"""


@pytest_twisted.ensureDeferred
async def test_a_reload_keeps_or_continues_the_file_and_says_so(tmp_path: Path, log_events) -> None:
    from twisted.logger import formatEvent

    from sse_daemon.daemon.reload import Reloader

    path, other = tmp_path / "events.db", tmp_path / "other.db"
    config = write_config(tmp_path, RELOAD.format(beat=15, path=path))
    service = await start(tmp_path, RELOAD.format(beat=15, path=path))
    reloader = Reloader(service, [str(config)])

    def said(text: str) -> bool:
        return any(text in (formatEvent(e) or "") for e in log_events)

    try:
        await deadline(service.bus.publish("Events", [Event({"n": 1})]))
        old_sink = service.sinks["Events"].sink
        assert await deadline(reloader.reload())  # nothing changed: kept, same file open
        assert service.sinks["Events"].sink is old_sink

        write_config(tmp_path, RELOAD.format(beat=30, path=path))  # restarted, same file
        assert await deadline(reloader.reload())
        assert said(f"the same history file {path}: the file is kept")
        new_sink = service.sinks["Events"].sink
        assert new_sink is not old_sink and len(service.builder.history_files.stores) == 1
        assert not old_sink.durable.writing and new_sink.durable.writing, "one writer: the new sink"
        published = service.bus.publish("Events", [Event({"n": 2})])  # both sinks may still get it; one commits it
        await deadline(published)
        assert len(stored_ids(path)) == 2, "the new sink continues the file; no event twice"
        assert new_sink.history.resume(str(stored_ids(path)[0])).reset is None, "it holds what the old one had"

        write_config(tmp_path, RELOAD.format(beat=30, path=other))  # another file: the old one is left alone
        assert await deadline(reloader.reload())
        assert said(f"its old history file {path} is left as it is")
        await deadline(service.bus.publish("Events", [Event({"n": 3})]))
        assert len(stored_ids(path)) == 2 and len(stored_ids(other)) == 1
    finally:
        await stop(service)


RELOAD_TWO = """\
sinks:
  Events: {{type: sse-server, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: events,
           retry.max: 0, drain.window: 0, history.path: {path}}}
  Added: {{type: sse-server, schema: "n int", server.host: 127.0.0.1, server.port: {port}, server.path: added,
          retry.max: 0, drain.window: 0, history.path: {added}}}
  Third: {{type: sse-server, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: third,
          retry.max: 0, drain.window: 0, history.path: {third}}}
  Log: {{type: log, stream: Events}}
"""


@pytest_twisted.ensureDeferred
async def test_a_reload_opens_new_files_off_the_reactor_and_closes_them_when_rejected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_events) -> None:
    """A reload that adds sinks with history files opens them on a thread (a quick_check of a large
    file must not stall the reactor); a reload rejected after that (a port that cannot be bound, a
    corrupt file) closes what it opened, and the running sink's file stays open."""
    import socket
    import threading

    from twisted.logger import formatEvent

    from sse_daemon.daemon.reload import Reloader

    path, added, third = tmp_path / "events.db", tmp_path / "added.db", tmp_path / "third.db"
    config = write_config(tmp_path, RELOAD.format(beat=15, path=path))
    service = await start(tmp_path, RELOAD.format(beat=15, path=path))
    reloader = Reloader(service, [str(config)])
    files = service.builder.history_files
    opened_on: dict[str, str] = {}
    real_open = HistoryFile.open

    def open_noting_thread(self: HistoryFile) -> None:
        opened_on[Path(self.path).name] = threading.current_thread().name
        real_open(self)

    monkeypatch.setattr(HistoryFile, "open", open_noting_thread)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        # 1. the new port is taken: rejected after staging; both new files were opened off the reactor, and are closed again
        write_config(tmp_path, RELOAD_TWO.format(path=path, port=busy.getsockname()[1], added=added, third=third))
        assert not await deadline(reloader.reload())
        assert set(opened_on) == {"added.db", "third.db"}
        assert all(name != threading.main_thread().name for name in opened_on.values()), opened_on
        assert files.prepared == {}
        assert files.stores[str(added)].users == 0 and files.stores[str(added)].file.connection is None
        assert files.stores[str(third)].file.connection is None
        assert files.stores[str(path)].users == 1 and files.stores[str(path)].file.connection is not None, \
            "the running sink keeps its file"

        # 2. a corrupt file with history.on.corrupt: refuse: rejected; the good new file opened meanwhile is closed
        third.write_bytes(b"not a database at all" * 100)
        opened_on.clear()
        write_config(tmp_path, RELOAD_TWO.format(path=path, port=0, added=added, third=third))
        assert not await deadline(reloader.reload())
        assert "added.db" in opened_on and files.prepared == {}
        assert all(store.users == 0 and store.file.connection is None
                   for name, store in files.stores.items() if name != str(path))
        assert "Events" in service.sinks and "Added" not in service.sinks

        # 3. a file that cannot be opened (a full disk): rejected with one line, and what it opened is closed
        third.unlink()

        def full_disk(self: HistoryFile) -> None:
            if self.path == str(third):
                raise HistoryUnavailable(f"history file {third}: cannot read: database or disk is full")
            open_noting_thread(self)

        monkeypatch.setattr(HistoryFile, "open", full_disk)
        assert not await deadline(reloader.reload())
        assert any(f"reload rejected: history file {third}: cannot read: database or disk is full" in formatEvent(e)
                   for e in log_events)
        assert files.prepared == {} and "Added" not in service.sinks
        monkeypatch.setattr(HistoryFile, "open", open_noting_thread)

        # 4. the corrupt file gone: the reload is applied with the files it opened
        assert await deadline(reloader.reload())
        assert files.stores[str(added)].users == 1 and files.stores[str(third)].users == 1
        await deadline(service.bus.publish("Added", [Event({"n": 1})]))
        assert stored_ids(added) != [], "the added sink commits to the file the reload opened"
    finally:
        busy.close()
        await stop(service)


# --------------------------------------------------------------------------- the memory bus waits for its subscribers


@pytest.mark.reactor_free
def test_the_memory_bus_fires_once_every_subscriber_deferred_has() -> None:
    from sse_daemon.bus.memory import MemoryBus

    bus = MemoryBus()
    pending: list[defer.Deferred] = []

    def slow(events: Sequence[Event]) -> defer.Deferred:  # a sink with a history file: its commit
        d: defer.Deferred = defer.Deferred()
        pending.append(d)
        return d

    seen: list[Event] = []
    bus.subscribe("S", slow)
    bus.subscribe("S", slow)
    bus.subscribe("S", seen.extend)  # returns None: nothing to wait for
    published = bus.publish("S", [Event({"n": 1}), Event({"n": 2})])
    assert seen == [Event({"n": 1}), Event({"n": 2})] and len(pending) == 2, "delivered at once, in order, to everyone"
    assert not published.called
    pending[0].callback(None)
    assert not published.called, "one of two is not enough"
    pending[1].callback(None)
    assert published.called and published.result is None


@pytest.mark.reactor_free
def test_the_memory_bus_fails_with_the_subscribers_own_failure() -> None:
    from sse_daemon.bus.memory import MemoryBus

    bus = MemoryBus()
    answers = [defer.fail(HistoryUnavailable("history file x: cannot commit: database or disk is full")), defer.succeed(None)]
    bus.subscribe("S", lambda event: answers.pop(0))
    outcome: list[object] = []
    bus.publish("S", [Event({"n": 1}), Event({"n": 2})]).addErrback(outcome.append)
    assert len(outcome) == 1 and outcome[0].check(HistoryUnavailable), "not gatherResults' FirstError"  # type: ignore[attr-defined]
    assert bus.publish("T", [Event({"n": 1})]).called, "no subscriber, or none waiting: fired at once"


# --------------------------------------------------------------------------- configuration and --check


@pytest.mark.reactor_free
@pytest.mark.parametrize(("extra", "path", "message"), [
    ("bus: {type: redis}\n", "h.db", "the shared bus keeps every sink's history in Redis"),
    ("", "nowhere/h.db", "does not exist"),
    ("", "", "is a directory"),
])
def test_history_path_config_errors(tmp_path: Path, extra: str, path: str, message: str) -> None:
    from sse_daemon.config.errors import ConfigError

    text = config_text(tmp_path / path if path else tmp_path) + extra
    with pytest.raises(ConfigError, match=message) as raised:
        load_files([str(write_config(tmp_path, text))])
    assert "history.path" in str(raised.value)


@pytest.mark.reactor_free
def test_two_sinks_cannot_share_a_history_file_and_a_raw_sink_keeps_none(tmp_path: Path) -> None:
    from sse_daemon.config.errors import ConfigError

    text = config_text(tmp_path / "h.db") + (
        f"  Other: {{type: sse-server, schema: 'n int', server.host: 127.0.0.1, server.port: 0, history.path: {tmp_path / 'h.db'}}}\n"
        f"  Raw: {{type: sse-server, schema: 'n int', server.host: 127.0.0.1, server.port: 0, sse.format: raw, history.path: {tmp_path / 'r.db'}}}\n")
    with pytest.raises(ConfigError) as raised:
        load_files([str(write_config(tmp_path, text))])
    assert f"the history file {tmp_path / 'h.db'} is already used by sink 'Events'" in str(raised.value)
    assert "a raw sink keeps no history" in str(raised.value)


@pytest.mark.reactor_free
@pytest.mark.parametrize(("on_corrupt", "code", "says"), [("refuse", 1, "would not start"), ("move-aside", 0, "would be renamed")])
def test_check_reports_a_corrupt_file_and_what_the_option_would_do(tmp_path: Path, capsys, on_corrupt: str, code: int, says: str) -> None:
    from sse_daemon.tap import Options

    path = tmp_path / "events.db"
    path.write_bytes(b"garbage" * 1000)
    config = write_config(tmp_path, config_text(path, **{"history.on.corrupt": on_corrupt}))
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--config", str(config), "--check"])
    assert exited.value.code == code
    out, err = capsys.readouterr()
    assert str(path) in err and f"history.on.corrupt is {on_corrupt}" in err and says in err
    assert ("configuration OK" in out) == (code == 0), "OK is said only when the daemon would start"
    assert path.read_bytes() == b"garbage" * 1000, "--check only reads"


@pytest.mark.reactor_free
def test_check_passes_a_good_file(tmp_path: Path, capsys) -> None:
    from sse_daemon.tap import Options

    path = tmp_path / "events.db"
    store = HistoryFile(str(path))
    store.open()
    store.commit(frames(2), floor=0)
    store.close()
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--config", str(write_config(tmp_path, config_text(path))), "--check"])
    assert exited.value.code == 0 and capsys.readouterr().err == ""


def test_the_daemon_refuses_to_start_on_a_corrupt_file_with_one_line(tmp_path: Path, capsys) -> None:
    from sse_daemon.tap import Options, makeService

    path = tmp_path / "events.db"
    path.write_bytes(b"garbage" * 1000)
    options = Options()
    options.parseOptions(["--config", str(write_config(tmp_path, config_text(path)))])
    with pytest.raises(SystemExit) as exited:
        makeService(options, reactor)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "history.on.corrupt" in err and "Traceback" not in err
