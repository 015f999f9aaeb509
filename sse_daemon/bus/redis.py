"""The bus on Redis Streams (``bus: {type: redis}``): one bus shared by every instance.

Each daemon stream is one Redis stream (``<key.prefix><stream>``). ``publish``
is an ``XADD`` (trimmed with ``MAXLEN ~`` and, with an age bound, ``XTRIM
MINID ~``) whose Deferred fires when Redis has the entries, so an ingest only
answers 200 for events Redis acknowledged. Nothing is delivered locally on
publish: every instance, the publishing one included, reads the streams with
``XREAD BLOCK`` on a connection of its own and fans entries out in Redis's
order, so every instance sees the same events in the same order with the
same id, the Redis entry id (``Event.bus_id``). SSE sinks use it as the SSE
``id:``, which lets a client resume on any instance: ``replay`` reads what
follows an id with ``XREVRANGE``.

When Redis goes away, ``publish`` fails at once with :class:`BusUnavailable`
(ingest answers 503), the reader reconnects with a doubling backoff and
resumes each stream after the last id it delivered, so subscribers see every
acknowledged event once. The pure parts (entry ids, entry fields, backoff,
the replay verdict) are plain functions; :class:`RedisBus` is the Twisted glue.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredList, FirstError, TimeoutError, fail, gatherResults, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sse_daemon.bus.fanoutlag import FanoutLag
from sse_daemon.bus.interfaces import ISharedBus, ISubscription, PublishUnconfirmed, Subscriber
from sse_daemon.bus.memory import subscriber_failed
from sse_daemon.bus.readgaps import ReadGaps
from sse_daemon.bus.streamids import STREAM_IDS, entry_key, key_below, show_key
from sse_daemon.config.model import BusDef
from sse_daemon.policy.limits import should_log
from sse_daemon.events.schema import Event
from sse_daemon.events.validate import InvalidValue, check_values, load_json

#: how long one XREAD blocks; bounds how late a stream subscribed after start is picked up
READ_BLOCK_MS = 1000
READ_COUNT = 1000
#: seconds between two looks at whether Redis trimmed entries before this instance read them (readgaps.py)
GAP_CHECK_INTERVAL = 1.0
#: seconds Redis has to answer a command (beyond an XREAD's own block) before the connection counts
#: as dead: a partition that drops packets without closing the socket must still end in a 503 and a reconnect
COMMAND_TIMEOUT = 5.0


class BusUnavailable(Exception):
    """The bus cannot take events now (Redis unreachable); nothing of the call was acknowledged."""


# --------------------------------------------------------------------------- pure helpers


def event_fields(event: Event) -> list[str]:
    """The entry's fields: values as JSON, plus the inbound id and type and the ingress time.

    Raises InvalidValue (validate.py) for values no reader could decode: checked on entry
    already, so this is the last line, which keeps such an event out of Redis for good.
    """
    check_values(event.values)
    fields = ["v", json.dumps(dict(event.values), separators=(",", ":"), ensure_ascii=False, allow_nan=False), "g", repr(event.ingress)]
    if event.id is not None:
        fields += ["i", event.id]
    if event.type is not None:
        fields += ["t", event.type]
    return fields


def entry_args(event: Event) -> list[bytes]:
    """:func:`event_fields` as the bytes sent: encoded here, so the Redis client never meets a
    string it cannot encode (it would fail the command after MULTI went out)."""
    fields = event_fields(event)
    try:
        return [field.encode("utf-8") for field in fields]
    except UnicodeEncodeError as e:
        raise InvalidValue("invalid-unicode", f"the event's id or type holds a lone surrogate ({e.reason})") from None


def event_from_entry(entry_id: str, fields: Sequence[Any]) -> Event:
    """An entry read back (``[id, [k, v, ...]]``) as an Event carrying ``bus_id``.

    ValueError (InvalidValue for a value no sink could write, such as ``1e400`` stored by an
    older version) when it is not an entry sse-daemon can deliver: the caller skips it.
    """
    pairs = dict(zip(fields[::2], fields[1::2]))
    if "v" not in pairs:
        raise ValueError(f"entry {entry_id} has no 'v' field: not written by sse-daemon")
    text = pairs["v"]
    extras = [pairs.get(name) for name in ("i", "t")]
    if not isinstance(text, str) or any(extra is not None and not isinstance(extra, str) for extra in extras):
        raise ValueError(f"entry {entry_id} is not UTF-8 text")
    try:
        values = load_json(text)
        if not isinstance(values, dict):
            raise ValueError("'v' is not a JSON object")
        check_values(values)
    except InvalidValue as e:
        raise InvalidValue(e.reason, f"entry {entry_id}: {e}", e.path) from None
    except ValueError as e:
        raise ValueError(f"entry {entry_id}: {e}") from None
    return Event(values, extras[0], extras[1], float(pairs.get("g", 0.0)), bus_id=entry_id)


def decode_entries(entries: Sequence[Any]) -> tuple[list[Event], list[tuple[str, str]]]:
    """Entries as Events, and ``(entry id, why)`` for each one skipped because it cannot be delivered."""
    events: list[Event] = []
    skipped: list[tuple[str, str]] = []
    for entry_id, fields in entries:
        try:
            events.append(event_from_entry(entry_id, fields))
        except (ValueError, TypeError) as e:
            skipped.append((str(entry_id), str(e) or type(e).__name__))
    return events, skipped


def is_connection_failure(error: BaseException | None) -> bool:
    """Whether a failed command means the connection is gone or out of step (reconnect), unlike
    Redis refusing a command or a payload the client cannot encode: dropping the connection for
    those would fail every other publisher for a problem of one."""
    import txredisapi  # loaded already: only a running Redis bus fails commands

    return isinstance(error, (
        txredisapi.ConnectionError, txredisapi.InvalidResponse, TimeoutError, CancelledError,
        net_error.ConnectionClosed, ConnectionError,
    ))


class ReplicaAddress(Exception):
    """The bus's address leads to a replica (read-only): not up until it leads to a primary."""


