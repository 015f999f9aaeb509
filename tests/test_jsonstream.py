"""Back-to-back JSON documents (the original system's wire format), and our source reading a raw sink."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.wire.jsondocs import JsonDocumentSplitter
from sse_daemon.events.schema import Event
from sse_daemon.daemon.service import build_service
from sse_daemon.wire.eventstream import Rejection

from .conftest import deadline, wait_for

VECTORS = [
    (b'{"event":{"a":1}}{"event":{"a":2}}', ['{"event":{"a":1}}', '{"event":{"a":2}}']),
    (b' \r\n[{"a":1},{"a":2}]\n{"b":"}{]["}', ['[{"a":1},{"a":2}]', '{"b":"}{]["}']),
    (b'{"s":"quote \\" brace } and \\\\"}{"t":1}', ['{"s":"quote \\" brace } and \\\\"}', '{"t":1}']),
    ('{"é":"ü€𝄞"}'.encode(), ['{"é":"ü€𝄞"}']),
    (b'{"nested":{"deep":[{"x":[1,{"y":2}]}]}}', ['{"nested":{"deep":[{"x":[1,{"y":2}]}]}}']),
    (b'junk {"a":1} more junk [2]', [Rejection("not-json", 1), '{"a":1}', Rejection("not-json", 1), "[2]"]),
    (b'{"unfinished":', []),
]


def run(chunks: list[bytes], max_document: int = 1 << 20) -> list:
    splitter = JsonDocumentSplitter(max_document)
    out = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.close()


@pytest.mark.reactor_free
@pytest.mark.parametrize("stream, expected", VECTORS)
def test_documents_come_out_whole_however_the_bytes_are_split(stream: bytes, expected: list) -> None:
    assert run([stream]) == expected
    for cut in range(len(stream) + 1):
        assert run([stream[:cut], stream[cut:]]) == expected, cut
    assert run([stream[i:i + 1] for i in range(len(stream))]) == expected


@pytest.mark.reactor_free
def test_an_oversized_document_is_skipped_without_buffering() -> None:
    splitter = JsonDocumentSplitter(max_document=100)
    out = splitter.feed(b'{"big":"')
    for _ in range(1000):
        out += splitter.feed(b"x" * 1000)
        assert sum(len(p) for p in splitter._pieces) <= 100
    out += splitter.feed(b'"}{"small":1}')
    assert out == [Rejection("event-too-large", 1_000_010), '{"small":1}']
    assert splitter.rejected == {"event-too-large": 1}


SINK = """\
sinks:
  Original:
    type: sse-server
    schema: "param1 string"
    server.host: 127.0.0.1
    server.port: 0
    sse.format: raw
"""

SOURCE = """\
sources:
  Reader:
    type: sse
    schema: "param1 string"
    receiver.url: http://127.0.0.1:{port}/Original
    sse.format: raw
    reconnect.initial.delay: 0.05
"""


@pytest_twisted.ensureDeferred
async def test_our_source_reads_a_raw_sink_like_the_original_source_did(daemon) -> None:
    sink_service = await daemon(SINK)
    port = sink_service.port_of("Original")
    config = validate(load_yaml(SOURCE.format(port=port), "source.yaml"))
    source_service = build_service(config, reactor)
    got: list[str] = []
    source_service.bus.subscribe("Reader", lambda events: got.extend(e.values["param1"] for e in events))
    source_service.startService()
    try:
        sink = sink_service.sinks["Original"].sink
        await wait_for(lambda: sink.subscribers, what="the raw source to subscribe")
        sent = [f"event {n} with {{braces}} and \"quotes\"" for n in range(50)]
        sink_service.bus.publish("Original", [Event({"param1": text}) for text in sent])
        await wait_for(lambda: len(got) == 50, what="50 events through the raw format")
        assert got == sent
    finally:
        await deadline(source_service.stopService())
