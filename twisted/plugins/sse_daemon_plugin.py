"""twistd plugin: ``twistd -n sse-daemon --config etc/sse-daemon.yaml``.

Only a ServiceMaker lives here; ``sse_daemon.tap`` is imported lazily so a
broken import in the daemon cannot break twistd's plugin listing.
"""

from twisted.application.service import ServiceMaker

sseDaemon = ServiceMaker(
    "sse-daemon",
    "sse_daemon.tap",
    "Server-Sent Events bridge: connectors from YAML or statement files, SSE sinks and sources linked by an event bus",
    "sse-daemon",
)
