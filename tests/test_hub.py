"""Several streams on one connection (hub.path) and subscribers' own filters (subscriber.where), over real sockets."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import pytest_twisted

from sse_daemon.config.load import load_files
from sse_daemon.config.errors import ConfigError
from sse_daemon.connectors.sink.hub import hub_id, hub_positions
from sse_daemon.events.schema import Event
from sse_daemon.wire.eventstream import Message

from .conftest import header, raw_request, status, subscribe, wait_for, write_config
from .test_resume import parsed

TOKEN = "hub-test-token-0123456789abcdef"

CONFIG = """\
sinks:
  Prices:
    type: sse-server
    schema: "symbol string, price double"
    server.host: 127.0.0.1
    server.port: 0
    server.path: prices
    hub.path: /hub
    subscriber.where: true
    retry.max: 0
    history.size: {size}
  News:
    type: sse-server
    schema: "title string"
    server.host: 127.0.0.1
    server.port: 0
    server.path: news
    hub.path: /hub
    retry.max: 0
  Secret:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: secret
    hub.path: /hub
    auth.type: bearer
    auth.tokens.env: HUB_TEST_TOKENS
    retry.max: 0
"""


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_TEST_TOKENS", TOKEN)


def price(service, symbol: str, value: float) -> None:
    service.bus.publish("Prices", [Event({"symbol": symbol, "price": value})])


def news(service, title: str) -> None:
    service.bus.publish("News", [Event({"title": title})])


def events(raw: bytes) -> list[Message]:
    return [m for m in parsed(raw) if m.event != "message" or m.data]


def seen(raw: bytes) -> list[tuple[str, object]]:
    """(event type, the first value of the event's payload) of each message, in order."""
    out = []
    for message in parsed(raw):
        payload = json.loads(message.data)
        out.append((message.event, next(iter(payload["event"].values())) if "event" in payload else payload))
    return out


async def count_messages(client, n: int) -> list[Message]:
    await wait_for(lambda: len(parsed(bytes(client.received))) >= n or client.is_closed, what=f"{n} messages")
    return parsed(bytes(client.received))


@pytest.mark.reactor_free
def test_hub_ids_carry_every_stream_and_read_back() -> None:
    assert hub_id(("A", "B"), {"A": "17", "B": "42"}) == "A:17,B:42"
    assert hub_id(("A", "B"), {"A": None, "B": "42"}) == "B:42"
    assert hub_positions("A:17,B:1700-0") == {"A": "17", "B": "1700-0"}
    assert hub_positions("12345") is None
    assert hub_positions("A:1,") is None
    # a stream's name may hold a colon; a position never does (the sink's numbers, Redis's "ms-seq")
    assert hub_positions(hub_id(("eu:prices", "B"), {"eu:prices": "17", "B": "42"})) == {"eu:prices": "17", "B": "42"}


@pytest_twisted.ensureDeferred
async def test_one_connection_gets_two_streams_each_named_and_resumes_both_exactly(daemon, tokens) -> None:
    service = await daemon(CONFIG.format(size=100))
    port = service.port_of("Prices")
    client = await subscribe(port, "/hub?stream=Prices&stream=News")
    assert header(bytes(client.received), "Content-Type").startswith("text/event-stream")
    price(service, "ACME", 1.0)
    news(service, "hello")
    price(service, "ACME", 2.0)
    messages = await count_messages(client, 3)
    # in order per stream (a reactor turn's events of one stream go out together)
    assert [(m.event, json.loads(m.data)["event"]) for m in messages if m.event == "Prices"] == [
        ("Prices", {"symbol": "ACME", "price": 1.0}), ("Prices", {"symbol": "ACME", "price": 2.0})]
    assert [(m.event, json.loads(m.data)["event"]) for m in messages if m.event == "News"] == [("News", {"title": "hello"})]
    ids = [hub_positions(m.id) for m in messages]
    assert all(set(i) == {"Prices", "News"} for i in ids), ids
    assert int(ids[0]["Prices"]) < int(ids[1]["Prices"]) and ids[2]["Prices"] == ids[1]["Prices"], "News came after both Prices events"
    last = messages[-1].id
    await client.close()

    # missed while away: two of one stream, one of the other; a reconnect with the last id gets exactly those
    price(service, "ACME", 3.0)
    news(service, "second")
    price(service, "ACME", 4.0)
    again = await subscribe(port, "/hub?stream=Prices&stream=News", f"Last-Event-ID: {last}\r\n")
    replayed = await count_messages(again, 3)
    assert [(m.event, json.loads(m.data)["event"]) for m in replayed] == [
        ("Prices", {"symbol": "ACME", "price": 3.0}), ("Prices", {"symbol": "ACME", "price": 4.0}), ("News", {"title": "second"}),
    ]
    news(service, "live")
    live = (await count_messages(again, 4))[3]
    assert live.event == "News" and hub_positions(live.id)["Prices"] == hub_positions(replayed[2].id)["Prices"]
    assert not any(m.event == "Secret" for m in parsed(bytes(again.received)))
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_named_with_a_colon_resumes_exactly(daemon) -> None:
    """Its hub id is ``eu:prices:<id>``: read back at the first colon, the position was lost and the
    reconnect went on from now, silently skipping what it had missed."""
    service = await daemon("""\
sinks:
  "eu:prices":
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: prices
    hub.path: /hub
    retry.max: 0
""")
    port = service.port_of("eu:prices")
    client = await subscribe(port, "/hub?stream=eu:prices")
    service.bus.publish("eu:prices", [Event({"n": 1})])
    last = (await count_messages(client, 1))[0].id
    await client.close()
    service.bus.publish("eu:prices", [Event({"n": 2})])
    service.bus.publish("eu:prices", [Event({"n": 3})])
    again = await subscribe(port, "/hub?stream=eu:prices", f"Last-Event-ID: {last}\r\n")
    replayed = await count_messages(again, 2)
    assert [(m.event, json.loads(m.data)["event"]["n"]) for m in replayed] == [("eu:prices", 2), ("eu:prices", 3)]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_history_no_longer_covers_is_named_in_one_reset_event(daemon, tokens) -> None:
    service = await daemon(CONFIG.format(size=2))
    port = service.port_of("Prices")
    client = await subscribe(port, "/hub?stream=Prices&stream=News")
    news(service, "one")
    last = (await count_messages(client, 1))[0].id
    await client.close()
    for n in range(5):  # more than Prices keeps
        price(service, "ACME", float(n))
    again = await subscribe(port, "/hub?stream=Prices&stream=News", f"Last-Event-ID: {last}\r\n")
    messages = await count_messages(again, 3)
    reset = messages[0]
    assert reset.event == "reset"
    payload = json.loads(reset.data)
    assert set(payload["streams"]) == {"Prices"} and payload["streams"]["Prices"]["reason"] == "too-old"
    assert [json.loads(m.data)["event"]["price"] for m in messages[1:]] == [3.0, 4.0]
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_the_subscriber_may_not_read_is_refused_by_name(daemon, tokens) -> None:
    service = await daemon(CONFIG.format(size=10))
    port = service.port_of("Prices")
    refused = await raw_request(port, b"GET /hub?stream=News&stream=Secret HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await refused.wait_for(b"}\n")
    assert status(raw) == 401 and header(raw, "SSE-Refused-Stream") == "Secret"
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert body["stream"] == "Secret" and "Secret" in body["error"]
    await refused.close()

    head = await raw_request(port, b"HEAD /hub?stream=News&stream=Secret HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await head.wait_for(b"\r\n\r\n")
    assert status(raw) == 401 and header(raw, "SSE-Refused-Stream") == "Secret"
    await head.close()
    head = await raw_request(port, f"HEAD /hub?stream=News&stream=Secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    raw = await head.wait_for(b"\r\n\r\n")
    assert status(raw) == 200 and header(raw, "Content-Type").startswith("text/event-stream")
    await head.close()
    assert service.sinks["Secret"].sink.hub_readers == 0, "a HEAD opens no stream"

    unknown = await raw_request(port, b"GET /hub?stream=News&stream=Nope HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await unknown.wait_for(b"}\n")
    assert status(raw) == 404 and header(raw, "SSE-Refused-Stream") == "Nope"
    await unknown.close()

    # with the token, both; and never another stream's events
    client = await subscribe(port, "/hub?stream=News&stream=Secret", f"Authorization: Bearer {TOKEN}\r\n")
    service.bus.publish("Secret", [Event({"n": 7})])
    price(service, "ACME", 1.0)
    news(service, "n")
    messages = await count_messages(client, 2)
    assert [m.event for m in messages] == ["Secret", "News"]
    assert service.sinks["Secret"].sink.hub_readers == 1
    assert service.sinks["Secret"].sink.counters["hub_subscribers"] == 1, "the sink_hub_subscribers gauge"
    assert len(service.sinks["Secret"].sink.subscribers) == 0, "a hub connection is not one of the sink's own subscribers"
    await client.close()
    await wait_for(lambda: service.sinks["Secret"].sink.hub_readers == 0, what="the hub connection to be forgotten")
    assert service.sinks["Secret"].sink.counters["hub_subscribers"] == 0


@pytest.mark.reactor_free
def test_subscribers_sharing_a_filter_share_its_pick_once_a_turn() -> None:
    """A turn's frames go through each filter once, not once per subscriber: subscribers sending the same text share
    its compiled filter (a thousand of them on a 500-event slice held the reactor 0.25 s). Each still gets its frames."""
    from sse_daemon.connectors.sink.filtering import deliver_filtered

    tested: list[int] = []

    def over_two(values) -> bool:
        tested.append(values["n"])
        return values["n"] > 2

    def under_two(values) -> bool:
        tested.append(values["n"])
        return values["n"] < 2

    class Got:
        def __init__(self) -> None:
            self.data: list[bytes] = []

        def deliver(self, mine: list[bytes], data: bytes, chunked: bytes) -> bool:
            self.data.append(data)
            return True

    subscribers = [Got() for _ in range(5)]
    frames = [b"%d\n" % n for n in range(5)]
    targets = [(subscribers[0], over_two), (subscribers[1], None), (subscribers[2], over_two), (subscribers[3], under_two),
               (subscribers[4], over_two)]
    written = deliver_filtered(targets, frames, b"".join(frames), b"chunked", [{"n": n} for n in range(5)], b"".join)
    assert len(tested) == 2 * len(frames), "each filter once per frame"
    assert [got.data for got in subscribers] == [[b"3\n4\n"], [b"0\n1\n2\n3\n4\n"], [b"3\n4\n"], [b"0\n1\n"], [b"3\n4\n"]]
    assert written == (2 + 5 + 2 + 2 + 2, 4 + 10 + 4 + 4 + 4, 3 + 3 + 3 + 3)


@pytest_twisted.ensureDeferred
async def test_a_filter_picks_from_the_shared_frames_live_and_on_resume(daemon, tokens) -> None:
    service = await daemon(CONFIG.format(size=100))
    port = service.port_of("Prices")
    where = quote("price > 100 and symbol == 'ACME'")
    picky = await subscribe(port, f"/prices?where={where}")
    everything = await subscribe(port, "/prices")
    for symbol, value in [("ACME", 50.0), ("ACME", 150.0), ("OTHER", 500.0), ("ACME", 101.0)]:
        price(service, symbol, value)
    await count_messages(everything, 4)
    got = await count_messages(picky, 2)
    assert [json.loads(m.data)["event"]["price"] for m in got] == [150.0, 101.0]
    sink = service.sinks["Prices"].sink
    assert sink.counters["events_filtered"] == 2
    # the same frames: the filtered subscriber's bytes are the others' frames, not encoded again
    everyone = parsed(bytes(everything.received))
    assert [m.id for m in got] == [everyone[1].id, everyone[3].id]
    first_id = got[0].id
    await picky.close()
    await everything.close()

    # resume replays the history through the same filter
    price(service, "ACME", 99.0)
    price(service, "ACME", 120.0)
    again = await subscribe(port, f"/prices?where={where}", f"Last-Event-ID: {first_id}\r\n")
    replayed = await count_messages(again, 2)
    assert [json.loads(m.data)["event"]["price"] for m in replayed] == [101.0, 120.0]
    await again.close()

    # on a hub, a filter names its stream
    hub = await subscribe(port, f"/hub?stream=Prices&stream=News&where.Prices={quote('price >= 1000')}")
    price(service, "ACME", 5.0)
    price(service, "ACME", 5000.0)
    news(service, "n")
    messages = await count_messages(hub, 2)
    assert [(m.event, json.loads(m.data)["event"]) for m in messages] == [
        ("Prices", {"symbol": "ACME", "price": 5000.0}), ("News", {"title": "n"})]
    await hub.close()


@pytest.mark.parametrize("path, wanted", [
    ("/prices?where=" + quote("price >> 3"), "^"),
    ("/prices?where=" + quote("pricee > 3"), "unknown attribute 'pricee'"),
    ("/prices?where=" + quote("symbol > 3"), "cannot compare"),
    ("/prices?where=" + quote("symbol like '%a%b%c%'"), "at most 2 '%'"),
    ("/prices?where=" + quote(" or ".join(["price>1"] * 40)), "more than 64"),
    ("/prices?where=" + quote("price > 1" + " " * 600), "at most 512"),
    ("/news?where=" + quote("title == 'x'"), "takes no filters"),
    ("/hub?stream=Prices&where=" + quote("price > 1"), "names its stream"),
    ("/hub?stream=Prices&where.Prices=" + quote("price >"), "^"),
])
@pytest_twisted.ensureDeferred
async def test_a_bad_filter_is_a_400_with_the_message_and_a_caret(daemon, tokens, path: str, wanted: str) -> None:
    service = await daemon(CONFIG.format(size=10))
    client = await raw_request(service.port_of("Prices"), f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await client.wait_for(b"}\n")
    assert status(raw) == 400, raw
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert body["reason"] == "bad-filter" and wanted in body["error"], body
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_caret_sits_under_the_fault(daemon, tokens) -> None:
    service = await daemon(CONFIG.format(size=10))
    client = await raw_request(service.port_of("Prices"), f"GET /prices?where={quote('price >> 3')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    body = json.loads((await client.wait_for(b"}\n")).partition(b"\r\n\r\n")[2])
    message, line, caret = body["error"].split("\n")
    assert "column 8" in message and line.strip() == "price >> 3" and caret.index("^") == line.index(">> 3") + 1
    await client.close()


@pytest.mark.parametrize("name", ["eu,prices", "\"prices\\nevent: other\"", "\" prices\"", "\"prices\\u0000\""])
def test_config_refuses_a_hub_stream_name_the_hub_cannot_carry(tmp_path, name: str) -> None:
    """A comma splits the hub's ids and its stream list, a line break or NUL would break the frames it is
    written in (``event:``, ``id:``), and spaces around it are stripped from the request: no client could
    read that stream through the hub, or its frames would say something else."""
    text = f"""\
sinks:
  {name}:
    type: sse-server
    schema: "n int"
    server.port: 8000
    server.path: prices
    hub.path: /hub
"""
    with pytest.raises(ConfigError) as e:
        load_files([str(write_config(tmp_path, text))])
    assert "cannot be a hub stream" in str(e.value)


@pytest.mark.parametrize("extra, wanted", [
    ("hub.path: /prices", "already served by"),
    ("sse.format: raw\n    hub.path: /hub", "hub.path needs sse.format sse"),
    ("sse.format: raw\n    subscriber.where: true", "subscriber.where needs sse.format sse"),
    # a worker gets the frames without the events' values: every filter passed every event
    ("worker.count: 2\n    subscriber.where: true", "subscriber.where is not available with worker.count above 1"),
])
def test_config_checks_hub_paths_and_raw_sinks(tmp_path, extra: str, wanted: str) -> None:
    text = f"""\
sinks:
  Prices:
    type: sse-server
    schema: "n int"
    server.port: 8000
    server.path: prices
    {extra}
"""
    with pytest.raises(ConfigError) as e:
        load_files([str(write_config(tmp_path, text))])
    assert wanted in str(e.value)


@pytest_twisted.ensureDeferred
async def test_a_hub_connection_ends_cleanly_when_the_daemon_stops(daemon, tokens) -> None:
    from twisted.internet import defer

    from .conftest import deadline

    service = await daemon(CONFIG.format(size=10))
    client = await subscribe(service.port_of("Prices"), "/hub?stream=Prices&stream=News")
    await deadline(defer.maybeDeferred(service.stopService))
    await deadline(client.closed)
    assert client.received.endswith(b"0\r\n\r\n"), "the response ended with its last chunk"
    assert service.sinks["Prices"].sink.hub_readers == 0


@pytest.mark.reactor_free
@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_the_one_closure_comparisons_keep_the_three_valued_logic(op: str) -> None:
    """``attribute <op> literal`` compiles to one closure (filters.py's cost); it answers as the general path does."""
    from sse_daemon.config.expressions import _BINARY, compile_expr, parse_condition
    from sse_daemon.events.schema import parse_schema

    schema = parse_schema("n int, s string")
    for text, name, literal in ((f"n {op} 3", "n", 3), (f"n {op} -3", "n", -3), (f"s {op} 'b'", "s", "b")):
        evaluate = compile_expr(parse_condition(text))
        for value in ([-5, -3, 1, 3, 5, None] if name == "n" else ["a", "b", "c", None]):
            expected = None if value is None else _BINARY[op](value, literal)
            assert evaluate({name: value}) == expected, (text, value)
    both = compile_expr(parse_condition(f"n {op} 3 and s is not null"))
    assert both({"n": None, "s": "x"}) is None and both({"n": 3, "s": None}) is False
    either = compile_expr(parse_condition(f"n {op} 3 or s is null"))
    assert either({"n": None, "s": None}) is True and either({"n": None, "s": "x"}) is None
    assert schema.type_of("n") is not None
