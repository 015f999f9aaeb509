"""A sink's history in a file (``history.path``): SQLite from the standard library, in WAL mode.

Synchronous, and meant to run on ONE thread (durable.py gives it a dedicated one):
the reactor never waits on it. Two tables: ``events`` (id, arrival time, encoded
frame) holds what the in-memory history holds, under the same bounds; ``meta``
holds the floor (the newest id evicted, or the moment the file was started),
so a restarted sink knows exactly which ids it still covers, and its ids go on
above the newest one here.

Each reactor turn's events go in one transaction (:meth:`HistoryFile.commit`),
with the deletions the bounds made: a group commit. ``synchronous=NORMAL`` in WAL
mode: a commit is in the operating system's hands when it returns, so a SIGKILL
(or any crash of the process) loses nothing committed; a power loss or kernel
crash may lose the last commits. ``FULL`` would fsync every commit: measured on
the development machine, 150 us per commit of ten 200-byte events with NORMAL
against 420 us with FULL (on the file's own thread, but it caps the commits per
second and lengthens every acknowledgement), for a guarantee the issue does not
ask (power loss). The file's directory needs to be writable (the ``-wal`` and
``-shm`` files sit beside it).

Errors are our own: :class:`HistoryUnavailable` (disk full, I/O error, a
directory gone) and :class:`HistoryCorrupt` (not a database, or damaged).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Sequence

__all__ = ["HistoryCorrupt", "HistoryFile", "HistoryUnavailable", "Tail", "check_file", "move_aside"]

#: what a history file says it is (``PRAGMA application_id``): "SSEd"
APPLICATION_ID = 0x53534564

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at REAL NOT NULL, frame BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)",
)

#: SQLite's primary result codes that mean the file itself is bad, not the disk
_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class HistoryUnavailable(Exception):
    """The history file cannot take events now (disk full, I/O error): nothing of that commit is kept."""

    reason = "history-unavailable"


class HistoryCorrupt(HistoryUnavailable):
    """The history file is not a database, or a damaged one (``PRAGMA quick_check`` fails)."""


@dataclass(frozen=True, slots=True)
class Tail:
    """What a file holds within the bounds: what the in-memory history starts with."""

    entries: tuple[tuple[int, float, bytes], ...]  # (id, arrival time, frame), oldest first
    floor: int | None  # every id above it is held; None: a new file (no event, no floor yet)
    newest: int | None  # the newest id ever kept here (ids continue above it); None: none yet


def _mapped(error: sqlite3.Error, path: str, doing: str) -> HistoryUnavailable:
    code = getattr(error, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    message = f"history file {path}: {doing}: {error}"
    if primary in _CORRUPT_CODES:
        return HistoryCorrupt(message)
    return HistoryUnavailable(message)


class HistoryFile:
    """One history file. Open it, load its tail, then commit each turn; all on one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.connection: sqlite3.Connection | None = None
        #: (newest, floor) as this object last wrote or read them (it is the file's only writer), or None
        self._known: tuple[int | None, int | None] | None = None
        #: the file opened (its device and inode, and its path made absolute): see :meth:`_same_file`
        self._opened: tuple[str, int, int] | None = None

    def open(self) -> None:
        """Open (or create) the file, check it and set WAL mode. HistoryCorrupt for a bad file."""
        self._known = None
        self._opened = None
        try:
            # the dedicated thread is not the one that built this object: one thread at a time uses it
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise _mapped(e, self.path, "cannot open") from None
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and application_id != APPLICATION_ID:
                raise HistoryCorrupt(f"history file {self.path}: a SQLite database, but not a sink's history (tables {sorted(tables)})")
            problem = connection.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise HistoryCorrupt(f"history file {self.path}: damaged ({problem})")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                connection.execute(statement)
            if not tables:
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except sqlite3.Error as e:
            connection.close()
            raise _mapped(e, self.path, "cannot read") from None
        except HistoryUnavailable:
            connection.close()
            raise
        self.connection = connection
        where = os.path.abspath(self.path)
        opened = os.stat(where)
        self._opened = (where, opened.st_dev, opened.st_ino)

    def _db(self) -> sqlite3.Connection:
        if self.connection is None:
            raise HistoryUnavailable(f"history file {self.path} is not open")
        return self.connection

    def load(self, size: int, max_age: float, max_bytes: int, now: float) -> Tail:
        """The newest events within the bounds (``history.size``, ``.max.age``, ``.max.bytes``, as
        History applies them; 0 turns the age and byte bounds off); what lies outside is deleted
        and the floor raised over it, in one transaction."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                floor = self._meta(db, "floor")
                newest = self._meta(db, "newest")
                kept: list[tuple[int, float, bytes]] = []
                total = 0
                cut: int | None = None
                oldest_at = now - max_age if max_age > 0 else None
                for event_id, at, frame in db.execute("SELECT id, at, frame FROM events ORDER BY id DESC"):
                    if (len(kept) >= size or (max_bytes and total + len(frame) > max_bytes)
                            or (oldest_at is not None and at < oldest_at)):
                        cut = event_id
                        break
                    kept.append((event_id, at, bytes(frame)))
                    total += len(frame)
                last = db.execute("SELECT MAX(id) FROM events").fetchone()[0]
                if last is not None:
                    newest = last if newest is None else max(newest, last)
                if cut is not None:
                    db.execute("DELETE FROM events WHERE id <= ?", (cut,))
                    floor = cut if floor is None else max(floor, cut)
                    self._set(db, "floor", floor)
                if newest is not None:
                    self._set(db, "newest", newest)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise _mapped(e, self.path, "cannot load") from None
        kept.reverse()
        self._known = (newest, floor)
        return Tail(tuple(kept), floor, newest)

    def _same_file(self) -> None:
        """HistoryUnavailable when the path no longer names the file opened (deleted, or another moved
        over it): SQLite would go on committing to the old inode, and the next start would find none of it."""
        if self._opened is None:
            return
        where, device, inode = self._opened
        try:
            now = os.stat(where)
        except OSError as e:
            problem = e.strerror or str(e)
        else:
            if (now.st_dev, now.st_ino) == (device, inode):
                return
            problem = "another file is there now"
        raise HistoryUnavailable(f"history file {self.path} was deleted or replaced while the daemon ran ({problem}): "
                                 "what it took now would be lost at the next start; restart the daemon to start "
                                 "again from what the path holds")

    def commit(self, entries: Sequence[tuple[int, float, bytes]], floor: int | None) -> None:
        """One turn: insert ``entries`` (id, arrival time, frame), delete every id at or below
        ``floor`` (what the bounds evicted) and keep the floor, in one transaction. The newest id
        is written to the meta table only with a deletion: until then the newest row says it
        (``load`` takes the larger of the two), and a commit of one event costs half as much.
        Refused (HistoryUnavailable) once the file was deleted or replaced under it."""
        db = self._db()
        self._same_file()
        newest, kept_floor = self._known if self._known is not None else (self._meta(db, "newest"), self._meta(db, "floor"))
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if entries:
                    db.executemany("INSERT OR REPLACE INTO events (id, at, frame) VALUES (?, ?, ?)", entries)
                    newest = entries[-1][0] if newest is None else max(newest, entries[-1][0])
                if floor is not None and floor != kept_floor:  # the bounds evicted more since the last commit
                    db.execute("DELETE FROM events WHERE id <= ?", (floor,))
                    self._set(db, "floor", floor)
                    kept_floor = floor
                    if newest is not None:  # the events table alone may no longer say it (load reads both)
                        self._set(db, "newest", newest)
                db.execute("COMMIT")
            except BaseException:
                self._known = None  # read them again from the file next time
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise _mapped(e, self.path, "cannot commit") from None
        self._known = (newest, kept_floor)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def _set(db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def check_file(path: str) -> str | None:
    """For ``--check``: what is wrong with a history file (None: nothing; a missing file is fine,
    if its directory is writable). Opens it read-only: a running daemon's file is left alone."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"the directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"the directory {directory} is not writable (the file and its -wal and -shm files are kept there)"
    if not os.path.exists(path):
        return None
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable"
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return f"{path} cannot be opened: {e}"
    try:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and application_id != APPLICATION_ID:
            return f"{path} is a SQLite database, but not a sink's history"
        problem = connection.execute("PRAGMA quick_check").fetchone()[0]
        return None if problem == "ok" else f"{path} is damaged ({problem})"
    except sqlite3.Error as e:
        return f"{path} is not a readable history file ({e})"
    finally:
        connection.close()


def move_aside(path: str, now: float | None = None) -> str:
    """Rename a bad history file (and its -wal and -shm files) to ``<path>.corrupt-<UTC stamp>``; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = f"{path}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, target + suffix)
    return target
