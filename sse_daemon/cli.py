"""The ``sse-daemon`` command: tools for operators next to ``twistd sse-daemon``.

- ``sse-daemon probe URL``: is this a working SSE stream, through every proxy?
  (exit 0 yes; 1 not an SSE stream or unreachable; 3 an SSE stream that is
  buffered on the way or sends nothing)
- ``sse-daemon wait-ready URL``: wait until the admin listener's ``/readyz``
  answers 200 (for systemd's ``ExecStartPost``); exit 1 on timeout.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from twisted.internet.defer import Deferred

from sse_daemon.policy.redact import redact_url


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError("expected 'Name: value' (not echoed: it may hold a secret)")
    return name.strip(), value.strip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-daemon", description="Operator tools for sse-daemon (the daemon itself runs as 'twistd sse-daemon').")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    probe = commands.add_parser(
        "probe", help="check that a URL is a working SSE stream", description=(
            "Connects to URL like a browser's EventSource, listens, and reports status, headers, time to first "
            "byte, whether events arrive unbuffered, the heartbeat interval, ids and resume with Last-Event-ID, "
            "retry, and deviations from the standard. Exit status: 0 a working stream; 1 not an SSE stream or "
            "unreachable; 3 an SSE stream that something buffers, or that sent nothing."),
    )
    probe.add_argument("url", help="the SSE endpoint, http:// or https://")
    probe.add_argument("--duration", type=float, default=20.0, help="seconds to listen (default 20; use more than the heartbeat interval)")
    probe.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the response head (default 10)")
    probe.add_argument("-H", "--header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
                       help="an extra request header, e.g. 'Authorization: Bearer ...' (repeatable; never printed)")
    probe.add_argument("--no-resume", action="store_true", help="do not open a second connection to test Last-Event-ID")
    probe.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")

    wait = commands.add_parser("wait-ready", help="wait until /readyz answers 200", description=(
        "Polls URL (the admin listener's /readyz) until it answers 200. For systemd: "
        "ExecStartPost=sse-daemon wait-ready http://127.0.0.1:9100/readyz"))
    wait.add_argument("url")
    wait.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    wait.add_argument("--interval", type=float, default=0.5, help="seconds between attempts (default 0.5)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "probe":
        from twisted.internet.task import react

        react(_probe, (args,))
    else:
        sys.exit(wait_ready(args.url, args.timeout, args.interval))


async def _run_probe(reactor: Any, args: argparse.Namespace) -> None:
    from sse_daemon.ops.probe import format_report, probe

    report = await probe(args.url, args.duration, reactor, timeout=args.timeout, headers=args.header, resume=not args.no_resume)
    sys.stdout.write((report.as_json() if args.json else format_report(report)) + "\n")
    sys.stdout.flush()
    raise SystemExit(report.exit_code)


def _probe(reactor: Any, args: argparse.Namespace) -> Deferred:
    return Deferred.fromCoroutine(_run_probe(reactor, args))


def wait_ready(url: str, timeout: float, interval: float) -> int:
    """Plain blocking polls: this runs before anything else needs the process."""
    end = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(1.0, interval * 4)) as response:
                if response.status == 200:
                    sys.stdout.write(f"ready: {redact_url(url)}\n")
                    return 0
                last = f"status {response.status}"
        except urllib.error.HTTPError as e:
            last = f"status {e.code}: {e.read(2000).decode('utf-8', 'replace').strip()}"
        except (OSError, ValueError, http.client.HTTPException) as e:  # the last: an answer that is not HTTP
            last = str(getattr(e, "reason", e)) or type(e).__name__
        if time.monotonic() >= end:
            sys.stderr.write(f"not ready after {timeout:g}s: {redact_url(url)}: {last}\n")
            return 1
        time.sleep(interval)
