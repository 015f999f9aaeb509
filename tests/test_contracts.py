"""The declared contracts: every bus, view, id scheme, sink and source provides what it says,
and every bus keeps the one publish contract (a Deferred, fired once the bus has the events)."""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from treq.testing import StubTreq
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sse_daemon.bus.connector import ConnectorBus
from sse_daemon.bus.cursor import CursorBus
from sse_daemon.bus.interfaces import IBus, IDeliveringBus, IEventIds, ISharedBus
from sse_daemon.bus.lease import ILeasedService, leased_source
from sse_daemon.bus.memory import MemoryBus
from sse_daemon.bus.redis import BusUnavailable, RedisBus
from sse_daemon.bus.streamids import STREAM_IDS
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.connectors.history import History
from sse_daemon.connectors.ingest import IngestResource
from sse_daemon.connectors.interfaces import ILogSinkService, ISource, ISseSinkService, ISubscriberSink, IUpstreamSource
from sse_daemon.connectors.logsink import LogSinkService
from sse_daemon.connectors.sink import SseSink, SseSinkService, sink_for_bus
from sse_daemon.connectors.sink.batching import BURST, TurnBatch
from sse_daemon.connectors.sink.ids import LOCAL_IDS
from sse_daemon.connectors.sink.replay import within
from sse_daemon.events.schema import Event
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.ops.figures import SourceWatch, source_figures

pytestmark = pytest.mark.reactor_free

YAML = """\
sources:
  In: {type: http, receiver.url: "http://127.0.0.1:0/in", schema: "n int"}
  Up: {type: sse, receiver.url: "http://127.0.0.1:9/events", schema: "n int"}
sinks:
  Events: {type: sse-server, server.host: 127.0.0.1, server.port: 0, server.path: /events, schema: "n int"}
  Log: {type: log, schema: "n int"}
"""
REDIS_YAML = YAML + 'bus: {type: redis, url: "redis://127.0.0.1:9"}\n'


def loaded(text: str = YAML):
    config = validate(load_yaml(text, "contracts.yaml"))
    connectors = {c.name: c for c in config.connectors}
    return config, connectors


def mapper_for(connector):
    return make_mapper(connector.options.mapping, loaded()[0].streams[connector.stream].schema)


def test_each_bus_provides_its_interface() -> None:
    config, _ = loaded(REDIS_YAML)
    memory, redis = MemoryBus(), RedisBus(config.bus, Clock())
    assert verifyObject(IDeliveringBus, memory) and not ISharedBus.providedBy(memory) and memory.provides_ids is False
    assert verifyObject(ISharedBus, redis) and redis.provides_ids is True
    assert verifyObject(IEventIds, redis.ids) and verifyObject(IEventIds, LOCAL_IDS)
    assert verifyObject(IBus, ConnectorBus(memory, Clock()))
    assert verifyObject(IBus, CursorBus(memory, redis, "cursor", lambda why: None))


def test_the_memory_bus_answers_a_publish_with_a_fired_deferred_after_delivering() -> None:
    bus = MemoryBus()
    seen: list[int] = []
    bus.subscribe("S", lambda events: seen.extend(event.values["n"] for event in events))
    d = bus.publish("S", [Event({"n": 1}), Event({"n": 2})])
    assert isinstance(d, Deferred) and d.called and seen == [1, 2]
    results: list = []
    d.addCallback(results.append)
    assert results == [None]


def test_the_redis_bus_answers_a_publish_with_a_deferred_that_fails_while_down() -> None:
    config, _ = loaded(REDIS_YAML)
    bus = RedisBus(config.bus, Clock())  # never started: not connected
    empty = bus.publish("S", [])
    assert isinstance(empty, Deferred) and empty.called, "nothing to publish: nothing to wait for"
    refused = bus.publish("S", [Event({"n": 1})])
    assert isinstance(refused, Deferred)
    failures: list[Failure] = []
    refused.addErrback(failures.append)
    assert failures and failures[0].check(BusUnavailable) and bus.counters["publish_refused"] == 1


