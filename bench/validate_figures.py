"""The figures of docs/reliability-validate.md, against a daemon already running (see the doc for its configs).

    python bench/validate_figures.py freeze PORT [EVENTS]   # B's delivery delay while one body of tiny events goes to A
    python bench/validate_figures.py redis-mix PORT         # honest publishes refused while 5 bad bodies/s arrive
    python bench/validate_figures.py log-volume PORT N      # N lone-surrogate bodies (compare the daemon's log before/after)

Plain blocking sockets in threads: the client must not share the daemon's reactor.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time


def freeze(port: int, events: int) -> None:
    delays: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /b-events HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while not stop.is_set():
            buf += s.recv(65536)
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        delays.append(time.time() - json.loads(line[6:])["event"]["t"])

    def ticker() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port)
        while not stop.is_set():
            c.request("POST", "/b", json.dumps({"t": time.time()}))
            c.getresponse().read()
            time.sleep(0.01)

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(0.3)
    threading.Thread(target=ticker, daemon=True).start()
    time.sleep(1.0)
    count = events or (1 << 20) // 8 - 1  # one MiB of {"n":1},
    body = "[" + ",".join('{"n":1}' for _ in range(count)) + "]"
    before = len(delays)
    c = http.client.HTTPConnection("127.0.0.1", port)
    started = time.time()
    c.request("POST", "/a", body)
    response = c.getresponse()
    answer = response.read()
    took = time.time() - started
    time.sleep(1.0)
    stop.set()
    during = delays[before:]
    print(f"body {len(body)} bytes, {count} events: HTTP {response.status} {answer[:60]!r} in {took * 1000:.0f} ms")
    print(f"B delivery delay meanwhile: max {max(during) * 1000:.0f} ms, median {sorted(during)[len(during) // 2] * 1000:.1f} ms "
          f"({len(during)} events); before: max {max(delays[:before]) * 1000:.0f} ms")


def redis_mix(port: int, seconds: float = 10.0) -> None:
    stop = time.time() + seconds
    honest: dict[int, int] = {}
    bad: dict[int, int] = {}

    def run(body: bytes, out: dict[int, int], pause: float) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port)
        while time.time() < stop:
            c.request("POST", "/in", body)
            r = c.getresponse()
            r.read()
            out[r.status] = out.get(r.status, 0) + 1
            time.sleep(pause)

    threads = [threading.Thread(target=run, args=(b'{"n":1,"s":"ok"}', honest, 0.01)),
               threading.Thread(target=run, args=(b'{"n":2,"s":"x\\ud800"}', bad, 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(honest.values())
    print(f"honest: {honest} ({100 * (total - honest.get(200, 0)) / total:.0f} % refused); bad: {bad}")


def log_volume(port: int, count: int) -> None:
    body = b'{"param1":"x\\ud800"}'
    c = http.client.HTTPConnection("127.0.0.1", port)
    codes: dict[int, int] = {}
    for _ in range(count):
        c.request("POST", "/in", body)
        r = c.getresponse()
        r.read()
        codes[r.status] = codes.get(r.status, 0) + 1
    print(f"{count} posts, {count * len(body)} bytes of body: answers {codes}")


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "freeze":
        freeze(port, int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    elif mode == "redis-mix":
        redis_mix(port)
    else:
        log_volume(port, int(sys.argv[3]))