def is_replica_refusal(error: BaseException | None) -> bool:
    """Whether Redis refused a write as a replica (``READONLY``): after a fail-over behind one address the
    connection still leads to the old primary, and only a new connection reaches the new one."""
    import txredisapi  # loaded already: only a running Redis bus fails commands

    return isinstance(error, txredisapi.ResponseError) and str(error).startswith("READONLY")


def exec_ids(replies: Any, count: int) -> list[str]:
    """The entry ids from an EXEC reply (the XADDs come first); ValueError if the transaction did not apply."""
    if not isinstance(replies, list) or len(replies) < count:
        raise ValueError(f"the transaction was not applied (EXEC answered {replies!r})")
    failed = [r for r in replies if isinstance(r, Exception)]
    if failed:
        raise ValueError(f"Redis refused a command of the transaction: {failed[0]}")
    return [str(r) for r in replies[:count]]


def backoff(attempt: int, maximum: float, first: float = 0.1) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): doubling from ``first`` up to ``maximum``."""
    return min(maximum, first * 2 ** min(attempt, 30))


def info_field(info: Sequence[Any] | None, name: str) -> Any:
    """A field of an ``XINFO STREAM`` reply (a flat key/value list)."""
    if not info:
        return None
    pairs = dict(zip(info[::2], info[1::2]))
    return pairs.get(name)


@dataclass(frozen=True, slots=True)
class BusReplay:
    """What follows an id on the bus: the events to replay, and whether any were lost before them."""

    events: tuple[Event, ...]  # oldest first
    reset: str | None  # None: nothing lost; "too-old": trimmed away; "unknown": an id Redis never gave out
    after: str  # replay continues after this id (the SSE-Replay-From header)
    oldest: str | None  # oldest id Redis still holds
    #: entries left out because they cannot be delivered (id, why); live readers skip them too
    skipped: tuple[tuple[str, str], ...] = ()


def replay_verdict(after: str | None, entries_newest_first: Sequence[Any], limit: int, info: Sequence[Any] | None) -> BusReplay:
    """Decide, from ``XREVRANGE + (after COUNT limit+1`` and ``XINFO STREAM``, what to replay and whether it is honest.

    ``after`` None (the client's id is not a Redis id) replays the newest ``limit`` with a reset.
    """
    entries = list(entries_newest_first)
    truncated = len(entries) > limit
    entries = entries[:limit][::-1]  # oldest first
    decoded, skipped = decode_entries(entries)
    events, left_out = tuple(decoded), tuple(skipped)
    first_id = entries[0][0] if entries else None  # an entry skipped still counts as replayed: nobody can have it
    first = info_field(info, "first-entry")
    oldest = first[0] if first else None
    last_generated = info_field(info, "last-generated-id") or "0-0"
    max_deleted = info_field(info, "max-deleted-entry-id") or "0-0"
    if after is None:
        return BusReplay(events, "unparseable", show_key(key_below(entry_key(first_id))) if first_id else last_generated, oldest, left_out)
    requested = entry_key(after)
    if requested > entry_key(last_generated):
        return BusReplay(events, "unknown", last_generated, oldest, left_out)
    if truncated or requested < entry_key(max_deleted):
        # something after the client's id is gone: replay continues after the newest id lost
        resumed = key_below(entry_key(first_id)) if first_id else entry_key(last_generated)
        return BusReplay(events, "too-old", show_key(resumed), oldest, left_out)
    return BusReplay(events, None, after, oldest, left_out)


# --------------------------------------------------------------------------- Twisted glue


@implementer(ISubscription)
class _Subscription:
    def __init__(self, bus: "RedisBus", stream: str, subscriber: Subscriber) -> None:
        self.stream = stream
        self.subscriber = subscriber
        self._bus = bus

    def cancel(self) -> None:
        subscriptions = self._bus._subscriptions.get(self.stream, [])
        if self in subscriptions:
            subscriptions.remove(self)
        if not subscriptions:
            self._bus.lags.forget(self.stream)  # not read here any more: nothing waits for this fan-out
            self._bus.gaps.forget(self.stream)  # nor reads it: what is added meanwhile is nobody's loss


@implementer(ISharedBus)
class RedisBus(Service):
    """The shared bus. A child service of the daemon: connects on start, reconnects until stopped."""

    log = Logger()
    provides_ids = True  # events carry bus_id; sinks use it as the SSE id
    ids = STREAM_IDS  # how those ids read and order (a sink's history keys)

    def __init__(self, definition: BusDef, reactor: Any) -> None:
        self.url = definition.options.url
        self.prefix: str = definition.options.key_prefix
        #: entries each Redis stream keeps, about (XADD MAXLEN ~): what resumes reach, and what an unread backlog may be
        self.history_size: int = definition.options.history_size
        self.max_age: float = definition.options.history_max_age
        self.max_delay: float = definition.options.reconnect_max_delay
        self.lease_ttl: float = definition.options.source_lease_ttl
        #: seconds this instance's publishes may wait for its own fan-out before its ingest refuses more (0: no bound)
        self.max_lag: float = definition.options.fanout_max_lag
        self.lags = FanoutLag()
        #: entries Redis trimmed before this instance read them (it fell more than history.size behind)
        self.gaps = ReadGaps()
        self._gaps_checked = float("-inf")
        self._gaps_found = 0
        self.reactor = reactor
        self.setName("bus")
        #: "connecting" (not yet, or again), "up", "down" (waiting to reconnect)
        self.state = "connecting"
        self.reason = "not connected yet"
        self.failures: dict[str, int] = defaultdict(int)
        self.counters: Counter[str] = Counter()
        self._subscriptions: dict[str, list[_Subscription]] = defaultdict(list)
        #: last entry id delivered, per stream; None: not yet placed (the stream's end at the next read)
        self._positions: dict[str, str | None] = {}
        self._writer: Any = None
        self._reader: Any = None
        self._loop: Deferred | None = None
        self._pending: set[Deferred] = set()

    # -- ISharedBus
    def subscribe(self, stream: str, subscriber: Subscriber) -> ISubscription:
        subscription = _Subscription(self, stream, subscriber)
        self._subscriptions[stream].append(subscription)
        self._positions.setdefault(stream, None)
        return subscription

    def publish(self, stream: str, events: Iterable[Event]) -> Deferred:
        """XADD every event, in order; fires with their ids once Redis has all, fails with BusUnavailable."""
        events = list(events)
        if not events:
            return succeed([])
        writer = self._writer
        if self.state != "up" or writer is None:
            self.counters["publish_refused"] += len(events)
            return fail(BusUnavailable(f"the Redis bus at {self.url} is {self.state}: {self.reason}"))
        key = self.prefix + stream
        args = []
        for index, event in enumerate(events):  # every byte ready before MULTI goes out: what cannot be encoded is the publisher's 400
            try:
                args.append(entry_args(event))
            except InvalidValue as e:
                self.counters["publish_invalid"] += len(events)
                return fail(InvalidValue(e.reason, f"element {index}: {e}", e.path))
        # One MULTI/EXEC: Redis takes the whole batch or none of it, so a 503 never leaves half a body published.
        calls = [writer.execute_command("MULTI")]
        calls += [writer.execute_command("XADD", key, "MAXLEN", "~", str(self.history_size), "*", *fields) for fields in args]
        if self.max_age > 0:
            min_id = int((self.reactor.seconds() - self.max_age) * 1000)
            calls.append(writer.execute_command("XTRIM", key, "MINID", "~", str(max(min_id, 0))))
        calls.append(writer.execute_command("EXEC"))
        d = self._track(gatherResults(calls, consumeErrors=True).addTimeout(COMMAND_TIMEOUT, self.reactor))
        d.addCallback(lambda replies: exec_ids(replies[-1], len(events)))
        d.addCallbacks(self._published, self._publish_failed, (stream,))
        return d

    def fanout_lag(self, stream: str) -> float:
        """Seconds the oldest publish Redis acknowledged to this instance has waited for its fan-out (fanoutlag.py)."""
        return self.lags.lag(stream, self.reactor.seconds())

    def behind(self, stream: str, incoming: int = 0) -> float | None:
        """The fan-out lag of ``stream`` when it is over ``fanout.max.lag``, or when this instance's events
        waiting to be read back and the ``incoming`` ones would be more than ``history.size`` (Redis trims a
        stream to about that many entries: what it trims before this instance read it would never reach its
        subscribers); None otherwise (the ingest takes events then)."""
        if not self.max_lag:
            return None
        lag = self.fanout_lag(stream)
        return lag if lag > self.max_lag or self.lags.waiting(stream) + incoming > self.history_size else None

    def subscriber_count(self, stream: str) -> int:
        return len(self._subscriptions.get(stream, ()))

    def command(self, *args: str) -> Deferred:
        """One Redis command on the publishing connection (leases); BusUnavailable while down."""
        writer = self._writer
        if self.state != "up" or writer is None:
            return fail(BusUnavailable(f"the Redis bus at {self.url} is {self.state}: {self.reason}"))
        d = self._track(writer.execute_command(*args).addTimeout(COMMAND_TIMEOUT, self.reactor))
        d.addErrback(self._command_failed)
        return d

    def _command_failed(self, failure: Failure) -> Failure:
        """A replica's refusal: reconnect, so a lease is taken and renewed on the new primary; passed on."""
        if is_replica_refusal(failure.value):
            self._reconnect()
        return failure

    def _reconnect(self) -> None:
        """Drop the reader's connection: the reader loop notices and reconnects both."""
        if self.running and self._reader is not None:
            self._reader.disconnect()

    def _track(self, d: Deferred) -> Deferred:
        """Note a command in flight, so a stop lets it finish (a lease's release, a last publish)."""
        self._pending.add(d)

        def settled(result: object) -> object:
            self._pending.discard(d)
            return result

        d.addBoth(settled)
        return d

    def replay(self, stream: str, after: str | None, limit: int) -> Deferred:
        """What follows ``after`` on ``stream`` (at most ``limit`` events): a Deferred BusReplay."""
        return Deferred.fromCoroutine(self._replay(stream, after, limit))

    @property
    def placed(self) -> bool:
        """Up, and every subscribed stream has a read position: from now on nothing published is missed."""
        return self.state == "up" and all(p is not None for p in self._positions.values())

    def readiness(self) -> str:
        """For ``/readyz``: "ok", or why the bus cannot take events."""
        return "ok" if self.state == "up" else f"redis {self.url} {self.state}: {self.reason}"

    # -- service
    def startService(self) -> None:
        super().startService()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: None if f.check(CancelledError) else self.log.failure("the Redis bus reader stopped", f))

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # the reader's loop is cancelled; commands already sent (a lease's release) get their answer first
        if self._pending:
            await DeferredList(list(self._pending), consumeErrors=True)
        await self._disconnect()

    # -- internals
    def _published(self, ids: list[str], stream: str) -> list[str]:
        self.counters["events_published"] += len(ids)
        if ids and self._subscriptions.get(stream) and self._positions.get(stream) is not None:  # read back here: it waits
            self.lags.accepted(stream, entry_key(ids[-1]), self.reactor.seconds(), len(ids))
        return ids

    def _publish_failed(self, failure: Failure) -> Failure:
        inner = failure.value.subFailure if isinstance(failure.value, FirstError) else failure
        reason = inner.getErrorMessage()
        self.counters["publish_failed"] += 1
        lost = is_connection_failure(inner.value) or is_replica_refusal(inner.value)
        if should_log(self.counters["publish_failed"]):
            self.log.warn("publishing to Redis {url} failed: {reason} ({what})", url=str(self.url), reason=reason,
                          what="reconnecting" if lost else "the connection is fine, only this publish failed")
        if lost:
            self._reconnect()
        if is_connection_failure(inner.value):  # the commands may have reached Redis, only its answer was lost
            return Failure(PublishUnconfirmed(f"the Redis bus at {self.url} did not answer: {reason}"))
        return Failure(BusUnavailable(f"the Redis bus at {self.url} failed: {reason}"))

    async def _run(self) -> None:
        attempt = 0
        while self.running:
            try:
                await self._connect()
                await self._refuse_replica()
                await self._drop_lost_marks()
                self._set_state("up", "")
                attempt = 0
                while self.running:
                    await self._read_once()
            except CancelledError:
                raise
            except Exception as e:
                if not self.running:
                    return
                self._set_state("down", str(e) or type(e).__name__)
                await self._disconnect()
                delay = backoff(attempt, self.max_delay)
                attempt += 1
                self.counters["reconnects"] += 1
                await deferLater(self.reactor, delay, lambda: None)
                self._set_state("connecting", f"reconnecting after: {self.reason}")

    async def _connect(self) -> None:
        import txredisapi  # only a redis bus needs the client

        def connection() -> Deferred:
            # replyTimeout (the client aborts the connection) bounds the handshake: AUTH and SELECT are sent as the
            # connection is made, out of reach of our own timeouts, and a peer that accepts and never answers (a
            # stopped Redis, a proxy) left the bus connecting for good. Past COMMAND_TIMEOUT: ours act first after.
            return txredisapi.Connection(
                self.url.host, self.url.port, dbid=self.url.db, reconnect=False, convertNumbers=False,
                password=self.url.password, username=self.url.username, connectTimeout=5, replyTimeout=COMMAND_TIMEOUT + 1,
            )

        self._writer = await connection()
        self._reader = await connection()

    async def _refuse_replica(self) -> None:
        """A replica takes no writes: the bus is not up while the address leads to one (backing off, one line
        a change of state), rather than up and refusing every publish, reconnecting after each (a line each).
        A user whose ACL does not allow ROLE is taken at its word: a replica then shows as READONLY refusals."""
        import txredisapi

        try:
            role = await self._writer.execute_command("ROLE").addTimeout(COMMAND_TIMEOUT, self.reactor)
        except txredisapi.ResponseError:  # NOPERM, or a server without ROLE
            return
        kind = role[0].decode("latin-1") if role and isinstance(role[0], bytes) else (role[0] if role else "")
        if kind in ("slave", "replica"):
            raise ReplicaAddress(f"{self.url} leads to a replica, which takes no writes; waiting for it to lead to a primary")

    async def _drop_lost_marks(self) -> None:
        """Before publishes are taken again: forget the publishes waiting for a fan-out whose entries Redis
        no longer has (restarted without them), so their age does not refuse the ingest for good."""
        for stream in self.lags.streams():
            newest = await self._reader.execute_command("XREVRANGE", self.prefix + stream, "+", "-", "COUNT", "1").addTimeout(
                COMMAND_TIMEOUT, self.reactor)
            self.lags.lost_after(stream, entry_key(newest[0][0]) if newest else (0, 0))

    async def _disconnect(self) -> None:
        connections = (self._writer, self._reader)
        self._writer = self._reader = None
        for connection in connections:
            if connection is not None:
                try:
                    await connection.disconnect()
                except Exception:
                    pass

    def _set_state(self, state: str, reason: str) -> None:
        if state == self.state:
            self.reason = reason
            return
        self.state, self.reason = state, reason
        if state == "up":
            self.log.info("Redis bus {url} is up", url=str(self.url), state=state)
        elif state == "down":
            self.log.warn("Redis bus {url} is down ({reason}); ingest answers 503 until it is back", url=str(self.url), reason=reason, state=state)

    async def _read_once(self) -> None:
        reader = self._reader
        streams = [stream for stream, subs in self._subscriptions.items() if subs]
        if not streams:  # nothing to read, but a lost or hung connection must still end in a reconnect
            await reader.execute_command("PING").addTimeout(COMMAND_TIMEOUT, self.reactor)
            await deferLater(self.reactor, READ_BLOCK_MS / 1000, lambda: None)
            return
        for stream in streams:
            if self._positions.get(stream) is None:
                newest = await reader.execute_command("XREVRANGE", self.prefix + stream, "+", "-", "COUNT", "1").addTimeout(COMMAND_TIMEOUT, self.reactor)
                self._positions[stream] = newest[0][0] if newest else "0-0"
        if self.reactor.seconds() - self._gaps_checked >= GAP_CHECK_INTERVAL:
            self._gaps_checked = self.reactor.seconds()
            for stream in streams:
                await self._check_gaps(reader, stream)
        reply = await reader.execute_command(
            "XREAD", "COUNT", str(READ_COUNT), "BLOCK", str(READ_BLOCK_MS), "STREAMS",
            *(self.prefix + s for s in streams), *(self._positions[s] for s in streams),
        ).addTimeout(READ_BLOCK_MS / 1000 + COMMAND_TIMEOUT, self.reactor)
        for key, entries in reply or ():
            stream = key[len(self.prefix):]
            if entries:
                self._positions[stream] = entries[-1][0]
                self.gaps.read(stream, len(entries))
                self._deliver(stream, entries)
                self.lags.delivered(stream, entry_key(entries[-1][0]))

    def _deliver(self, stream: str, entries: Sequence[Any]) -> None:
        """One read's entries of ``stream``, to each subscriber in one call."""
        events, skipped = decode_entries(entries)
        self._skipped(stream, skipped)
        if not events:
            return
        self.counters["events_delivered"] += len(events)
        for subscription in tuple(self._subscriptions.get(stream, ())):
            try:
                subscription.subscriber(events)
            except Exception:
                subscriber_failed(self.log, self.failures, stream, subscription.subscriber)

    async def _check_gaps(self, reader: Any, stream: str) -> None:
        """Count and log (sampled) the entries of ``stream`` Redis trimmed before this instance read them."""
        import txredisapi  # loaded already: only a running Redis bus reads

        try:
            info = await reader.execute_command("XINFO", "STREAM", self.prefix + stream).addTimeout(COMMAND_TIMEOUT, self.reactor)
        except txredisapi.ResponseError:  # no such key: nothing was ever added to the stream
            return
        added = info_field(info, "entries-added")
        lost = self.gaps.check(stream, str(self._positions[stream]), info_field(info, "last-generated-id"),
                               None if added is None else int(added))
        if lost:
            self.counters["entries_lost"] += lost
            total = self.counters["entries_lost"]
            self._gaps_found += 1
            if should_log(self._gaps_found):  # sampled by gaps found, not entries: a first gap of 900 is logged
                self.log.warn("stream {stream}: Redis trimmed {lost} entries before this instance read them (it fell more "
                              "than history.size, {size}, behind): its subscribers never got them ({total} so far)",
                              stream=stream, lost=lost, size=self.history_size, total=total)

    def _skipped(self, stream: str, skipped: Sequence[tuple[str, str]]) -> None:
        """Entries no sink could deliver (foreign, or a value refused by validate.py): counted, logged sampled."""
        for entry_id, reason in skipped:
            self.counters["entries_skipped"] += 1
            count = self.counters["entries_skipped"]
            if should_log(count):
                self.log.warn("skipped Redis entry {entry_id} of stream {stream}: {reason} ({count} so far)",
                              entry_id=entry_id, stream=stream, reason=reason, count=count)

    async def _replay(self, stream: str, after: str | None, limit: int) -> BusReplay:
        writer = self._writer  # the reader's connection is blocked in XREAD
        if self.state != "up" or writer is None:
            raise BusUnavailable(f"the Redis bus at {self.url} is {self.state}: {self.reason}")
        key = self.prefix + stream
        start = "-" if after is None else "(" + after
        info_d = writer.execute_command("XINFO", "STREAM", key).addTimeout(COMMAND_TIMEOUT, self.reactor)
        entries_d = writer.execute_command("XREVRANGE", key, "+", start, "COUNT", str(limit + 1)).addTimeout(COMMAND_TIMEOUT, self.reactor)
        try:
            info = await info_d
        except CancelledError:  # the caller gave up (a deadline): so do we, at once
            entries_d.addErrback(lambda _: None)
            entries_d.cancel()
            raise
        except Exception as e:  # no such key: an empty stream
            if "no such key" not in str(e).lower():
                await entries_d
                raise
            info = None
        entries = await entries_d
        replay = replay_verdict(after, entries, limit, info)
        self._skipped(stream, replay.skipped)
        return replay
