"""Kept-alive publishers through a SIGTERM drain of a real ``twistd`` (docs/reliability-deadlines.md).

An ingest and a sink on one port (``drain.window: 2``, ``drain.batch.min: 1``), three
subscribers, four publishers each POSTing one event after another on one kept-alive connection;
SIGTERM after one second. Prints the answers after the signal and the events answered 200 that
no subscriber received. ``--tree`` runs another checkout's sse_daemon (see bench/slow_clients.py)::

    .venv/bin/python -m bench.drain_publishers
    .venv/bin/python -m bench.drain_publishers --tree /tmp/old
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from bench.slow_clients import ROOT, TWISTD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose sse_daemon runs")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    config = folder / "sse.yaml"
    config.write_text(textwrap.dedent("""\
        sources:
          In: {type: http, stream: S, schema: "n int", receiver.url: "http://127.0.0.1:0/in"}
        sinks:
          Events: {type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events, drain.window: 2, drain.batch.min: 1}
        """))
    log = folder / "out"
    process = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "sse-daemon", "--config", str(config)],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(args.tree)), cwd=folder)
    for _ in range(600):  # bounded: 30 s
        found = re.search(rb"listening on 127\.0\.0\.1:(\d+) for", log.read_bytes())
        if found:
            break
        time.sleep(0.05)
    port = int(found.group(1))
    received: list[set[int]] = []
    answers: list[tuple[float, int, object, str | None, str | None]] = []  # (time, n, status, Retry-After, Connection)

    def subscriber() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        received.append({int(n) for n in re.findall(rb'"n":(\d+)', data)})

    def publisher(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for k in range(100_000):  # bounded
            n = index * 1_000_000 + k
            try:
                connection.request("POST", "/in", body=json.dumps({"n": n}), headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as e:
                answers.append((time.time(), n, type(e).__name__, None, None))
                return
            answers.append((time.time(), n, response.status, response.getheader("Retry-After"), response.getheader("Connection")))
            if response.status != 200:
                return

    subscribers = [threading.Thread(target=subscriber) for _ in range(3)]
    for thread in subscribers:
        thread.start()
    time.sleep(0.5)
    publishers = [threading.Thread(target=publisher, args=(i + 1,)) for i in range(4)]
    for thread in publishers:
        thread.start()
    time.sleep(1.0)
    signalled = time.time()
    process.send_signal(signal.SIGTERM)
    for thread in (*publishers, *subscribers):
        thread.join(30)
    process.wait(30)
    after = [a for a in answers if a[0] > signalled]
    acked = {a[1] for a in answers if a[2] == 200}
    everyone = set().union(*received)
    refused = [a for a in after if a[2] == 503]
    print(f"answered 200 before SIGTERM: {sum(1 for a in answers if a[0] <= signalled and a[2] == 200)}; after: "
          f"{sum(1 for a in after if a[2] == 200)} x 200, {len(refused)} x 503 (Retry-After {sorted({a[3] for a in refused})}, "
          f"Connection {sorted({a[4] for a in refused})}), other endings {[a[2] for a in after if a[2] not in (200, 503)]}")
    print(f"events answered 200 that reached no subscriber: {len(acked - everyone)} of {len(acked)}; exit status {process.returncode}")


if __name__ == "__main__":
    main()
