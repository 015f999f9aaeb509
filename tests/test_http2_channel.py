"""An HTTP/2 connection on a port, on fakes: a Clock, a StringTransport and the h2 library as the client.

The port's limits hold per stream or per connection as over HTTP/1.1
(edge/listener.py ``PortH2Connection``), and flow control keeps its promise:
a stream whose window stays closed is held to the subscriber's queue bounds
and cut alone, while the other streams of its connection go on
(compat.py ``StreamingH2Connection``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import PriorityFrame
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from sse_daemon.compat import STREAM_BUFFER
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.connectors.sink import SseSink
from sse_daemon.connectors.sink.http import SseSinkResource
from sse_daemon.edge.listener import HTTP2, PathRouter, PortH2Connection, QuietSite
from sse_daemon.events.schema import Event
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.policy.connections import PortPolicy, Stopping

pytestmark = pytest.mark.reactor_free

SINK = """\
sinks:
  Events:
    type: sse-server
    schema: "n int, text string"
    server.port: 8080
    server.path: events
    subscriber.queue.size: {queue}
    flush.interval: 0  # each publish written at its turn's end: the sink's clock here is a Clock no one advances
"""


class Plain(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok\n"

    def render_POST(self, request: Any) -> bytes:
        return b"posted %d\n" % len(request.content.read())


class BrokenMidway(Resource):
    """A bug met after the answer started: the client must see a broken answer, never a whole one."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"the first half")
        raise ZeroDivisionError("a bug")


