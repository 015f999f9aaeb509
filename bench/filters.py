"""The filter benchmark (issue 16): what subscribers' own filters cost, and the plain path before and after.

    .venv/bin/python bench/filters.py            # about 4 minutes; writes its section of bench/RESULTS.md
    .venv/bin/python bench/filters.py --quick    # a smoke run, printed, RESULTS.md untouched

Two tables, each measured in this one run, rounds interleaved (A, B, A, B) so a
shared machine's load falls on both sides alike; the load average is printed
with the figures.

1. **Filters.** One daemon (this checkout), 1,000 subscribers of one sink, the
   same publishes (one POST per event at a fixed rate) three ways: no filter;
   each subscriber its own filter that passes every event (``k >= 0 and seq !=
   -<i>``: the filter's cost alone, the same deliveries); each its own filter
   that passes one event in ten (``k % 10 == <i mod 10> and seq != -<i>``). The
   daemon's CPU (``/proc``, user + system) per published event and per delivery,
   and the delivery latency (publish to read, one clock: the client publishes
   too) at p50 and p99. The client is Python (selectors, one process): every
   subscriber needs its own URL, which ``sseload`` does not do.
2. **The plain path, before and after.** ``sseload`` (bench/sseload.c, unchanged)
   against the main checkout's daemon and this one's, the same fan-out: CPU per
   delivery and latency. Skipped when there is no main checkout (``--main``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BEGIN = "<!-- filters: begin (written by bench/filters.py) -->"
END = "<!-- filters: end -->"

CONFIG = """\
sources:
  In: {{type: http, stream: S, schema: '{schema}', receiver.url: 'http://127.0.0.1:0/publish'}}
