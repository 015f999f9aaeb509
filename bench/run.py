"""The fan-out benchmark: sse-daemon against its peers, in one run, on this machine.

    .venv/bin/python bench/run.py            # the full run (about 13 minutes), writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # tiny versions of every scenario (seconds)
    .venv/bin/python bench/run.py --history  # history.path set against unset (about 3 minutes): its section of RESULTS.md

Builds the C load client (bench/sseload.c, ``cc -O2``), then for each scenario and
each server starts the server fresh (pinned to CPU 0 with taskset when there are two
cores; the 2-worker daemon is not pinned), connects the subscribers from the client
(pinned to CPU 1), publishes, and reads the server's CPU and memory from /proc.
Servers: the daemon (a real ``twistd -n sse-daemon`` on a temporary config: an http
ingest and an sse-server sink on one port, heartbeat off, history as default), the same
daemon with ``worker.count: 2`` on the sink (the ingest on a port of its own; measured
as twistd plus its two worker processes), sse-starlette under uvicorn
(bench/peer_starlette.py) and Nchan (Debian's nginx + libnginx-mod-nchan), when
installed. Everything is on 127.0.0.1, and every client run is bounded in count and time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCHAN_MODULES = [Path("/usr/lib/nginx/modules/ngx_nchan_module.so"), Path("/usr/share/nginx/modules/ngx_nchan_module.so")]


# ---------------------------------------------------------------- scenarios

@dataclass
class Scenario:
    key: str
    title: str
    subs: int
    count: int = 0  # events to publish (0: idle, nothing published)
    rate: float = 0  # events/s, 0 as fast as possible
    pad: int = 0  # padding bytes per event
    slow: int = 0  # subscribers that read nothing
    pipeline: int = 1  # requests in flight on each publisher connection
    publishers: int = 1  # publisher connections (keep-alive), the events shared between them
    batch: int = 1  # events per POST (a JSON array when above 1); with ndjson, lines per chunk
    ndjson: bool = False  # each publisher streams its events as NDJSON lines of one chunked POST
    external: bool = False  # no publishers: the server's upstream writes the events (bench/relay.py), `Server.go` starts it
    max_seconds: float = 60
    hold: float = 0.5  # idle: seconds to wait before reading memory
    repeat: int = 1  # runs per server; the median one is reported (this VM's figures vary run to run)
    median_of: str = "lat_ms_p99"  # the figure that picks the median run


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [
            Scenario("A", "A: 100 subscribers, small events as fast as possible", 20, count=200, pipeline=4, max_seconds=5),
            Scenario("B200", "B: 1,000 subscribers, 200 events/s offered", 50, count=40, rate=200, max_seconds=5),
            Scenario("B20", "B: 1,000 subscribers, 20 events/s (latency)", 50, count=10, rate=20, max_seconds=5),
            Scenario("C1k", "C: 1k idle subscribers", 100),
            Scenario("Dref", "D (reference): 100 fast subscribers, no slow one", 20, count=100, rate=200, pad=200, max_seconds=5),
            Scenario("D", "D: 1 subscriber that reads nothing among 100 fast ones", 20, count=100, rate=200, pad=200, slow=1, max_seconds=5),
            Scenario("E", "E: 2 KiB events at 100/s to 100 subscribers", 20, count=20, rate=100, pad=2048, max_seconds=5),
        ]
    return [
        Scenario("A", "A: 100 subscribers, 20,000 small events as fast as possible (at most 40 s; median of 3 runs)", 100,
                 count=20000, pipeline=4, max_seconds=40, repeat=3, median_of="deliveries_per_s"),
        Scenario("B200", "B: 1,000 subscribers, 200 events/s offered for 20 s", 1000, count=4000, rate=200, max_seconds=25),
        Scenario("B20", "B: 1,000 subscribers, 20 events/s for 10 s (latency; median of 3 runs)", 1000, count=200, rate=20,
                 max_seconds=15, repeat=3),
        Scenario("C1k", "C: 1k idle subscribers", 1000, hold=1),
        Scenario("C5k", "C: 5k idle subscribers", 5000, hold=1),
        Scenario("C10k", "C: 10k idle subscribers", 10000, hold=2),
        Scenario("Dref", "D (reference): 100 fast subscribers at 100 events/s of 8 KB, no slow one, 10 s", 100,
                 count=1000, rate=100, pad=8000, max_seconds=15),
        Scenario("D", "D: 1 subscriber that reads nothing among 100 fast ones, 100 events/s of 8 KB, 30 s", 100,
                 count=3000, rate=100, pad=8000, slow=1, max_seconds=35),
        Scenario("E", "E: 2 KiB events at 100/s to 100 subscribers, 10 s (median of 3 runs)", 100, count=1000, rate=100,
                 pad=2048, max_seconds=15, repeat=3),
    ]


def history_scenarios(quick: bool) -> list[Scenario]:
    """``--history``: what keeping the history in a file costs. HP: the publish rate, what one keep-alive
    publisher with 4 requests in flight gets acknowledged, with one subscriber (fan-out costs next to
    nothing there); HP16: the same from 16 publishers at once, whose events can share commits. HF: fan-out at an offered rate both sustain, 100 subscribers: deliveries/s, latency
    and CPU per delivery. HA: scenario A's load (as fast as possible), where publishing and fan-out share
    the one CPU. Each run on a fresh server and a fresh file."""
    if quick:
        return [Scenario("HP", "HP: publish rate, 1 subscriber, small events as fast as possible", 1, count=200,
                         pipeline=4, max_seconds=5, median_of="publish_rate"),
                Scenario("HP16", "HP16: publish rate, 16 publishers, 1 subscriber", 1, count=200, publishers=16,
                         max_seconds=5, median_of="publish_rate"),
                Scenario("HF", "HF: fan-out, 20 subscribers, 200 events/s", 20, count=100, rate=200, max_seconds=5,
                         median_of="deliveries_per_s")]
    return [
        Scenario("HP", "HP: publish rate: 1 subscriber, 20,000 small events as fast as possible, 4 POSTs in flight "
                 "(at most 40 s; median of 3 runs)", 1, count=20000, pipeline=4, max_seconds=40, repeat=3,
                 median_of="publish_rate"),
        Scenario("HP16", "HP16: publish rate: 1 subscriber, 20,000 small events as fast as possible from 16 keep-alive "
                 "publishers, one POST in flight each (at most 40 s; median of 3 runs)", 1, count=20000, publishers=16,
                 max_seconds=40, repeat=3, median_of="publish_rate"),
        Scenario("HF", "HF: fan-out: 100 subscribers, 500 events/s offered for 10 s (median of 3 runs by p99 latency)",
                 100, count=5000, rate=500, max_seconds=15, repeat=3),
        Scenario("HA", "HA: 100 subscribers, 20,000 small events as fast as possible (scenario A's load; at most 40 s; "
                 "median of 3 runs)", 100, count=20000, pipeline=4, max_seconds=40, repeat=3,
                 median_of="deliveries_per_s"),
    ]


def median_run(runs: list[dict[str, Any]], key: str = "lat_ms_p99") -> dict[str, Any]:
    """One run as it is, or of several the one with the median ``key`` (each run's value listed in it)."""
    if len(runs) == 1:
        return runs[0]
    measured = sorted((r for r in runs if isinstance(r.get(key), (int, float))), key=lambda r: r[key])
    if not measured:
        return runs[0]
    chosen = dict(measured[(len(measured) - 1) // 2])
    chosen["runs"] = " / ".join(fmt(r[key], 2 if key.startswith("lat") else 0) for r in measured)
    if len(measured) < len(runs):
        chosen["runs"] += f" ({len(runs) - len(measured)} run(s) failed)"
    return chosen


# ---------------------------------------------------------------- /proc

def proc_cpu(pid: int, reaped: bool = False) -> float:
    """User + system CPU seconds of a process; with ``reaped``, plus those of its children that
    have ended and been waited for (a worker process that was restarted)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if reaped else 0)) / CLK_TCK


def proc_children(pid: int) -> list[int]:
    """The live child processes of ``pid``: /proc/<pid>/task/*/children, else a scan of /proc for its ppid."""
    try:
        return sorted({int(c) for task in os.listdir(f"/proc/{pid}/task")
                       for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()})
    except OSError:  # no CONFIG_PROC_CHILDREN, or the process is gone
        pass
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(kids)


def proc_sockets(pid: int) -> int:
    """How many sockets a process holds open (a worker: its subscribers, plus a few)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except OSError:
                pass
    except OSError:
        pass
    return n


def rss_sum(pids: list[int], key: str = "VmRSS") -> int:
    """A /proc/<pid>/status figure summed over processes (one that has ended counts 0)."""
    total = 0
    for pid in pids:
        try:
            total += proc_status(pid, key)
        except OSError:
            pass
    return total


def tree_cpu(root: int, children: list[int]) -> tuple[float, dict[int, float]]:
    """CPU seconds of ``root`` with its reaped children, plus each live one of ``children``."""
    per = {root: proc_cpu(root, reaped=True)}
    for pid in children:
        try:
            per[pid] = proc_cpu(pid)
        except OSError:  # ended since: its CPU is in root's reaped figure once it is waited for
            pass
    return sum(per.values()), per


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` figure of /proc/<pid>/status (VmRSS, VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """RSS of the server's processes (summed) every 100 ms, with the time of each sample."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                proc_status(self.pids[0], "VmRSS")  # the server itself has ended: stop
            except OSError:
                return
            self.samples.append((time.monotonic(), rss_sum(self.pids)))
            self.stop.wait(0.1)

    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def slope(self, since: float, until: float) -> float:
        """Least-squares RSS growth in KiB/s over [since, until]."""
        pts = [(t, r) for t, r in self.samples if since <= t <= until]
        if len(pts) < 3:
            return 0.0
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mr = sum(r for _, r in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        return sum((t - mt) * (r - mr) for t, r in pts) / var if var else 0.0


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class Server:
    name = "?"
    sub_path = "/sub"
    pub_path = "/publish"
    #: pinned to the server's CPU (taskset) when there are two; False: free on every CPU
    pinned = True
    #: measured with its child processes: CPU and RSS summed over ``pid`` and its children
    tree = False

    def __init__(self, workdir: Path, pin: list[str]) -> None:
        self.workdir = workdir
        self.pin = pin
        self.proc: subprocess.Popen | None = None
        self.port = 0  # where subscribers connect
        self.pub_port = 0  # where the publisher POSTs, when not on ``port``

    @property
    def pid(self) -> int:  # the process that serves (nginx: its one worker)
        assert self.proc is not None
        return self.proc.pid

    def measured_pids(self) -> list[int]:
        """The processes whose CPU and memory are the server's: ``pid``, and with ``tree`` its children."""
        return [self.pid, *proc_children(self.pid)] if self.tree else [self.pid]

    def after_run(self, result: dict[str, Any]) -> None:
        """Adds what the server itself says about the run (its log) to ``result``."""

    def go(self) -> None:
        """Called as the load starts: a server that writes its own events (an upstream) starts them here."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Daemon(Server):
    name = "sse-daemon"
    #: the sink's worker.count; above 1 the ingest gets a port of its own (the sink's is the workers')
    workers = 1
    #: more options of the sink, as YAML flow-mapping entries (", key: value")
    sink_extra = ""

    def config_text(self) -> str:
        return (
            getattr(self, "extra_config", "") +
            "sources:\n"
            "  In: {type: http, stream: S, schema: 'm string', receiver.url: 'http://127.0.0.1:0/publish'}\n"
            "sinks:\n"
            "  S: {type: sse-server, stream: S, schema: 'm string', server.host: 127.0.0.1, server.port: 0,\n"
            "      server.path: /sub, heartbeat.interval: 0, drain.window: 0" + self.sink_extra +
            (f", worker.count: {self.workers}" if self.workers > 1 else "") + "}\n"
        )

    def start(self) -> None:
        config = self.workdir / "daemon.yaml"
        config.write_text(self.config_text())
        self.log = self.workdir / "daemon.log"
        self.log.write_text("")
        self.proc = subprocess.Popen(
            [*self.pin, str(Path(PY).parent / "twistd"), "-n", "--pidfile=", "--logfile", str(self.log),
             "sse-daemon", "--config", str(config), "--stats-interval", "0"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self._listening(self.log.read_text(errors="replace")):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"twistd did not listen:\n{self.log.read_text(errors='replace')[-2000:]}")

    def _listening(self, log: str) -> bool:
        """Reads the port(s) from the log; True once the daemon serves (with workers: all of them)."""
        if self.workers == 1:  # one listener: the ingest and the sink share its port
            m = re.search(r"listening on 127\.0\.0\.1:(\d+) for", log)
            if m:
                self.port = int(m.group(1))
            return bool(m)
        sink = re.search(r"listening on 127\.0\.0\.1:(\d+) for sink 'S' with (\d+) worker processes", log)
        ingest = re.search(r"listening on 127\.0\.0\.1:(\d+) for source 'In'", log)
        serving = set(re.findall(r"worker (\d+) of sink S serving", log))
        if not (sink and ingest and len(serving) >= self.workers):
            return False
        self.port, self.pub_port = int(sink.group(1)), int(ingest.group(1))
        return True

    def after_run(self, result: dict[str, Any]) -> None:
        log = self.log.read_text(errors="replace")
        result["log_tracebacks"] = log.count("Traceback (most recent call last)")
        if self.workers == 1:
            return
        result["worker_restarts"] = len(re.findall(r"worker \d+ of sink S \(pid \d+\) ended after", log))
        result["worker_kills_behind"] = len(re.findall(r"bytes behind: killed", log))


class WorkerDaemon(Daemon):
    """The daemon with ``worker.count: 2`` on the sink: twistd binds the sink's port and two worker
    processes (its children) accept the subscribers on it; twistd takes the POSTs on the ingest's own
    port and feeds both workers over pipes. Measured as the sum of the three processes, not pinned."""

    name = "sse-daemon (2 workers)"
    workers = 2
    pinned = False
    tree = True


class HistoryFileDaemon(Daemon):
    """The daemon with ``history.path`` on the sink: its history in a SQLite file (WAL) in the run's
    temporary directory, and each POST answered once its events are committed there."""

    name = "sse-daemon (history file)"

    def start(self) -> None:
        for stale in self.workdir.glob("history.sqlite3*"):  # each run starts with an empty file
            stale.unlink()
        self.sink_extra = f", history.path: '{self.workdir / 'history.sqlite3'}'"
        super().start()


class RedisDaemon(Daemon):
    """The daemon with ``bus: {type: redis}``: every event goes through a local redis-server
    (XADD, then XREAD back) before it reaches subscribers. Its CPU is not in the daemon's."""

    name = "sse-daemon (redis bus)"

    def start(self) -> None:
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.redis_port, self.redis)
        self.extra_config = f"bus: {{type: redis, url: 'redis://127.0.0.1:{self.redis_port}/0'}}\n"
        super().start()

    def stop(self) -> None:
        super().stop()
        if getattr(self, "redis", None) is not None:
            self.redis.terminate()
            self.redis.wait(10)
            self.redis = None


def ensure_peer_packages() -> str | None:
    """uvloop and httptools for the sse-starlette peer (uvicorn as its users run it for speed), installed
    into this environment when missing; None when they are there, else why not."""
    missing = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m) is None]
    if missing:
        subprocess.run([PY, "-m", "pip", "install", "--quiet", *missing], check=False)
        importlib.invalidate_caches()
    missing = [m for m in missing if importlib.util.find_spec(m) is None]
    return f"could not install {', '.join(missing)}" if missing else None


class Starlette(Server):
    name = "sse-starlette"

    def start(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([*self.pin, PY, str(BENCH / "peer_starlette.py"), str(self.port)],
                                     cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port(self.port, self.proc)


class Nchan(Server):
    name = "Nchan"

    @staticmethod
    def available() -> str | None:
        """None when nginx and the nchan module are here, else why not."""
        if not Path("/usr/sbin/nginx").exists():
            return "nginx is not installed"
        if not any(p.exists() for p in NCHAN_MODULES):
            return "libnginx-mod-nchan is not installed (as root: apt-get install -y libnginx-mod-nchan)"
        return None

    @property
    def pid(self) -> int:
        return self.worker

    def start(self) -> None:
        self.port = free_port()
        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        module = next(p for p in NCHAN_MODULES if p.exists())
        conf = prefix / "nginx.conf"
        conf.write_text(f"""\
load_module {module};
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_buffer_size 64k;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location = /sub {{
      nchan_subscriber eventsource;
      nchan_channel_id bench;
      nchan_eventsource_ping_interval 0;
    }}
    location = /publish {{
      nchan_publisher;
      nchan_channel_id bench;
      nchan_message_buffer_length 100;
      nchan_message_timeout 60s;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen([*self.pin, "/usr/sbin/nginx", "-p", str(prefix), "-c", str(conf)],
                                     cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port(self.port, self.proc)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if children:
                self.worker = int(children[0])
                return
            time.sleep(0.05)
        raise RuntimeError("nginx started no worker")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful; SIGTERM is fast shutdown: both fine
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        super().stop()


# ---------------------------------------------------------------- one measurement

def run_one(server: Server, sc: Scenario, client: Path, pin_client: list[str], profile: Path | None = None,
            keep: bool = False) -> dict[str, Any]:
    """One scenario on ``server``; with ``keep`` (--quick) a server already running is reused and left running."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
        time.sleep(0.3)
    try:
        pid = server.pid
        pids = server.measured_pids()  # with ``tree``: twistd and its workers, which live as long as it does
        rss_base = rss_sum(pids)
        sampler = Sampler(pids)
        sampler.start()
        pub = ["--pub-port", str(server.pub_port)] if server.pub_port and server.pub_port != server.port else []
        args = [*pin_client, str(client), "--port", str(server.port), *pub, "--sub-path", server.sub_path,
                "--pub-path", server.pub_path, "--subs", str(sc.subs), "--slow", str(sc.slow),
                "--count", str(sc.count), "--rate", str(sc.rate), "--pad", str(sc.pad),
                "--pipeline", str(sc.pipeline), "--publishers", str(sc.publishers), "--batch", str(sc.batch),
                *(["--ndjson"] if sc.ndjson else []), *(["--external"] if sc.external else []),
                "--max-seconds", str(sc.max_seconds), "--connect-seconds", "90",
                "--max-pending", "40"]  # under Twisted's default listen backlog of 50
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(proc.stdout.readline())
            time.sleep(sc.hold if sc.count == 0 else 0.3)
            rss_ready = rss_sum(pids)
            if server.tree:
                sockets = [proc_sockets(p) for p in pids]
                cpu0, per0 = tree_cpu(pid, pids[1:])
            else:
                cpu0 = proc_cpu(pid)
            t_go = time.monotonic()
            spies: list[subprocess.Popen] = []
            if profile is not None and sc.count:
                spies = start_profile(pid, profile, sc.max_seconds)
            if sc.count:
                server.go()
            proc.stdin.write("go\n" if sc.count else "quit\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            t_done = time.monotonic()
            done = json.loads(line) if line.strip() else {}
            if server.tree:  # the children now: a worker restarted meanwhile is in twistd's reaped CPU
                children_end = proc_children(pid)
                cpu1, per1 = tree_cpu(pid, children_end)
                cpu = cpu1 - cpu0
            else:
                cpu = proc_cpu(pid) - cpu0
            rss_end = rss_sum(pids)
            hwm = rss_sum(pids, "VmHWM")  # summed: an upper bound of the processes' joint peak
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
        finally:
            proc.stdin.close()
            proc.wait(30)
        sampler.stop.set()
        sampler.join()
        result: dict[str, Any] = {
            "server": server.name, "scenario": sc.key, "ready": ready, **done,
            "server_cpu": round(cpu, 3), "rss_base_kib": rss_base, "rss_ready_kib": rss_ready,
            "rss_end_kib": rss_end, "rss_peak_kib": max(sampler.peak(), rss_ready, rss_end), "vmhwm_kib": hwm,
        }
        if server.tree:
            result["processes"] = len(pids)
            result["sockets_by_process"] = sockets  # [twistd, worker, ...] at ready: the subscribers' split
            result["cpu_by_process"] = [round(per1.get(pid, 0) - per0.get(pid, 0), 3)] + [
                round(per1[c] - per0.get(c, 0), 3) for c in children_end if c in per1]
            result["children_changed"] = sorted(children_end) != sorted(pids[1:])
            result["sockets_split"] = " / ".join(f"{n:,}" for n in sockets)
            result["cpu_split"] = " / ".join(f"{c:.2f}" for c in result["cpu_by_process"])
        server.after_run(result)
        connected = ready.get("connected", 0)
        if sc.count == 0 and connected:
            result["idle_kib_per_sub"] = round((rss_ready - rss_base) / connected, 2)
        published = done.get("published", 0)
        if published:
            result["cpu_us_per_published"] = round(cpu / published * 1e6, 2)
        delivered = done.get("delivered", 0)
        if delivered:
            result["cpu_us_per_delivery"] = round(cpu / delivered * 1e6, 2)
        wall = done.get("wall_seconds") or (t_done - t_go)
        result["client_cpu_share"] = round(done.get("client_cpu", 0) / wall, 3) if wall else 0
        if sc.slow:
            mid = t_go + (t_done - t_go) / 2  # after the slow one has had time to fill its bound
            result["rss_slope_kib_s"] = round(sampler.slope(mid, t_done), 1)
            result["rss_slope_all_kib_s"] = round(sampler.slope(t_go, t_done), 1)
        return result
    finally:
        if not keep:
            server.stop()


def start_profile(pid: int, out: Path, seconds: float) -> list[subprocess.Popen]:
    spy = str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():  # a binary wheel from PyPI: the benchmark installs it for itself
        subprocess.run([PY, "-m", "pip", "install", "--quiet", "py-spy"], check=False)
    if not Path(spy).exists():
        spy = shutil.which("py-spy") or spy
    if not Path(spy).exists():
        print("py-spy not found and not installable: no profile", file=sys.stderr)
        return []
    common = ["--pid", str(pid), "--rate", "250", "--nonblocking", "--function", "--duration", str(int(seconds) + 5)]
    procs = [subprocess.Popen([spy, "record", "-o", str(out.with_suffix(".svg")), *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([spy, "record", "--format", "raw", "-o", str(out.with_suffix(".txt")), *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(1.0)  # let py-spy attach before the load starts
    return procs


# ---------------------------------------------------------------- profile reading

CATEGORIES = [  # (label, regexes over a frame); a sample goes to the first label any of its frames matches
    ("logging (twisted.logger and its observers)", (r"twisted/logger/", r"sse_daemon/logs\.py")),
    ("socket send: fanout.write_now, one send() per subscriber per reactor turn (the syscall is most of it)",
     (r"sse_daemon/fanout\.py",)),
    ("Twisted's buffered writes (response heads, heartbeats, the rest of a partial send: write, doWrite, epoll_ctl)",
     (r"\.doWrite \(", r"Request\.write \(twisted/web", r"\.write(Sequence)? \(twisted/internet/abstract")),
    ("the sink's fan-out loop (SseSink.flush, Subscriber.deliver): per-subscriber Python around the send",
     (r"sse_daemon/sink\.py",)),
    ("the POST: Twisted's HTTP parsing, ingest JSON, mapping, encoding, the answer",
     (r"twisted/web/", r"sse_daemon/", r"^email/|\(email/", r"\(json/")),
    ("reactor dispatch (epoll, callWithLogger/context per fd event, doRead)", (r"twisted/",)),
]
COMPILED = [(label, [re.compile(x) for x in keys]) for label, keys in CATEGORIES]


def read_profile(raw: Path) -> dict[str, Any] | None:
    if not raw.exists():
        return None
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count

        label = next((lab for lab, keys in COMPILED if any(k.search(f) for k in keys for f in frames)), "other")
        cats[label] += count
    if not total:
        return None
    inner = [(f, n) for f, n in inclusive.most_common() if n < 0.9 * total][:30]  # not the run loop everyone is under
    return {"total": total, "own": own.most_common(20), "inclusive": inner, "categories": cats.most_common()}


# ---------------------------------------------------------------- the report

def machine() -> dict[str, str]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import twisted

    load = open("/proc/loadavg").read().split()[:3]
    peers = []
    try:
        import sse_starlette
        import uvicorn

        served = []
        for module in ("uvloop", "httptools"):
            try:
                served.append(f"{module} {importlib.import_module(module).__version__}")
            except ImportError:
                served.append(f"no {module}")
        peers.append(f"sse-starlette {sse_starlette.__version__}, uvicorn {uvicorn.__version__} ({', '.join(served)})")
    except ImportError:
        pass
    nchan = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}  ", "libnginx-mod-nchan", "nginx"],
                           capture_output=True, text=True).stdout if shutil.which("dpkg-query") else ""
    if nchan:
        peers.append("Debian " + ", ".join(nchan.split("  ")).strip(", "))
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "twisted": twisted.__version__, "load": " ".join(load),
            "peers": "; ".join(peers) or "—"}


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "—"
    return f"{a / b:.2f}×"


ROWS = [  # (label, key, digits)
    ("subscribers connected", ("ready", "connected"), 0),
    ("events published", "published", 0),
    ("publish rate sustained (events/s)", "publish_rate", 1),
    ("delivered", "delivered", 0),
    ("expected", "expected", 0),
    ("loss: not delivered within 5 s after the last publish", "loss", 0),
    ("delivered events/s", "deliveries_per_s", 0),
    ("latency p50 (ms)", "lat_ms_p50", 2),
    ("latency p99 (ms)", "lat_ms_p99", 2),
    ("of several runs, each one's figure that picked the median run (latency p99, or delivered events/s in A)", "runs", 2),
    ("latency max (ms)", "lat_ms_max", 2),
    ("server CPU (s)", "server_cpu", 2),
    ("server CPU per delivery (µs)", "cpu_us_per_delivery", 2),
    ("server CPU split (s): twistd / each worker", "cpu_split", 2),
    ("server RSS before subscribers (KiB)", "rss_base_kib", 0),
    ("server RSS with subscribers (KiB)", "rss_ready_kib", 0),
    ("server peak RSS (KiB)", "rss_peak_kib", 0),
    ("memory per idle subscriber (KiB)", "idle_kib_per_sub", 2),
    ("connect time of all subscribers (s)", ("ready", "connect_seconds"), 2),
    ("sockets open at ready: twistd / each worker (its subscribers + 1)", "sockets_split", 0),
    ("slow subscribers cut off", "slow_cut", 0),
    ("RSS growth over the second half (KiB/s)", "rss_slope_kib_s", 1),
    ("RSS growth over the whole run (KiB/s)", "rss_slope_all_kib_s", 1),
    ("subscribers closed early", "closed_early", 0),
    ("worker processes restarted during the run", "worker_restarts", 0),
    ("client CPU (s)", "client_cpu", 2),
    ("client CPU share of one core", "client_cpu_share", 2),
]


IDLE_ROWS = {("ready", "connected"), "rss_base_kib", "rss_ready_kib", "rss_peak_kib", "idle_kib_per_sub",
             ("ready", "connect_seconds"), "sockets_split"}


def get(r: dict[str, Any] | None, key: Any) -> Any:
    if r is None:
        return None
    if isinstance(key, tuple):
        v: Any = r
        for k in key:
            v = v.get(k) if isinstance(v, dict) else None
        return v
    if isinstance(key, str) and key.startswith("lat_") and (r.get(key) or 0) < 0:
        return None
    if key == "loss":
        return r["expected"] - r["delivered"] if "expected" in r and "delivered" in r else None
    return r.get(key)


def targets(res: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(target, figure, verdict) for the issue's targets."""
    d = res.get("sse-daemon", {})
    w2 = res.get(WorkerDaemon.name, {})
    st = res.get("sse-starlette", {})
    nc = res.get("Nchan", {})
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None, how: str) -> str:
        return "—" if ok is None else (("met" if ok else "NOT met") + (f" ({how})" if how else ""))

    a, sa = d.get("A"), st.get("A")
    if a and sa and sa.get("deliveries_per_s"):
        x = a["deliveries_per_s"] / sa["deliveries_per_s"]
        out.append(("A: deliveries/s ≥ 3× the best Python peer (worker.count=1)",
                    f"{x:.2f}× sse-starlette ({fmt(a['deliveries_per_s'], 0)} vs {fmt(sa['deliveries_per_s'], 0)}/s)",
                    verdict(x >= 3, f"{x / 3:.0%} of the target")))
    if a and a.get("cpu_us_per_delivery"):
        c = a["cpu_us_per_delivery"]
        out.append(("A: server CPU per delivery ≤ 5 µs", f"{c:.2f} µs", verdict(c <= 5, f"{c / 5:.1f}× the bound")))
    a2, na = w2.get("A"), nc.get("A")
    t2 = "A: with worker.count=2, ≥ half of Nchan's deliveries/s"
    if a2 and a2.get("deliveries_per_s") and na and na.get("deliveries_per_s"):
        x = a2["deliveries_per_s"] / na["deliveries_per_s"]
        out.append((t2, f"{x:.2f}× Nchan ({fmt(a2['deliveries_per_s'], 0)} vs {fmt(na['deliveries_per_s'], 0)}/s; "
                        f"{WorkerDaemon.name}: not pinned, summed over twistd and its workers)",
                    verdict(x >= 0.5, f"{x / 0.5:.0%} of the target")))
    elif a2 and a2.get("deliveries_per_s"):
        out.append((t2, f"{fmt(a2['deliveries_per_s'], 0)}/s; Nchan not measured", "—"))
    elif a2:
        out.append((t2, f"{WorkerDaemon.name} failed in A: {a2.get('error', 'nothing delivered')}", "not measured"))
    elif na and na.get("deliveries_per_s"):
        out.append((t2, f"Nchan {fmt(na['deliveries_per_s'], 0)}/s; {WorkerDaemon.name} not in this run", "not measured"))
    b, nb = d.get("B200"), nc.get("B200")
    if b:
        if nb:
            x = b["publish_rate"] / nb["publish_rate"] if nb.get("publish_rate") else 0
            out.append(("B: sustained publish rate at 1,000 subscribers above Nchan's",
                        f"{b['publish_rate']:.1f}/s vs Nchan {nb['publish_rate']:.1f}/s (of 200 offered)",
                        verdict(b["publish_rate"] > nb["publish_rate"], f"{x:.2f}× Nchan's")))
        else:
            out.append(("B: sustained publish rate at 1,000 subscribers above Nchan's",
                        f"{b['publish_rate']:.1f}/s of 200 offered; Nchan not measured", "—"))
    b20 = d.get("B20")
    if b20:
        p = b20["lat_ms_p99"]
        out.append(("B: p99 latency at 20 events/s ≤ 15 ms", f"{p:.2f} ms", verdict(p <= 15, f"{p / 15:.2f}× the bound")))
    c = d.get("C10k")
    if c:
        per = c.get("idle_kib_per_sub")
        ok = c["ready"]["connected"] >= 10000 and per is not None and per * 1.024 <= 10
        out.append(("C: 10k idle subscribers in one process, ≤ 10 kB each",
                    f"{c['ready']['connected']:,} connected, {per} KiB ({per * 1.024 if per else 0:.1f} kB) each",
                    verdict(ok, f"{per * 1.024 / 10:.2f}× the bound" if per else "")))
    dd, dref = d.get("D"), d.get("Dref")
    if dd:
        slope = dd.get("rss_slope_kib_s", 0)
        flat = abs(slope) < 50 and dd.get("slow_cut", 0) >= 1
        out.append(("D: daemon memory flat while the slow subscriber is connected, and it is cut at its bound",
                    f"cut: {dd.get('slow_cut', 0)}, RSS growth over the second half {slope} KiB/s, "
                    f"peak {fmt(dd['rss_peak_kib'])} KiB", verdict(flat, "")))
        if dref:
            p, q = dd["lat_ms_p99"], dref["lat_ms_p99"]
            out.append(("D: the fast subscribers' p99 does not rise", f"{p:.2f} ms with the slow one, {q:.2f} ms without",
                        verdict(p <= q * 1.2 + 1, f"{p / q:.2f}× the reference; up to 1.2× + 1 ms counts as "
                                "not rising: both are single runs on a VM that varies by ±20 %" if q else "")))
    e = d.get("E")
    if e:
        p = e["lat_ms_p99"]
        out.append(("2 KiB events at 100/s to 100 subscribers: p99 ≤ 5 ms", f"{p:.2f} ms",
                    verdict(p <= 5, f"{p / 5:.2f}× the bound")))
    return out


def write_results(path: Path, res: dict[str, dict[str, dict[str, Any]]], scs: list[Scenario], servers: list[str],
                  info: dict[str, Any], notes: list[str], profile: dict[str, Any] | None) -> None:
    m = info["machine"]
    lines = [
        "# Fan-out benchmark results",
        "",
        f"Written by `bench/run.py{' --quick' if info['quick'] else ''}` on {info['date']} "
        f"(took {info['seconds']:.0f} s). **{'QUICK run: tiny scenarios on one server per kind, figures are not meaningful.' if info['quick'] else 'Full run.'}**",
        "",
        f"- Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}, Twisted {m['twisted']}",
        f"- Peers: {m.get('peers', '—')}",
        f"- Load average before the run: {info['load_before']}; after: {m['load']}",
        f"- Pinning: {info['pinning']}",
        "- Load client: `bench/sseload.c` (C, epoll, one process; a publisher thread POSTs over one keep-alive "
        "connection: 4 requests in flight in A, 1 elsewhere, so a server that answers slowly is offered less than "
        "the target rate and its sustained rate is reported). Subscriptions are opened 40 at a time, each waiting "
        "for its response head. Latency is publish-send to subscriber-read, on one clock. Event bodies are "
        "`{\"m\":\"@<seq>@<µs>@<padding>\"}`, relayed by every server inside its `data:` line.",
        "- Each server is started fresh for each scenario; CPU is user+system seconds of the serving process "
        "from `/proc/<pid>/stat` while publishing; RSS from `/proc/<pid>/status` (sampled every 100 ms). Kernel "
        "socket buffers are not in RSS. Nchan: the one nginx worker (1 worker process).",
        "- sse-daemon: `twistd -n sse-daemon`, one http ingest and one sse-server sink on one port, heartbeat off, "
        "history and subscriber bounds at their defaults, log level info (to a file), worker.count 1.",
    ]
    if WorkerDaemon.name in servers:
        lines += [
            f"- {WorkerDaemon.name}: the same daemon with `worker.count: 2` on the sink: twistd binds the sink's port "
            "and starts 2 worker processes (`python -m sse_daemon.worker`, its children) that accept the subscribers "
            "on it; the http ingest has a port of its own (the client POSTs there, `sseload --pub-port`), and twistd "
            "feeds every event to both workers over pipes. Its CPU and RSS are **summed over twistd and its worker "
            "processes** (the children as listed when each measurement starts; a worker restarted during a run still "
            "counts, through twistd's reaped-children CPU), memory per idle subscriber from that summed RSS (each "
            "process's RSS counts its own copy of the interpreter and shared libraries). It is **not pinned**: "
            "twistd and its workers may use both CPUs while the client stays pinned to CPU 1, so the client "
            "competes with the server for CPU 1 and its figures are conservative ones for a 2-core box (the other "
            "servers have CPU 0 to themselves). The py-spy profile is of the single-process daemon.",
        ]
    lines.append("")
    for name in servers:
        for sc in scs:
            r = res.get(name, {}).get(sc.key) or {}
            if (r.get("client_cpu_share") or 0) > 0.7:
                notes.append(f"{sc.key} on {name}: the load client used {r['client_cpu_share']:.0%} of its core, so "
                             f"{name}'s delivered events/s there is a lower bound (the client was near its limit).")
    for note in notes:
        lines.append(f"- Note: {note}")
    if notes:
        lines.append("")
    lines += ["## Targets of issue 7", "", "| target | figure | verdict |", "|---|---|---|"]
    for t, f, v in targets(res):
        lines.append(f"| {t} | {f} | {v} |")
    lines.append("")
    # ratios: the daemon to each peer, and the 2-worker daemon to the single-process one and to Nchan
    peers = [s for s in servers if s not in ("sse-daemon", WorkerDaemon.name)] if "sse-daemon" in servers else []
    peers2 = [s for s in ("sse-daemon", "Nchan") if s in servers] if WorkerDaemon.name in servers else []
    for sc in scs:
        lines += [f"## {sc.title}", ""]
        head = ["figure", *servers] + [f"daemon / {p}" for p in peers] + [f"daemon (2 workers) / {p}" for p in peers2]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = [r for r in ROWS if any(get(res.get(s, {}).get(sc.key), r[1]) is not None for s in servers)]
        if sc.count == 0:
            rows = [r for r in rows if r[1] in IDLE_ROWS]
        elif not sc.slow:
            rows = [r for r in rows if r[1] not in ("slow_cut", "rss_slope_kib_s", "rss_slope_all_kib_s")]
        for label, key, nd in rows:
            vals = [get(res.get(s, {}).get(sc.key), key) for s in servers]
            vals = [round(v, nd) if isinstance(v, float) and nd == 0 else v for v in vals]
            cells = [fmt(v, nd) if not (isinstance(v, float) and nd == 0) else fmt(int(v)) for v in vals]
            dv = get(res.get("sse-daemon", {}).get(sc.key), key)
            ratios = [ratio(dv, get(res.get(p, {}).get(sc.key), key)) for p in peers]
            wv = get(res.get(WorkerDaemon.name, {}).get(sc.key), key)
            ratios += [ratio(wv, get(res.get(p, {}).get(sc.key), key)) for p in peers2]
            lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
        for s in servers:
            err = res.get(s, {}).get(sc.key, {}).get("error") if isinstance(res.get(s, {}).get(sc.key), dict) else None
            if err:
                lines.append(f"\n{s}: failed: {err}")
        lines.append("")
    lines += ["## Profile of the daemon under scenario A", ""]
    if profile:
        lines += [f"py-spy, {profile['total']:,} samples at 250 Hz over the whole run (`bench/profile.svg` is the "
                  "flame graph, `bench/profile.txt` the raw stacks). Where the time goes (each sample counted once, "
                  "under the first label that any of its frames matches, in this order). The µs column spreads the "
                  "CPU per delivery of the unprofiled run of A over these shares:", "",
                  "| where | share | µs per delivery |", "|---|---|---|"]
        per = get(res.get("sse-daemon", {}).get("A"), "cpu_us_per_delivery")
        for label, n in profile["categories"]:
            us = f"{per * n / profile['total']:.2f}" if isinstance(per, (int, float)) else "—"
            lines.append(f"| {label} | {n / profile['total']:.1%} | {us} |")
        lines += ["", "Functions by own time:", "", "| function | own |", "|---|---|"]
        for f, n in profile["own"]:
            lines.append(f"| `{f}` | {n / profile['total']:.1%} |")
        lines += ["", "Functions by inclusive time (below the reactor's run loop):", "", "| function | inclusive |", "|---|---|"]
        for f, n in profile["inclusive"]:
            lines.append(f"| `{f}` | {n / profile['total']:.1%} |")
        reading = BENCH / "PROFILE-READING.md"
        if reading.exists():
            lines += ["", reading.read_text().strip()]
    else:
        lines.append("No profile in this run (py-spy missing, `--no-profile`, or `--quick`).")
    for kept in kept_sections(path):  # what the other modes wrote (--history, bench/publish.py, ...)
        lines += [kept, ""]
    path.write_text("\n".join(lines))


# ---------------------------------------------------------------- the history file's section

HISTORY_BEGIN = "<!-- history-file: begin (written by bench/run.py --history; a full run keeps it) -->"
HISTORY_END = "<!-- history-file: end -->"
HISTORY_ROWS = [  # (label, key, digits)
    ("subscribers connected", ("ready", "connected"), 0),
    ("events published (acknowledged 200)", "published", 0),
    ("publish errors (not 200)", "publish_errors", 0),
    ("publish rate: events/s acknowledged by ingest", "publish_rate", 1),
    ("delivered", "delivered", 0),
    ("loss: not delivered within 5 s after the last publish", "loss", 0),
    ("delivered events/s", "deliveries_per_s", 0),
    ("latency p50 (ms)", "lat_ms_p50", 2),
    ("latency p99 (ms)", "lat_ms_p99", 2),
    ("of the 3 runs, each one's figure that picked the median run", "runs", 1),
    ("server CPU (s)", "server_cpu", 2),
    ("server CPU per published event (µs)", "cpu_us_per_published", 2),
    ("server CPU per delivery (µs)", "cpu_us_per_delivery", 2),
    ("server peak RSS (KiB)", "rss_peak_kib", 0),
    ("client CPU share of one core", "client_cpu_share", 2),
]


def history_targets(res: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(target, figure, verdict) for issue 14: fan-out unchanged, publish cost within 1.5x."""
    mem, disk = res.get(Daemon.name, {}), res.get(HistoryFileDaemon.name, {})
    out = []
    for key, who in (("HP16", "16 publishers at once (HP16)"), ("HP", "one publisher, its POSTs one after another (HP)")):
        hp, hpd = mem.get(key) or {}, disk.get(key) or {}
        if hp.get("publish_rate") and hpd.get("publish_rate"):
            cost = hp["publish_rate"] / hpd["publish_rate"]
            out.append((f"publish cost (time per acknowledged event) within 1.5× of in-memory: {who}",
                        f"{cost:.2f}× ({fmt(hpd['publish_rate'], 0)}/s with the file, {fmt(hp['publish_rate'], 0)}/s without)",
                        ("met" if cost <= 1.5 else "NOT met") + f" ({cost / 1.5:.0%} of the bound)"))
        if hp.get("cpu_us_per_published") and hpd.get("cpu_us_per_published"):
            c = hpd["cpu_us_per_published"] / hp["cpu_us_per_published"]
            out.append((f"(for reading) {key}: server CPU per published event, file against memory",
                        f"{c:.2f}× ({hpd['cpu_us_per_published']:.1f} µs against {hp['cpu_us_per_published']:.1f} µs; "
                        "the commits run on a thread of their own, counted here)", "—"))
    hf, hfd = mem.get("HF") or {}, disk.get("HF") or {}
    if hf.get("deliveries_per_s") and hfd.get("deliveries_per_s"):
        x = hfd["deliveries_per_s"] / hf["deliveries_per_s"]
        lost = (hfd.get("expected", 0) - hfd.get("delivered", 0))
        out.append(("fan-out unchanged at an offered rate both sustain (HF: deliveries/s with the file ≥ 0.9× "
                    "without, nothing lost; this VM varies ±10 % run to run)",
                    f"{x:.2f}× ({fmt(hfd['deliveries_per_s'], 0)}/s with the file, {fmt(hf['deliveries_per_s'], 0)}/s "
                    f"without; {lost} lost)", "met" if x >= 0.9 and lost == 0 else "NOT met"))
        if hf.get("cpu_us_per_delivery") and hfd.get("cpu_us_per_delivery"):
            out.append(("(for reading) HF: server CPU per delivery, p99 latency, file against memory",
                        f"{hfd['cpu_us_per_delivery']:.2f} µs against {hf['cpu_us_per_delivery']:.2f} µs; "
                        f"p99 {hfd.get('lat_ms_p99', 0):.2f} ms against {hf.get('lat_ms_p99', 0):.2f} ms", "—"))
    ha, had = mem.get("HA") or {}, disk.get("HA") or {}
    if ha.get("deliveries_per_s") and had.get("deliveries_per_s"):
        x = had["deliveries_per_s"] / ha["deliveries_per_s"]
        out.append(("(for reading) HA: deliveries/s at saturation, where each acknowledgement waits for its commit "
                    "and the publisher for its acknowledgement",
                    f"{x:.2f}× ({fmt(had['deliveries_per_s'], 0)}/s with the file, {fmt(ha['deliveries_per_s'], 0)}/s "
                    "without)", "—"))
    return out


def history_section(res: dict[str, dict[str, dict[str, Any]]], scs: list[Scenario], info: dict[str, Any]) -> str:
    m = info["machine"]
    servers = [Daemon.name, HistoryFileDaemon.name]
    lines = [
        HISTORY_BEGIN,
        "## History on disk: `history.path` set against unset",
        "",
        f"Written by `bench/run.py --history{' --quick' if info['quick'] else ''}` on {info['date']} "
        f"(took {info['seconds']:.0f} s), both servers in the same run"
        f"{' (QUICK run: tiny scenarios, figures are not meaningful)' if info['quick'] else ''}.",
        "",
        f"- Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}, Twisted {m['twisted']}; "
        f"load average before: {info['load_before']}, after: {m['load']}; pinning: {info['pinning']}.",
        f"- `{Daemon.name}`: as above (history in memory). `{HistoryFileDaemon.name}`: the same daemon with "
        "`history.path` on the sink: a SQLite file in WAL mode (`synchronous=NORMAL`) in the run's temporary "
        f"directory ({info.get('history_fs', '?')}), written on a thread of its own, one transaction per reactor turn, or for everything that arrived while the previous one was under way; "
        "each POST is answered 200 only once its event is committed. Every run starts a fresh server on a fresh file.",
        "- The load client is `bench/sseload.c` as above, one event per POST: HP, HA and HF have one keep-alive "
        "publisher with 4 POSTs in flight (which twisted.web answers one after another: each POST waits for the "
        "commit of the one before, so every commit holds one event); HP16 has 16 keep-alive publishers with one "
        "POST in flight each, whose events share commits as the grouping intends. The publish rate is "
        "acknowledged events per second as the publishers see them.",
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
    ]
    for target, figure, verdict in history_targets(res):
        lines.append(f"| {target} | {figure} | {verdict} |")
    lines.append("")
    for sc in scs:
        head = ["figure", *servers, "file / memory"]
        lines += [f"### {sc.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, key, nd in HISTORY_ROWS:
            vals = [get(res.get(s, {}).get(sc.key), key) for s in servers]
            if all(v is None for v in vals):
                continue
            cells = [fmt(int(round(v)) if isinstance(v, float) and nd == 0 else v, nd) for v in vals]
            lines.append("| " + " | ".join([label, *cells, ratio(vals[1], vals[0])]) + " |")
        for s in servers:
            err = (res.get(s, {}).get(sc.key) or {}).get("error")
            if err:
                lines.append(f"\n{s}: failed: {err}")
        lines.append("")
    lines.append(HISTORY_END)
    return "\n".join(lines)


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on and its device, from /proc/mounts (the longest mount prefix)."""
    best = ("?", "?", "")
    try:
        for line in open("/proc/mounts"):
            device, mount, kind = line.split()[:3]
            if str(path).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[2]):
                best = (kind, device, mount)
    except OSError:
        pass
    return f"{best[0]} on {best[1]}, not tmpfs" if best[0] != "tmpfs" else "tmpfs: in memory, the figures flatter the file"


def kept_section(path: Path, begin_marker: str, end_marker: str) -> str | None:
    """A section of an existing results file written by another mode (between its markers), for a full run to keep."""
    if not path.exists():
        return None
    text = path.read_text()
    begin, end = text.find(begin_marker), text.find(end_marker)
    return text[begin:end + len(end_marker)] if begin >= 0 and end > begin else None


def put_section(path: Path, begin_marker: str, end_marker: str, section: str) -> None:
    """Writes ``section`` (which starts and ends with the markers) into ``path`` in place of the one there, or at the end."""
    text = path.read_text() if path.exists() else "# Fan-out benchmark results\n"
    old = kept_section(path, begin_marker, end_marker)
    text = text.replace(old, section) if old else text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def kept_sections(path: Path) -> list[str]:
    """Every section another mode wrote into ``path``: ``<!-- NAME: begin ... -->`` to ``<!-- NAME: end -->``."""
    if not path.exists():
        return []
    return [m.group(0) for m in re.finditer(r"<!-- ([a-z0-9-]+): begin.*?-->.*?<!-- \1: end -->", path.read_text(), re.S)]


def kept_history_section(path: Path) -> str | None:
    return kept_section(path, HISTORY_BEGIN, HISTORY_END)


def put_history_section(path: Path, section: str) -> None:
    put_section(path, HISTORY_BEGIN, HISTORY_END, section)


# ---------------------------------------------------------------- main

def build_client(outdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench: no C compiler (cc) found; install gcc")
    out = outdir / "sseload"
    subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(out), str(BENCH / "sseload.c")], check=True)
    return out


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny versions of every scenario (seconds)")
    ap.add_argument("--servers", default="sse-daemon,sse-daemon (2 workers),sse-starlette,Nchan",
                    help="comma-separated; default all but the redis bus one")
    ap.add_argument("--only", default="", help="comma-separated scenario keys (A,B200,B20,C1k,C5k,C10k,Dref,D,E)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/RESULTS.md; --quick: a temp file)")
    ap.add_argument("--history", action="store_true",
                    help="history.path set against unset: publish rate and fan-out on the daemon with and without a "
                         "history file; writes only that section of the results file")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy run of scenario A")
    ap.add_argument("--keep-workdir", action="store_true",
                    help="keep the temporary directory: the client, and each run's server log as logs/<server>-<scenario>.log")
    args = ap.parse_args(argv)

    started = time.monotonic()
    load_before = " ".join(open("/proc/loadavg").read().split()[:3])
    nofile = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    # --quick checks that every scenario runs, not what it measures: one server per kind serves them all
    kept: dict[str, Server] = {}
    notes: list[str] = []
    try:
        client = build_client(work)
        two = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        pin_server = ["taskset", "-c", "0"] if two else []
        pin_client = ["taskset", "-c", "1"] if two else []
        pinning = "server on CPU 0, client on CPU 1 (taskset)" if two else "none (needs taskset and 2 CPUs)"
        wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
        classes: dict[str, type[Server]] = {
            "sse-daemon": Daemon, WorkerDaemon.name: WorkerDaemon, "sse-starlette": Starlette, "Nchan": Nchan,
            "sse-daemon (redis bus)": RedisDaemon, HistoryFileDaemon.name: HistoryFileDaemon}
        if args.history:
            wanted = [Daemon.name, HistoryFileDaemon.name]
        if two and any(not classes[n].pinned for n in wanted if n in classes):
            unpinned = ", ".join(n for n in wanted if n in classes and not classes[n].pinned)
            pinning += (f"; except {unpinned}: the server is NOT pinned (twistd and its worker processes run on "
                        "both CPUs), the client stays on CPU 1, so there the client competes with the server for "
                        "CPU 1 and the figures are conservative ones for a 2-core box")
        logs = work / "logs"
        logs.mkdir()
        servers: list[str] = []
        for name in wanted:
            if name not in classes:
                raise SystemExit(f"bench: unknown server {name!r}; one of {', '.join(classes)}")
            if name == "Nchan" and (why := Nchan.available()):
                notes.append(f"Nchan skipped: {why}.")
                continue
            if name == "sse-starlette" and (why := ensure_peer_packages()):
                notes.append(f"sse-starlette skipped: {why}.")
                continue
            servers.append(name)
        scs = history_scenarios(args.quick) if args.history else scenarios(args.quick)
        if args.only:
            keys = set(args.only.split(","))
            scs = [s for s in scs if s.key in keys]
        if nofile < max(s.subs + s.slow for s in scs) + 200:
            notes.append(f"RLIMIT_NOFILE is {nofile}: the largest idle scenarios cannot all connect.")
        res: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in servers}
        for sc in scs:
            for name in servers:
                print(f"bench: {sc.key} on {name} ...", file=sys.stderr, flush=True)
                runs = []
                for _ in range(sc.repeat):
                    if args.quick:
                        server = kept.setdefault(name, classes[name](work, pin_server if classes[name].pinned else []))
                    else:
                        server = classes[name](work, pin_server if classes[name].pinned else [])
                    try:
                        runs.append(run_one(server, sc, client, pin_client, keep=args.quick))
                    except Exception as e:  # one failed run is reported, the others go on
                        runs.append({"error": f"{type(e).__name__}: {e}"})
                r = median_run(runs, sc.median_of)
                if isinstance(getattr(server, "log", None), Path) and server.log.exists():
                    shutil.copyfile(server.log, logs / f"{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}-{sc.key}.log")
                res[name][sc.key] = r
                shown = {k: r.get(k) for k in (
                    "deliveries_per_s", "publish_rate", "lat_ms_p99", "server_cpu", "idle_kib_per_sub", "error")}
                shown.update({k: r[k] for k in ("cpu_by_process", "sockets_by_process", "worker_restarts") if k in r})
                print("bench:   " + json.dumps(shown), file=sys.stderr, flush=True)
        profile = None
        if not args.quick and not args.no_profile and not args.history and "sse-daemon" in servers and any(s.key == "A" for s in scs):
            sc = next(s for s in scs if s.key == "A")
            print("bench: profiling the daemon under A ...", file=sys.stderr, flush=True)
            for stale in (BENCH / "profile.svg", BENCH / "profile.txt"):
                stale.unlink(missing_ok=True)
            try:
                run_one(Daemon(work, pin_server), sc, client, pin_client, profile=BENCH / "profile")
                profile = read_profile(BENCH / "profile.txt")
            except Exception as e:
                notes.append(f"the profile run failed: {type(e).__name__}: {e}")
        out = args.out or (work / "RESULTS.md" if args.quick else BENCH / "RESULTS.md")
        info = {"machine": machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "quick": args.quick, "seconds": time.monotonic() - started, "load_before": load_before, "pinning": pinning}
        if args.history:
            info["history_fs"] = filesystem(work)
            put_history_section(out, history_section(res, scs, info))
            figures = out.with_name(out.stem + "-history.json")
        else:
            write_results(out, res, scs, servers, info, notes, profile)
            figures = out.with_suffix(".json")
        figures.write_text(json.dumps({"info": info, "results": res}, indent=1))
        print(f"bench: wrote {out}", file=sys.stderr)
        if args.quick and args.out is None:
            sys.stdout.write(out.read_text())
        return 0
    finally:
        for server in kept.values():
            server.stop()
        if args.keep_workdir:
            print(f"bench: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