class Peer:
    """One HTTP/2 client connection to a PortH2Connection, all on one Clock."""

    def __init__(self, site: QuietSite, stream_window: int = 65535, connection_window: int = 0) -> None:
        self.clock: Clock = site.reactor
        self.site = site
        self.server = PortH2Connection(site, "10.0.0.1", None)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.transport.registerProducer(self.server, True)  # as the AlpnSwitch registers it with the TLS transport
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
        if connection_window:
            self.client.increment_flow_control_window(connection_window)
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = defaultdict(bytes)
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.goaway = False
        self.reading: set[int] = set()  # streams whose data the client acknowledges (opens their window again)
        assert self.exchange() < 100

    def exchange(self) -> int:
        """Run the reactor's due calls and carry bytes both ways until nothing moves; the rounds it took."""
        for rounds in range(2000):
            self.clock.advance(0)
            out = self.client.data_to_send()
            if out:
                self.server.dataReceived(out)
            data = self.transport.value()
            self.transport.clear()
            if data:
                for event in self.client.receive_data(data):
                    self._record(event)
            due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            if not out and not data and not due:
                return rounds
        return 2000

    def _record(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.heads[event.stream_id] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.bodies[event.stream_id] += event.data
            if event.stream_id in self.reading:
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset.add(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True

    def request(self, path: str, method: str = "GET", headers: tuple[tuple[str, str], ...] = (), body: bytes | None = None,
                end: bool = True, reading: bool = True, authority: str = "localhost") -> int:
        stream = self.client.get_next_available_stream_id()
        head = [(":method", method), (":path", path), (":scheme", "https"), (":authority", authority), *headers]
        self.client.send_headers(stream, [(k.encode(), v.encode()) for k, v in head], end_stream=end and body is None)
        if body is not None:
            self.client.send_data(stream, body, end_stream=end)
        if reading:
            self.reading.add(stream)
        self.exchange()
        return stream

    def status(self, stream: int) -> int:
        return int(self.heads[stream][b":status"])


def port(policy: PortPolicy = PortPolicy(head_timeout=5, body_timeout=7), queue: int = 50,
         max_body: int = 1000) -> tuple[QuietSite, SseSink]:
    loaded = validate(load_yaml(SINK.format(queue=queue), "sink.yaml"))
    (connector,) = loaded.sinks
    clock = Clock()
    sink = SseSink(connector, make_mapper(connector.options.mapping, loaded.streams["Events"].schema), clock)
    router = PathRouter()
    router.add("/events", SseSinkResource(sink))
    router.add("/plain", Plain())
    router.add("/broken", BrokenMidway())
    site = QuietSite(router, clock, max_body, policy, stopping=Stopping())
    site.http2 = True
    return site, sink


def publish(sink: SseSink, peer: Peer, count: int, size: int = 1000, start: int = 0) -> None:
    for n in range(start, start + count):
        sink.publish([Event({"n": n, "text": "x" * size})])
        peer.exchange()


# --------------------------------------------------------------------------- requests, limits, deadlines

def test_a_bug_after_the_answer_started_resets_its_stream_and_the_connection_goes_on() -> None:
    site, _ = port()
    peer = Peer(site)
    broken = peer.request("/broken")
    assert peer.bodies[broken] == b"the first half" and broken in peer.reset and broken not in peer.ended, \
        "reset: an answer that ends cleanly would pass for a whole one"
    assert site.resource.rejected["internal-error"] == 1
    after = peer.request("/plain")
    assert (peer.status(after), peer.bodies[after]) == (200, b"ok\n") and not peer.goaway



def test_requests_are_routed_and_answered_on_their_streams() -> None:
    site, _ = port()
    peer = Peer(site)
    first, second = peer.request("/plain"), peer.request("/nowhere")
    assert (peer.status(first), peer.bodies[first]) == (200, b"ok\n")
    assert peer.status(second) == 404 and site.resource.rejected["not-found"] == 1
    assert site.requests["HTTP/2"] == 2


def test_a_body_past_the_port_limit_is_413_on_its_stream_and_the_connection_goes_on() -> None:
    site, _ = port(max_body=10)
    peer = Peer(site)
    big = peer.request("/plain", "POST", (("content-length", "100"),), b"x" * 100)
    assert peer.status(big) == 413 and big in peer.ended
    assert site.resource.rejected["body-too-large"] == 1
    small = peer.request("/plain", "POST", (("content-length", "3"),), b"abc")
    assert (peer.status(small), peer.bodies[small]) == (200, b"posted 3\n")


def test_a_body_that_does_not_arrive_in_time_is_408_on_its_stream() -> None:
    site, _ = port()
    peer = Peer(site)
    slow = peer.request("/plain", "POST", (("content-length", "10"),), b"abc", end=False)
    peer.clock.advance(6)
    peer.client.send_data(slow, b"d")  # a byte now and then does not extend the deadline
    peer.exchange()
    assert slow not in peer.heads
    peer.clock.advance(1)
    peer.exchange()
    assert peer.status(slow) == 408 and site.resource.rejected["body-timeout"] == 1
    assert (peer.status(peer.request("/plain")), peer.goaway) == (200, False)


def test_a_connection_that_sends_no_request_head_in_time_is_closed_and_counted() -> None:
    site, _ = port()
    peer = Peer(site)
    peer.clock.advance(4.9)
    assert not peer.transport.disconnecting
    peer.clock.advance(0.1)
    peer.exchange()
    assert peer.transport.disconnecting and peer.goaway
    assert site.resource.rejected["head-timeout"] == 1


def test_an_idle_connection_that_served_requests_closes_quietly_after_the_head_deadline() -> None:
    site, _ = port()
    peer = Peer(site)
    peer.request("/plain")
    peer.clock.advance(4)
    peer.request("/plain")  # a new request: the deadline starts again from its end
    peer.clock.advance(4)
    assert not peer.transport.disconnecting
    peer.clock.advance(1)
    assert peer.transport.disconnecting and site.resource.rejected["head-timeout"] == 0


def test_an_open_stream_has_no_deadline() -> None:
    site, sink = port()
    peer = Peer(site)
    stream = peer.request("/events")
    peer.clock.advance(60)
    publish(sink, peer, 1)
    assert not peer.transport.disconnecting and b'"n":0' in peer.bodies[stream]


def test_a_malformed_frame_is_counted_and_closes_the_connection() -> None:
    site, _ = port()
    peer = Peer(site)
    peer.server.dataReceived(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00" * 4)  # WINDOW_UPDATE on stream 0 by 0: a protocol error
    assert site.resource.rejected["malformed-request"] == 1
    assert peer.transport.disconnecting


def test_once_shutdown_began_a_request_is_503_and_the_connection_takes_no_more() -> None:
    site, _ = port()
    peer = Peer(site)
    site.stopping.begin()
    stream = peer.request("/plain")
    assert peer.status(stream) == 503 and peer.heads[stream][b"retry-after"] == b"5"
    assert b"connection" not in peer.heads[stream], "a connection-specific header, which HTTP/2 forbids"
    assert peer.goaway and peer.transport.disconnecting
    assert site.resource.rejected["shutting-down"] == 1


def test_a_request_for_another_port_over_a_reused_connection_is_421() -> None:
    """Browsers reuse an HTTP/2 connection for other origins its certificate covers (coalescing)."""
    site, _ = port()
    peer = Peer(site)
    own = peer.request("/plain", authority="localhost:8443")
    other_name = peer.request("/plain", authority="127.0.0.1:8443")  # the same port: the same listener
    other_port = peer.request("/plain", authority="localhost:9443")
    assert (peer.status(own), peer.status(other_name), peer.status(other_port)) == (200, 200, 421)
    assert site.resource.rejected["misdirected"] == 1 and not peer.goaway


# --------------------------------------------------------------------------- flow control

def test_a_stream_whose_window_stays_closed_is_cut_at_the_queue_bound_and_the_others_go_on() -> None:
    site, sink = port(queue=20)
    peer = Peer(site, stream_window=16 * 1024, connection_window=10_000_000)
    stuck = peer.request("/events", reading=False)  # its client never opens its window again
    reading = peer.request("/events")
    stuck_subscriber = next(s for s in sink.subscribers if s.request.channel.streamID == stuck)
    publish(sink, peer, 20)  # 20 kB: more than its window
    assert stuck_subscriber.paused and stuck_subscriber.backlog, "its window closed: the subscriber holds its events"
    assert peer.exchange() < 10, "a stream that cannot send leaves the send loop instead of spinning in it"
    publish(sink, peer, 30, start=20)
    assert sink.counters["dropped_slow"] == 1 and stuck in peer.reset
    assert stuck_subscriber not in sink.subscribers and sink.counters["connections_closed"] == 1
    body = peer.bodies[reading]
    assert all(b'"n":%d,' % n in body for n in range(50)), "the other stream of the connection got every event"
    assert not peer.transport.disconnecting and reading not in peer.reset


def test_a_connection_that_does_not_drain_pauses_each_stream_past_its_buffer_not_its_window() -> None:
    site, sink = port(queue=1000)
    peer = Peer(site, stream_window=10_000_000, connection_window=10_000_000)
    stream = peer.request("/events")
    (subscriber,) = sink.subscribers
    peer.server.pauseProducing()  # the TLS transport's buffer is full
    publish(sink, peer, 100)
    assert subscriber.paused, "paused at its buffer although its window is open"
    assert peer.server.queued(stream) < STREAM_BUFFER + 2000
    assert subscriber.queued_events > 0
    peer.server.resumeProducing()
    peer.exchange()
    assert not subscriber.paused and not subscriber.backlog
    assert all(b'"n":%d,' % n in peer.bodies[stream] for n in range(100))


def test_a_subscriber_that_leaves_resets_only_its_stream() -> None:
    site, sink = port()
    peer = Peer(site, connection_window=10_000_000)
    leaving, staying = peer.request("/events"), peer.request("/events")
    peer.client.reset_stream(leaving)
    peer.exchange()
    assert len(sink.subscribers) == 1 and sink.counters["connections_closed"] == 1
    publish(sink, peer, 1)
    assert b'"n":0' in peer.bodies[staying] and b'"n":0' not in peer.bodies[leaving]
    assert site.protocols[HTTP2] == 0, "counted by the AlpnSwitch, not here"


def test_window_updates_do_not_resume_a_stream_held_at_its_buffer() -> None:
    """A client that reads nothing may still send WINDOW_UPDATE frames: each one used to resume the held
    subscriber, which moved one more write into the stream's queue, past every bound (and never cut)."""
    site, sink = port(queue=50)
    peer = Peer(site, stream_window=10_000_000, connection_window=10_000_000)
    stream = peer.request("/events")
    (subscriber,) = sink.subscribers
    peer.server.pauseProducing()  # the TLS transport's buffer is full: the client reads nothing
    for n in range(200):
        sink.publish([Event({"n": n, "text": "x" * 1000})])
        peer.client.increment_flow_control_window(1)  # the whole connection's window
        peer.client.increment_flow_control_window(1, stream)
        peer.exchange()
    assert peer.server.queued(stream) < 2 * STREAM_BUFFER, "the stream's queue stays near its buffer"
    assert sink.counters["dropped_slow"] == 1 and subscriber not in sink.subscribers


# --------------------------------------------------------------------------- hostile and careless clients

def test_a_reset_of_a_stream_already_answered_is_ignored_and_the_connection_goes_on() -> None:
    """A client still sending a body when its 413 or 408 arrives cancels its stream (browsers do):
    the reset named a stream Twisted had forgotten, and the KeyError took the whole connection down."""
    site, sink = port(max_body=10)
    peer = Peer(site)
    events = peer.request("/events")
    big = peer.request("/plain", "POST", (("content-length", "100"),), b"x" * 5, end=False)
    slow = peer.request("/plain", "POST", (("content-length", "5"),), b"x", end=False)
    peer.clock.advance(7)
    peer.exchange()
    assert (peer.status(big), peer.status(slow)) == (413, 408)
    peer.client.reset_stream(big)
    peer.client.reset_stream(slow)
    peer.exchange()
    publish(sink, peer, 1)
    assert b'"n":0' in peer.bodies[events] and not peer.goaway and not peer.transport.disconnecting
    assert peer.status(peer.request("/plain")) == 200


def test_an_expect_100_continue_after_a_refused_content_length_sends_no_100() -> None:
    """``Expect`` after ``Content-Length`` in the head: Twisted sent its 100 after our 413, a protocol error
    raised out of the connection (a traceback, and every stream of the connection lost)."""
    site, _ = port(max_body=10)
    peer = Peer(site)
    big = peer.request("/plain", "POST", (("content-length", "100"), ("expect", "100-continue")), end=False)
    assert peer.status(big) == 413 and big in peer.ended and site.resource.rejected["body-too-large"] == 1
    assert peer.status(peer.request("/plain")) == 200 and not peer.goaway


def test_priority_frames_for_streams_not_open_do_not_grow_the_priority_tree() -> None:
    """Twisted added every stream a PRIORITY frame named (and every stream it said to depend on) to the
    tree, for good: past 1000 of them the tree's refusal was raised out of the connection."""
    site, _ = port()
    peer = Peer(site)
    served = peer.request("/plain")
    frames = b"".join(_priority(stream, depends_on=stream + 2) for stream in range(1001, 5001, 4))
    frames += b"".join(_priority(served, depends_on=stream) for stream in range(5001, 7001, 2))  # a closed one, on idle ones
    peer.server.dataReceived(frames)
    assert len(peer.server.priority._streams) < 10
    stream = peer.request("/plain", headers=())
    peer.server.dataReceived(_priority(stream, depends_on=9001))
    assert peer.status(peer.request("/plain")) == 200 and not peer.goaway


def _priority(stream: int, depends_on: int) -> bytes:
    frame = PriorityFrame(stream)
    frame.depends_on, frame.stream_weight = depends_on, 16
    return bytes(frame.serialize())


def test_a_window_opened_by_settings_resumes_the_streams_it_held() -> None:
    """A client may open every stream's window by raising SETTINGS_INITIAL_WINDOW_SIZE instead of sending
    WINDOW_UPDATE frames (RFC 9113 6.9.2): a stream that had left the send loop at its closed window waited
    for an update that never came, and its subscriber was cut as slow."""
    site, sink = port(queue=20)
    peer = Peer(site, stream_window=0)
    stream = peer.request("/events")
    (subscriber,) = sink.subscribers
    publish(sink, peer, 3, size=100)
    assert b'"n":0' not in peer.bodies[stream] and subscriber.paused
    peer.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    peer.exchange()
    assert all(b'"n":%d,' % n in peer.bodies[stream] for n in range(3)) and not subscriber.paused
    publish(sink, peer, 30, size=100, start=3)
    assert all(b'"n":%d,' % n in peer.bodies[stream] for n in range(33)) and sink.counters["dropped_slow"] == 0
