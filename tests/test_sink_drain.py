"""The sink's staged close (connectors/sink/drain.py) and a history handed on whole, on Twisted's Clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from sse_daemon.bus.streamids import STREAM_IDS
from sse_daemon.connectors.sink import bus_history
from sse_daemon.connectors.sink.drain import GOODBYE, drain_sink, flushed
from sse_daemon.connectors.sink.ids import LOCAL_IDS

from .test_contracts import loaded


@dataclass
class FakeTransport:
    disconnected: bool = False


@dataclass
class FakeRequest:
    transport: FakeTransport = field(default_factory=FakeTransport)


@dataclass(eq=False)
class FakeSubscriber:
    connected_at: float
    request: FakeRequest = field(default_factory=FakeRequest)


class FakeSink:
    """What the drain reads of a sink: its subscribers, name, retry bounds, and close."""

    name = "Events"
    retry_min = 1000
    retry_max = 2000

    def __init__(self, count: int) -> None:
        self.subscribers = {FakeSubscriber(connected_at=float(i)) for i in range(count)}
        self.closed: list[tuple[float, bytes]] = []

    def close(self, subscriber: FakeSubscriber, final: bytes) -> None:
        self.subscribers.discard(subscriber)
        self.closed.append((subscriber.connected_at, final))


def test_a_sinks_subscribers_are_closed_in_batches_oldest_first_over_the_window() -> None:
    clock = Clock()
    sink: Any = FakeSink(6)
    done = drain_sink(sink, window=1.0, batch_min=2, clock=clock, jitter=lambda: 0.0)
    first = len(sink.closed)
    assert 0 < first < 6 and not done.called, "the first batch at once, the rest later"
    clock.advance(1.0)
    assert done.called and not sink.subscribers
    assert [at for at, _ in sink.closed] == sorted(at for at, _ in sink.closed), "oldest connections first"
    assert all(final.startswith(GOODBYE) and b"retry: 1000\n" in final for _, final in sink.closed)


def test_a_cancelled_drain_closes_everyone_left_at_once() -> None:
    clock = Clock()
    sink: Any = FakeSink(6)
    done = drain_sink(sink, window=10.0, batch_min=1, clock=clock, jitter=lambda: 0.0)
    assert sink.subscribers
    done.cancel()
    assert not sink.subscribers and not clock.getDelayedCalls()


def test_flushed_waits_for_every_transport_to_disconnect_or_the_timeout() -> None:
    io = Clock()
    transports = [FakeTransport(), FakeTransport()]
    d = flushed(transports, io, timeout=2.0, poll=0.5)
    io.advance(0.5)
    assert not d.called
    for t in transports:
        t.disconnected = True
    io.advance(0.5)
    assert d.called
    late = flushed([FakeTransport()], io, timeout=1.0, poll=0.5)
    io.pump([0.5, 0.5])
    assert late.called, "a transport that never closes does not hold the shutdown past the timeout"


def test_a_worker_processes_history_continues_the_daemons_floor_and_newest() -> None:
    _, connectors = loaded()
    options = connectors["Events"].options
    shared = bus_history(options, Clock(), STREAM_IDS, STREAM_IDS.key("5-1"), STREAM_IDS.key("7-0"))
    assert (shared.floor, shared.newest) == ((5, 1), (7, 0))
    assert shared.covers("6-3") and not shared.covers("5-0") and not shared.covers("8-0")
    local = bus_history(options, Clock(), LOCAL_IDS, 100, 120)
    assert (local.floor, local.newest) == (100, 120) and local.covers("110")
    fresh = bus_history(options, Clock(), STREAM_IDS)
    assert fresh.floor is None and fresh.newest is None, "what came before is the bus's to say"
