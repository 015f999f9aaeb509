"""Counting the requests Twisted's HTTP parser refuses before any resource sees them.

A request line or headers that cannot be parsed (too long, too many headers,
a bad ``Content-Length``, a broken chunk size...) get Twisted's bare ``400 Bad
Request`` and the connection is closed. Nothing of ours runs for them, so
this hook counts them in the port's router (``rejected["malformed-request"]``)
and logs them, sampled, like every other refusal. A single line longer than
Twisted's line limit (16 KiB) was closed without any answer or count; it gets
the same 400.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from .limits import should_log

__all__ = ["watch_bad_requests"]

log = Logger()


def watch_bad_requests(protocol: Any, router: Any) -> Any:
    """Wrap the channel's bad-request answer so it is counted; returns ``protocol``."""
    channel = getattr(protocol, "_channel", protocol)  # HTTP/1.1 behind the generic (h2-capable) wrapper
    respond = getattr(channel, "_respondToBadRequestAndDisconnect", None)
    if respond is None:  # a Twisted without this hook: nothing to count, nothing breaks
        return protocol

    def counted() -> None:
        router.rejected["malformed-request"] += 1
        count = router.rejected["malformed-request"]
        if should_log(count):
            peer = channel.transport.getPeer() if channel.transport is not None else None
            log.info("refused a malformed request from {peer}: 400 ({count} so far)",
                     peer=getattr(peer, "host", "?"), reason="malformed-request", count=count)
        respond()

    channel._respondToBadRequestAndDisconnect = counted
    channel.lineLengthExceeded = lambda line: counted()  # LineReceiver's silent close, otherwise
    return protocol
