"""Slow clients against a real ``twistd`` under a low ``ulimit -n`` (docs/reliability-deadlines.md).

Starts ``twistd -n sse-daemon`` (an ingest and a sink on one port, the given port options) with
``ulimit -n NOFILE``, opens CONNS connections from 127.0.0.2 that send a request head one byte
every EVERY seconds, and every few seconds tries a subscriber and a publisher from 127.0.0.1.
Prints, as it goes, the attacker's open connections, the daemon's descriptors and what the
legitimate clients got; then when the daemon closed the slow connections, what they received,
the daemon's CPU time and its EMFILE log lines. ``--tree`` runs another checkout's sse_daemon
(for the figures before a change: ``git archive <commit> | tar -x -C /tmp/old``)::

    .venv/bin/python -m bench.slow_clients --every 20 --run 25
    .venv/bin/python -m bench.slow_clients --every 20 --run 25 --options ', server.max.connections.per.address: 64'
    .venv/bin/python -m bench.slow_clients --every 20 --run 25 --tree /tmp/old
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def start(tree: Path, nofile: int, options: str, folder: Path) -> tuple[subprocess.Popen, int, Path]:
    config = folder / "sse.yaml"
    config.write_text(textwrap.dedent(f"""\
        sources:
          In: {{type: http, stream: S, schema: "n int", receiver.url: "http://127.0.0.1:0/in"{options}}}
        sinks:
          Events: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, heartbeat.interval: 1{options}}}
        """))
    log = folder / "out"
    command = f"ulimit -n {nofile} && exec \"$0\" -c \"$1\" -n --pidfile= sse-daemon --config {config}"
    process = subprocess.Popen(["sh", "-c", command, sys.executable, TWISTD], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env=dict(os.environ, PYTHONPATH=str(tree)), cwd=folder)
    for _ in range(600):  # bounded: 30 s
        found = re.search(rb"listening on 127\.0\.0\.1:(\d+) for", log.read_bytes())
        if found:
            return process, int(found.group(1)), log
        time.sleep(0.05)
    raise SystemExit(log.read_text())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def legit(port: int, kind: str) -> str:
    """One subscribe or publish from 127.0.0.1: the status line, or what went wrong."""
    with socket.socket() as s:
        s.settimeout(3)
        s.bind(("127.0.0.1", 0))
        try:
            s.connect(("127.0.0.1", port))
            if kind == "subscriber":
                s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            else:
                s.sendall(b'POST /in HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 8\r\n\r\n{"n": 1}')
            data = s.recv(200)
            return data.split(b"\r\n")[0].decode() if data else "closed without an answer"
        except OSError as e:
            return type(e).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose sse_daemon runs")
    parser.add_argument("--nofile", type=int, default=256)
    parser.add_argument("--conns", type=int, default=300)
    parser.add_argument("--every", type=float, default=20.0, help="seconds between two bytes of a slow connection")
    parser.add_argument("--run", type=float, default=25.0)
    parser.add_argument("--options", default="", help="port options appended to both connectors, e.g. ', server.head.timeout: 5'")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    process, port, log = start(args.tree, args.nofile, args.options, folder)
    head = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400
    started, cpu = time.time(), cpu_seconds(process.pid)
    slow: list[dict] = []
    for _ in range(args.conns):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            slow.append({"sock": s, "sent": 0, "closed": None, "got": b""})
        except OSError as e:
            slow.append({"sock": None, "sent": 0, "closed": 0.0, "got": type(e).__name__.encode()})
    print(f"opened {sum(1 for c in slow if c['sock'])} of {args.conns} slow connections; daemon descriptors {descriptors(process.pid)}", flush=True)
    next_byte, reported = time.time(), set()
    while time.time() - started < args.run:
        now = time.time()
        for c in slow:
            if c["sock"] is None or c["closed"] is not None:
                continue
            try:
                data = c["sock"].recv(4096)
                if data:
                    c["got"] += data
                else:
                    c["closed"] = now - started
            except BlockingIOError:
                pass
            except OSError as e:
                c["closed"], c["got"] = now - started, c["got"] + type(e).__name__.encode()
        if now >= next_byte:
            for c in slow:
                if c["sock"] is not None and c["closed"] is None and c["sent"] < len(head):
                    try:
                        c["sock"].send(head[c["sent"]:c["sent"] + 1])
                        c["sent"] += 1
                    except OSError:
                        pass
            next_byte = now + args.every
        second = int(now - started)
        if second in (1, 3, 6, 9, 12, 15, 20, 25, 30, 45, 60) and second not in reported:
            reported.add(second)
            still = sum(1 for c in slow if c["sock"] and c["closed"] is None)
            print(f"t={second}s: slow connections open {still}, daemon descriptors {descriptors(process.pid)}, "
                  f"subscriber: {legit(port, 'subscriber')}, publisher: {legit(port, 'publisher')}", flush=True)
        time.sleep(0.05)
    used = cpu_seconds(process.pid) - cpu
    closed = sorted(c["closed"] for c in slow if c["closed"] is not None)
    answers: dict[str, int] = {}
    for c in slow:
        key = c["got"].split(b"\r\n")[0][:40].decode(errors="replace") or ("(open)" if c["closed"] is None else "(closed, nothing)")
        answers[key] = answers.get(key, 0) + 1
    process.terminate()
    process.wait(30)
    text = log.read_text(errors="replace")
    print(f"daemon CPU over the run: {used:.2f}s of {args.run:g}s")
    print(f"slow connections closed by the daemon: {len(closed)}"
          + (f", first/median/last at {closed[0]:.1f}/{closed[len(closed) // 2]:.1f}/{closed[-1]:.1f}s" if closed else ""))
    print(f"what the slow connections received: {answers}")
    print(f"log lines: {len(text.splitlines())}, of which EMFILE: {text.count('EMFILE')}")


if __name__ == "__main__":
    main()