def test_stream_ids_read_order_and_step_below_like_redis() -> None:
    assert STREAM_IDS.key("5-2") < STREAM_IDS.key("5-10") < STREAM_IDS.key("6-0")
    assert STREAM_IDS.show(STREAM_IDS.below(STREAM_IDS.key("6-0"))) == f"5-{2**64 - 1}"
    with pytest.raises(ValueError):
        STREAM_IDS.key("not-an-id")
    assert LOCAL_IDS.key("17") == 17 and LOCAL_IDS.show(LOCAL_IDS.below(17)) == "16"


def test_a_connector_bus_stamps_a_publish_and_passes_the_buses_deferred_on() -> None:
    clock = Clock()
    clock.advance(42)
    view = ConnectorBus(MemoryBus(), clock)
    assert view.last_publish is None
    d = view.publish("S", [Event({"n": 1})])
    assert isinstance(d, Deferred) and d.called and view.last_publish == 42


@implementer(ISharedBus)
class FakeSharedBus(MemoryBus):
    """A shared bus for the tests: publishes as the memory bus does; its commands, replays and ids are recorded."""

    provides_ids = True
    ids = STREAM_IDS
    prefix = "p:"
    lease_ttl = 1.0
    state = "up"
    history_size = 1000

    def __init__(self, refuse: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.commands: list[tuple[str, ...]] = []
        self.replays: list[tuple] = []
        self.counters: Counter[str] = Counter()

    def publish(self, stream, events):
        events = list(events)
        return fail(BusUnavailable("down")) if self.refuse else super().publish(stream, events)

    def command(self, *args: str) -> Deferred:
        self.commands.append(args)
        return succeed("OK")

    def replay(self, stream, after, limit) -> Deferred:
        self.replays.append((stream, after, limit))
        return Deferred()

    def readiness(self) -> str:
        return "ok"

    def fanout_lag(self, stream: str) -> float:
        return 0.0

    def behind(self, stream: str, incoming: int = 0) -> float | None:
        return None


def test_the_fake_shared_bus_keeps_the_contract() -> None:
    assert verifyObject(ISharedBus, FakeSharedBus())


def test_a_cursor_bus_saves_the_cursor_once_acknowledged_and_restarts_on_a_refusal() -> None:
    redis = FakeSharedBus()
    restarts: list[str] = []
    cursor = CursorBus(redis, redis, "p:cursor", restarts.append)
    cursor.publish("S", [Event({"n": 1}, id="u-1"), Event({"n": 2}, id="u-2"), Event({"n": 3})])
    assert redis.commands == [("SET", "p:cursor", "u-2")] and cursor.acknowledged == "u-2" and restarts == []
    refused = CursorBus(FakeSharedBus(refuse=True), redis, "p:cursor", restarts.append)
    failed: list[Failure] = []
    refused.publish("S", [Event({"n": 4}, id="u-4")]).addErrback(failed.append)
    assert restarts == ["a publish failed"] and refused.acknowledged is None
    assert [f.type for f in failed] == [BusUnavailable], "passed on: the source counts it"


def test_a_leased_source_is_built_on_its_cursor_bus_and_shown_through_its_lease() -> None:
    _, connectors = loaded()
    redis = FakeSharedBus()
    built: list = []

    class Source(LogSinkService):  # any service that can resume will do
        def resume_after(self, last_event_id):
            built.append(last_event_id)

    def make(bus):
        source = Source(connectors["Log"], mapper_for(connectors["Log"]), bus)
        built.append(bus)
        return source

    lease = leased_source(make, ConnectorBus(redis, Clock()), redis, "Up", 1.0, Clock())
    assert isinstance(built[0], CursorBus) and built[0].cursor_key == "p:source:Up:cursor"
    assert lease.key == "p:source:Up:lease" and lease.inner.bus is built[0] and lease.name == "sink:Log"
    assert verifyObject(ILeasedService, lease) and lease.standby is False


def test_sinks_and_sources_provide_what_the_figures_read() -> None:
    _, connectors = loaded()
    clock = Clock()
    bus = MemoryBus()
    sink = SseSink(connectors["Events"], mapper_for(connectors["Events"]), clock)
    assert verifyObject(ISubscriberSink, sink)
    assert verifyObject(ISseSinkService, SseSinkService(sink, bus, "S", clock))
    assert verifyObject(ILogSinkService, LogSinkService(connectors["Log"], mapper_for(connectors["Log"]), bus))
    assert verifyObject(ISource, IngestResource(connectors["In"], mapper_for(connectors["In"]), bus, clock))
    from sse_daemon.connectors.source import SseSourceService

    source = SseSourceService(connectors["Up"], mapper_for(connectors["Up"]), bus, clock, StubTreq(Resource()))
    assert verifyObject(IUpstreamSource, source)


def test_a_leased_sources_figures_and_readiness_are_the_sources_and_the_leases() -> None:
    _, connectors = loaded()
    from sse_daemon.connectors.source import SseSourceService

    clock = Clock()
    redis = FakeSharedBus()
    lease = leased_source(lambda bus: SseSourceService(connectors["Up"], mapper_for(connectors["Up"]), bus, clock, StubTreq(Resource())),
                          ConnectorBus(redis, clock), redis, "Up", 1.0, clock)
    lease.inner._connections[0].client.counters["reconnects"] = 3  # the source adds up its connections' counts
    figures = source_figures(lease, None, 10.0, 0.0)
    assert (figures["name"], figures["reconnects"], figures["connected"]) == ("Up", 3, False)
    watch = SourceWatch(lease, 0.0)
    assert watch.verdict(100.0, 1.0) is not None, "not connected, not in standby: down"
    lease.standby = True
    assert watch.verdict(100.0, 1.0) is None, "another instance reads the upstream"


def test_a_sink_adopts_a_shared_buses_ids_and_asks_it_what_follows_an_id() -> None:
    _, connectors = loaded()
    clock = Clock()
    local = sink_for_bus(MemoryBus(), "S", connectors["Events"], mapper_for(connectors["Events"]), clock)
    assert local.bus_replay is None and local.history.key("17") == 17
    redis = FakeSharedBus()
    shared = sink_for_bus(redis, "S", connectors["Events"], mapper_for(connectors["Events"]), clock)
    assert shared.bus_replay is not None and shared.history.key("5-1") == (5, 1)
    shared.bus_replay("5-1", 10)
    assert redis.replays == [("S", "5-1", 10)]
    assert isinstance(shared.history, History) and shared.history.floor is None, "what came before is the bus's to say"


def test_a_turns_frames_are_written_once_at_its_end() -> None:
    clock = Clock()
    flushed: list = []
    batch = TurnBatch(clock, lambda: flushed.append(batch.take()))
    batch.extend([b"a"], [1.0])
    batch.extend([b"b"], [None])
    assert batch.scheduled and not flushed
    clock.advance(0)
    assert flushed == [([b"a", b"b"], [1.0])] and not batch.scheduled and batch.take() == ([], [])


def test_with_a_flush_interval_writes_are_paced_past_a_burst_and_a_quiet_stream_waits_for_nothing() -> None:
    clock = Clock()
    clock.advance(100)
    flushed: list = []
    batch = TurnBatch(clock, lambda: flushed.append((round(clock.seconds(), 6), batch.take()[0])), min_interval=0.002)
    for frame in (b"a", b"b", b"c", b"d"):  # close together, in turns of their own
        batch.extend([frame], [None])
        clock.advance(0)
        clock.advance(0.0001)
    assert [frames for _, frames in flushed] == [[b"a"], [b"b"], [b"c"], [b"d"]], "a burst of BURST writes goes at once"
    assert BURST == 4
    batch.extend([b"e"], [None])
    clock.advance(0)
    assert len(flushed) == 4, "past the burst: the next waits"
    clock.advance(0.001)
    batch.extend([b"f"], [None])
    clock.advance(0.0006)
    assert flushed[4] == (100.002, [b"e", b"f"]), "together, once the bucket holds a write again (0.4 ms used, 1.6 left)"
    batch.extend([b"g"], [None])
    clock.advance(0.001)
    assert len(flushed) == 5
    clock.advance(0.001)
    assert flushed[5] == (100.004, [b"g"]), "a stream that keeps coming: a write per interval"
    clock.advance(1)
    for frame in (b"h", b"i"):
        batch.extend([frame], [None])
        clock.advance(0)
    assert flushed[6:] == [(101.004, [b"h"]), (101.004, [b"i"])] and not batch.scheduled, "a quiet spell refills the burst"


def test_a_bus_replay_that_does_not_answer_in_time_times_out_without_waiting_for_its_cancel() -> None:
    clock = Clock()
    stubborn: Deferred = Deferred(lambda d: None)  # swallows the cancel
    outcome: list[Failure] = []
    within(stubborn, 5.0, clock).addErrback(outcome.append)
    clock.advance(4.9)
    assert not outcome
    clock.advance(0.1)
    assert outcome and "no answer within 5s" in outcome[0].getErrorMessage()
    answered: list = []
    within(succeed("now"), 5.0, clock).addCallback(answered.append)
    assert answered == ["now"] and not clock.getDelayedCalls()


def test_live_events_held_for_a_subscriber_waiting_for_a_bus_replay_count_against_its_bounds(log_events) -> None:
    """Seen: while the bus had not answered (up to BUS_REPLAY_TIMEOUT), every live event was kept for each
    waiting subscriber, outside its queue bounds: 5,000 events held for one of ``subscriber.queue.size: 100``."""
    from twisted.internet.testing import StringTransport
    from twisted.web.test.requesthelper import DummyRequest

    _, connectors = loaded(YAML.replace("server.path: /events,", "server.path: /events, subscriber.queue.size: 100,"))
    clock = Clock()
    sink = sink_for_bus(FakeSharedBus(), "S", connectors["Events"], mapper_for(connectors["Events"]), clock)
    assert sink.queue_size == 100
    request = DummyRequest([b"events"])
    request.transport = StringTransport()
    request.write = request.transport.write
    request.registerProducer = lambda producer, streaming: None
    request.requestHeaders.setRawHeaders(b"last-event-id", [b"1-0"])
    sink.subscribe(request)
    (waiting,) = sink.resumes.waiting
    for n in range(50):  # the bus does not answer meanwhile
        sink.publish([Event({"n": n}, bus_id=f"{2 + n * 100 + i}-0") for i in range(100)])
        clock.advance(0)
        assert sum(len(frames) for frames in sink.resumes.waiting.values()) <= sink.queue_size
    assert waiting.gone and not sink.resumes.waiting and sink.counters["dropped_slow"] == 1
    assert [str(e.get("log_format")) for e in log_events if "too slow" in str(e.get("log_format"))]


@pytest.mark.reactor_free
def test_an_event_is_equal_by_what_it_says_not_where_or_when_it_came_from() -> None:
    assert Event({"n": 1}, "7", "tick", ingress=1.0, bus_id="1-0") == Event({"n": 1}, "7", "tick", ingress=2.0)
    assert Event({"n": 1}) != Event({"n": 2}) and Event({"n": 1}, "7") != Event({"n": 1}, "8")
    assert Event({"n": 1}, type="a") != Event({"n": 1}, type="b") and Event({"n": 1}) != {"n": 1}
    with pytest.raises(TypeError):
        hash(Event({"n": 1}))  # its values are a mapping
    assert repr(Event({"n": 1}, bus_id="1-0")) == "Event(values={'n': 1}, id=None, type=None, ingress=0.0, bus_id='1-0')"