sinks:
  S: {{type: sse-server, stream: S, schema: '{schema}', server.host: 127.0.0.1, server.port: 0,
      server.path: /sub, heartbeat.interval: 0, drain.window: 0, max.connections.per.second: 0{extra}}}
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Daemon:
    """``twistd -n sse-daemon`` of a checkout, on a temporary config; its port read from its log."""

    def __init__(self, checkout: Path, workdir: Path, schema: str, extra: str = "", pin: list[str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "daemon.yaml"
        config.write_text(CONFIG.format(schema=schema, extra=extra))
        self.log = workdir / "daemon.log"
        self.log.write_text("")
        twistd = checkout / ".venv" / "bin" / "twistd"
        self.proc = subprocess.Popen([*(pin or []), str(twistd), "-n", "--pidfile=", "--logfile", str(self.log), "sse-daemon",
                                      "--config", str(config), "--stats-interval", "0"],
                                     cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+) for", self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"twistd did not listen:\n{self.log.read_text(errors='replace')[-2000:]}")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ---------------------------------------------------------------- the filter scenarios (Python client)

T_FIELD = re.compile(rb'"t":(\d+)')


def subscribe_all(port: int, paths: list[str]) -> tuple[selectors.EpollSelector, dict[int, bytearray]]:
    selector = selectors.EpollSelector()
    buffers: dict[int, bytearray] = {}
    for path in paths:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b"stream open" not in head:
            part = sock.recv(65536)
            if not part:
                raise RuntimeError(f"{path}: closed before the stream opened: {head[:300]!r}")
            head += part
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {head[:300]!r}")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock.fileno()] = bytearray()
    return selector, buffers


def publisher(port: int, count: int, rate: float, started: list[float]) -> None:
    """One keep-alive connection, one event per POST, at ``rate`` a second; ``t`` is the send time (monotonic µs)."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    started.append(time.monotonic())
    for seq in range(count):
        due = started[0] + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = json.dumps({"seq": seq, "t": time.monotonic_ns() // 1000, "k": seq % 100})
        connection.request("POST", "/publish", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"publish {seq}: {response.status}")
    connection.close()


def filter_round(daemon: Daemon, paths: list[str], expected: int, count: int, rate: float) -> dict[str, Any]:
    selector, buffers = subscribe_all(daemon.port, paths)
    latencies: list[int] = []
    delivered = 0
    started: list[float] = []
    cpu_before = daemon.cpu()
    thread = threading.Thread(target=publisher, args=(daemon.port, count, rate, started), daemon=True)
    thread.start()
    deadline = None
    while delivered < expected:
        for key, _ in selector.select(0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            now = time.monotonic_ns() // 1000
            buffer = buffers[sock.fileno()]
            buffer += data
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            for sent in T_FIELD.findall(buffer, 0, end):
                latencies.append(now - int(sent))
                delivered += 1
            del buffer[:end + 2]
        if not thread.is_alive():
            deadline = deadline or time.monotonic() + 10
            if time.monotonic() > deadline:
                break
    cpu = daemon.cpu() - cpu_before
    wall = time.monotonic() - started[0]
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    latencies.sort()
    return {"cpu": cpu, "wall": wall, "delivered": delivered, "expected": expected,
            "cpu_per_event_ms": cpu / count * 1000, "cpu_per_delivery_us": cpu / max(delivered, 1) * 1e6,
            "lat_p50_ms": latencies[len(latencies) // 2] / 1000 if latencies else None,
            "lat_p99_ms": latencies[int(len(latencies) * 0.99)] / 1000 if latencies else None}


def filter_paths(kind: str, subs: int) -> tuple[list[str], int]:
    """The subscribers' URLs and how many of every ten events each gets."""
    if kind == "none":
        return ["/sub"] * subs, 10
    if kind == "all":
        return [f"/sub?where={quote(f'k >= 0 and seq != -{i + 1}')}" for i in range(subs)], 10
    return [f"/sub?where={quote(f'k % 10 == {i % 10} and seq != -{i + 1}')}" for i in range(subs)], 1


# ---------------------------------------------------------------- the plain path before and after (sseload)

def build_sseload(outdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench: no C compiler (cc) found")
    out = outdir / "sseload"
    subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(out), str(BENCH / "sseload.c")], check=True)
    return out


def pins() -> tuple[list[str], list[str]]:
    """The daemon on CPU 0, the load client on CPU 1 (taskset), as bench/run.py pins them; none on one CPU."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    return [], []


def sseload_round(sseload: Path, daemon: Daemon, subs: int, count: int, rate: float) -> dict[str, Any]:
    client = subprocess.Popen([*pins()[1], str(sseload), "--port", str(daemon.port), "--sub-path", "/sub", "--pub-path", "/publish",
                               "--subs", str(subs), "--count", str(count), "--rate", str(rate)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    ready = json.loads(client.stdout.readline())
    if ready.get("connected") != subs:
        client.kill()
        raise RuntimeError(f"sseload: {ready}")
    before = daemon.cpu()
    client.stdin.write("go\n")
    client.stdin.flush()
    done = json.loads(client.stdout.readline())
    cpu = daemon.cpu() - before
    client.stdin.close()
    client.wait(30)
    return {"cpu": cpu, "delivered": done["delivered"], "expected": done["expected"],
            "cpu_per_delivery_us": cpu / max(done["delivered"], 1) * 1e6,
            "lat_p50_ms": done["lat_ms_p50"], "lat_p99_ms": done["lat_ms_p99"], "gaps": done["gaps"], "dups": done["dups"]}


# ---------------------------------------------------------------- the report

def median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rounds if r[key] is not None)


def section(results: dict[str, Any]) -> str:
    f = results["filters"]
    lines = [
        BEGIN,
        "## Subscribers' own filters, and the plain path before and after (issue 16)",
        "",
        f"`bench/filters.py`, {results['date']}, {results['cpus']} CPUs; load average "
        f"{results['load_before']} before, {results['load_after']} after (a shared machine: the rounds are "
        f"interleaved so its load falls on every row alike; medians of {results['rounds']} rounds).",
        "",
    ]
    if f["rounds"]["none"]:  # --rounds 0: the plain path alone
        lines += _filter_table(f)
    plain = results.get("plain")
    if plain:
        before, after = plain["rounds"]["main"], plain["rounds"]["branch"]
        lines += [
            "",
            f"**The plain path.** `sseload`: {plain['subs']:,} subscribers, {plain['count']} events at {plain['rate']:g}/s, "
            f"no filter, against the compared checkout's daemon (`--main`, at {plain['main_commit']}) and this one's "
            f"in the same run, {len(before)} rounds each, in turn (compared, this, this, compared, ...), the daemon "
            f"pinned to CPU 0 and sseload to CPU 1: medians.",
            "",
            "| daemon | deliveries | CPU per delivery | each round | latency p50 | latency p99 |",
            "|---|---|---|---|---|---|",
        ]
        for name, rounds in ((f"compared ({plain['main_commit']})", before), ("this checkout", after)):
            each = ", ".join(f"{r['cpu_per_delivery_us']:.2f}" for r in rounds)
            lines.append(f"| {name} | {median(rounds, 'delivered'):,.0f} of {rounds[0]['expected']:,} | "
                         f"{median(rounds, 'cpu_per_delivery_us'):.2f} µs | {each} | {median(rounds, 'lat_p50_ms'):.1f} ms | "
                         f"{median(rounds, 'lat_p99_ms'):.1f} ms |")
        ratio = median(after, "cpu_per_delivery_us") / median(before, "cpu_per_delivery_us")
        spread = [r["cpu_per_delivery_us"] for r in before + after]
        verdict = ("not slower" if ratio <= 1.0 else "within 5 %: not measurably slower" if ratio <= 1.05
                   else f"SLOWER by {ratio - 1:.0%}")
        lines += ["", f"Reading: this checkout's CPU per delivery is {ratio:.2f}x the compared one's on the plain path "
                      f"(each round from {min(spread):.2f} to {max(spread):.2f} µs with the machine's load): {verdict}."]
    lines.append(END)
    return "\n".join(lines)


def _filter_table(f: dict[str, Any]) -> list[str]:
    lines = [
        f"**Filters.** One sink, {f['subs']:,} subscribers, {f['count']} events published at {f['rate']:g}/s, one POST each. "
        "Each filtered subscriber has a filter of its own (its text differs from every other's). The daemon's CPU per "
        "published event and per delivery; latency from publish to the subscriber's read (the Python client, one clock).",
        "",
        "| subscribers' filters | deliveries | daemon CPU per event | CPU per delivery | latency p50 | latency p99 |",
        "|---|---|---|---|---|---|",
    ]
    names = {"none": "none", "all": f"{f['subs']:,} different, each passes every event",
             "tenth": f"{f['subs']:,} different, each passes 1 in 10"}
    for kind in ("none", "all", "tenth"):
        rounds = f["rounds"][kind]
        lines.append(f"| {names[kind]} | {median(rounds, 'delivered'):,.0f} of {rounds[0]['expected']:,} | "
                     f"{median(rounds, 'cpu_per_event_ms'):.2f} ms | {median(rounds, 'cpu_per_delivery_us'):.1f} µs | "
                     f"{median(rounds, 'lat_p50_ms'):.1f} ms | {median(rounds, 'lat_p99_ms'):.1f} ms |")
    none, every, tenth = (median(f["rounds"][k], "cpu_per_event_ms") for k in ("none", "all", "tenth"))
    lines += [
        "",
        f"Reading: a filter on each of {f['subs']:,} subscribers costs {every / none:.2f}x the CPU per event of no filters when "
        f"every event passes (the same deliveries: {(every - none) / f['subs'] * 1000:.1f} µs per subscriber per event for "
        f"the filter and the subscriber's own join), and {tenth / none:.2f}x when one in ten passes (a tenth of the writes). "
        "The latencies are read by a Python client that handles every delivery itself on the same two busy cores: "
        "they show no filter delay (the rows with filters are not slower), not the daemon's own latency; "
        "the plain path's below come from sseload (C).",
    ]
    return lines


def put_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Fan-out benchmark results\n"
    begin, end = old.find(BEGIN), old.find(END)
    new = old[:begin] + text + old[end + len(END):] if begin >= 0 and end > begin else old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main_worktree() -> Path:
    """The worktree of this repository that has the main branch checked out (or a path that does not exist)."""
    listing = subprocess.run(["git", "-C", str(ROOT), "worktree", "list", "--porcelain"], capture_output=True, text=True).stdout
    path = None
    for line in listing.splitlines():
        if line.startswith("worktree "):
            path = line.partition(" ")[2]
        elif line == "branch refs/heads/main" and path is not None:
            return Path(path)
    return ROOT / "no-main-worktree"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer subscribers and events; RESULTS.md untouched")
    ap.add_argument("--main", type=Path, default=main_worktree(), help="the checkout to compare the plain path with "
                    "(default: this repository's worktree of the main branch)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the filter scenarios (0: the plain path alone, printed)")
    ap.add_argument("--plain-rounds", type=int, default=6, help="rounds of the plain path, main and this checkout in turn (ABBA)")
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    ap.add_argument("--render", action="store_true", help="write the section again from bench/RESULTS-filters.json, without running")
    args = ap.parse_args()
    if args.render:
        put_section(args.out, section(json.loads((BENCH / "RESULTS-filters.json").read_text())))
        return 0
    subs, count, rate = (100, 40, 20.0) if args.quick else (1000, 300, 25.0)
    plain_subs, plain_count, plain_rate = (100, 200, 100.0) if args.quick else (1000, 2000, 200.0)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                               "load_before": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "rounds": args.rounds}
    work = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    try:
        schema = "seq long, t long, k int"
        daemon = Daemon(ROOT, work / "filters", schema, ", subscriber.where: true, subscriber.queue.size: 100000")
        try:
            rounds: dict[str, list[dict[str, Any]]] = {"none": [], "all": [], "tenth": []}
            for n in range(args.rounds):
                for kind in rounds:
                    paths, tenths = filter_paths(kind, subs)
                    result = filter_round(daemon, paths, count * subs * tenths // 10, count, rate)
                    rounds[kind].append(result)
                    print(f"filters {kind} round {n + 1}: {json.dumps(result)}", flush=True)
        finally:
            daemon.stop()
        results["filters"] = {"subs": subs, "count": count, "rate": rate, "rounds": rounds}
        if (args.main / ".venv" / "bin" / "twistd").exists():
            sseload = build_sseload(work)
            plain: dict[str, list[dict[str, Any]]] = {"main": [], "branch": []}
            for n in range(args.plain_rounds):
                pair = (("main", args.main), ("branch", ROOT))
                for name, checkout in (pair if n % 4 in (0, 3) else pair[::-1]):  # main, this, this, main, ...: drift falls on both
                    daemon = Daemon(checkout, work / f"plain-{name}-{n}", "m string", pin=pins()[0])
                    try:
                        result = sseload_round(sseload, daemon, plain_subs, plain_count, plain_rate)
                    finally:
                        daemon.stop()
                    plain[name].append(result)
                    print(f"plain {name} round {n + 1}: {json.dumps(result)}", flush=True)
            results["plain"] = {"subs": plain_subs, "count": plain_count, "rate": plain_rate, "rounds": plain,
                                "main_commit": subprocess.run(["git", "-C", str(args.main), "rev-parse", "--short", "HEAD"],
                                                              capture_output=True, text=True).stdout.strip()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    text = section(results)
    print(text)
    if not args.quick and args.rounds:  # --rounds 0 (the plain path alone) prints, and keeps the filter rows written
        put_section(args.out, text)
        (BENCH / "RESULTS-filters.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
