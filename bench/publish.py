"""The publish benchmark: how fast events get *in*, sse-daemon against its peers, in one run.

    .venv/bin/python bench/publish.py           # about 5 minutes: its section of bench/RESULTS.md
    .venv/bin/python bench/publish.py --quick   # tiny versions (seconds), printed, nothing written

Scenarios (issue 17, part 1), each server started fresh per run, pinned as bench/run.py pins
them (server on CPU 0, the load client on CPU 1): single-event POSTs over 16 keep-alive
connections (one request in flight on each), with 1 and with 100 subscribers, against
sse-starlette (uvicorn with uvloop and httptools) and Nchan; and bodies of 100 events per
POST, for the daemon only (a peer takes one message per POST: its figure would be another
thing). The publish rate is events acknowledged (2xx) per second as the publishers see them;
server CPU is user + system time of the serving process while publishing. Uses bench/run.py's
servers and load client (bench/sseload.c: ``--publishers``, ``--batch``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py: the servers, the client, the formatting)

BEGIN = "<!-- publish: begin (written by bench/publish.py; a full run of bench/run.py keeps it) -->"
END = "<!-- publish: end -->"
PEERS = ("sse-starlette", "Nchan", "Twisted floor")


class TwistedFloor(run.Server):
    """bench/floor_twisted.py: a bare Twisted protocol that checks nothing (the floor under the daemon's P1)."""

    name = "Twisted floor"

    def start(self) -> None:
        self.port = run.free_port()
        self.proc = subprocess.Popen([*self.pin, run.PY, str(run.BENCH / "floor_twisted.py"), str(self.port)],
                                         cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        run.wait_port(self.port, self.proc)


def scenarios(quick: bool) -> list[run.Scenario]:
    if quick:
        return [run.Scenario("P1", "P1: single-event POSTs, 16 publishers, 1 subscriber", 1, count=400, publishers=16,
                             max_seconds=5, median_of="publish_rate"),
                run.Scenario("B1", "B1: 100 events per POST, 16 publishers, 1 subscriber", 1, count=4000, publishers=16,
                             batch=100, max_seconds=5, median_of="publish_rate"),
                run.Scenario("S1", "S1: a streaming publish, 1 subscriber", 1, count=4000, batch=100, ndjson=True,
                             max_seconds=5, median_of="publish_rate")]
    return [
        run.Scenario("P1", "P1: single-event POSTs over 16 keep-alive connections, 1 subscriber, 30,000 events "
                     "(at most 40 s; median of 3 runs)", 1, count=30000, publishers=16, max_seconds=40, repeat=3,
                     median_of="publish_rate"),
        run.Scenario("P100", "P100: single-event POSTs over 16 keep-alive connections, 100 subscribers, 20,000 events "
                     "(at most 40 s; median of 3 runs)", 100, count=20000, publishers=16, max_seconds=40, repeat=3,
                     median_of="publish_rate"),
        run.Scenario("B1", "B1: bodies of 100 events over 16 keep-alive connections, 1 subscriber, 300,000 events "
                     "(at most 40 s; median of 3 runs; the daemon only)", 1, count=300000, publishers=16, batch=100,
                     max_seconds=40, repeat=3, median_of="publish_rate"),
        run.Scenario("B100", "B100: bodies of 100 events over 16 keep-alive connections, 100 subscribers, 100,000 "
                     "events (at most 40 s; median of 3 runs; the daemon only)", 100, count=100000, publishers=16,
                     batch=100, max_seconds=40, repeat=3, median_of="publish_rate"),
        run.Scenario("S1", "S1: a streaming publish (one chunked POST of NDJSON lines, 100 a chunk), 1 subscriber, 300,000 "
                     "events (at most 40 s; median of 3 runs; the daemon only)", 1, count=300000, batch=100, ndjson=True,
                     max_seconds=40, repeat=3, median_of="publish_rate"),
    ]


ROWS = [  # (label, key, digits)
    ("subscribers connected", ("ready", "connected"), 0),
    ("events acknowledged (2xx)", "published", 0),
    ("requests not answered 2xx", "publish_errors", 0),
    ("publish rate: events/s acknowledged", "publish_rate", 0),
    ("of the 3 runs, each one's publish rate", "runs", 0),
    ("delivered", "delivered", 0),
    ("loss: not delivered within 5 s after the last publish", "loss", 0),
    ("latency p50 (ms)", "lat_ms_p50", 2),
    ("latency p99 (ms)", "lat_ms_p99", 2),
    ("server CPU (s)", "server_cpu", 2),
    ("server CPU per published event (µs)", "cpu_us_per_published", 2),
    ("server peak RSS (KiB)", "rss_peak_kib", 0),
    ("client CPU share of one core", "client_cpu_share", 2),
]


def targets(res: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(target, figure, verdict) for issue 17's publish targets."""
    daemon, starlette = res.get(run.Daemon.name, {}), res.get("sse-starlette", {})
    out = []
    ours, theirs = (daemon.get("P1") or {}).get("publish_rate"), (starlette.get("P1") or {}).get("publish_rate")
    if ours and theirs:
        x = ours / theirs
        out.append(("single-event POSTs (P1): ≥ 3× sse-starlette's rate", f"{x:.2f}× ({run.fmt(ours, 0)}/s against "
                    f"{run.fmt(theirs, 0)}/s)", ("met" if x >= 3 else "NOT met") + f" ({x / 3:.0%} of the target)"))
    nchan = (res.get("Nchan", {}).get("P1") or {}).get("publish_rate")
    if ours and nchan:
        out.append(("(for reading) P1 against Nchan", f"{ours / nchan:.2f}× ({run.fmt(nchan, 0)}/s)", "—"))
    floor = (res.get("Twisted floor", {}).get("P1") or {}).get("publish_rate")
    if ours and floor:
        out.append(("(for reading) P1 against the Twisted floor (bench/floor_twisted.py: checks nothing)",
                    f"{ours / floor:.2f}× ({run.fmt(floor, 0)}/s)" + (f"; the floor is {floor / theirs:.2f}× sse-starlette"
                                                                         if theirs else ""), "—"))
    batched = (daemon.get("B1") or {}).get("publish_rate")
    if batched:
        out.append(("bodies of 100 events (B1): ≥ 300,000 events/s with one subscriber", f"{run.fmt(batched, 0)}/s",
                    ("met" if batched >= 300_000 else "NOT met") + f" ({batched / 300_000:.0%} of the target)"))
    streamed = (daemon.get("S1") or {}).get("publish_rate")
    if streamed:
        out.append(("a streaming publish (S1): ≥ 200,000 events/s on one core to one subscriber", f"{run.fmt(streamed, 0)}/s",
                    ("met" if streamed >= 200_000 else "NOT met") + f" ({streamed / 200_000:.0%} of the target)"))
    return out


def section(res: dict[str, dict[str, dict[str, Any]]], scs: list[run.Scenario], servers: list[str],
            info: dict[str, Any], notes: list[str]) -> str:
    m = info["machine"]
    lines = [
        BEGIN,
        "## Publishing: how fast events get in",
        "",
        f"Written by `bench/publish.py{' --quick' if info['quick'] else ''}` on {info['date']} (took "
        f"{info['seconds']:.0f} s), every server in the same run"
        f"{' (QUICK run: tiny scenarios, figures are not meaningful)' if info['quick'] else ''}.",
        "",
        f"- Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}, Twisted {m['twisted']}; "
        f"load average before: {info['load_before']}, after: {m['load']}; pinning: {info['pinning']}.",
        f"- Peers: {m['peers']}.",
        "- Load: `bench/sseload.c` with 16 publisher threads, each with one keep-alive connection and one POST in "
        "flight; single events are `{\"m\": ...}` bodies (one message for the peers), batches JSON arrays of 100 of "
        "them (the daemon only: a peer would take each body as one message); a streaming publish is one publisher "
        "sending NDJSON lines in one chunked POST as fast as TCP takes them, its rate the events its answer "
        "accepted over the time to that answer. The daemon: as in the fan-out table "
        "(one http ingest and one sse-server sink on one port, history in memory).",
        *[f"- {note}" for note in notes],
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
        *[f"| {t} | {f} | {v} |" for t, f, v in targets(res)],
        "",
    ]
    for sc in scs:
        shown = [s for s in servers if sc.key in res.get(s, {})]
        head = ["figure", *shown]
        lines += [f"### {sc.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, key, nd in ROWS:
            vals = [run.get(res[s].get(sc.key), key) for s in shown]
            if all(v is None for v in vals):
                continue
            cells = [run.fmt(int(round(v)) if isinstance(v, float) and nd == 0 else v, nd) for v in vals]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        for s in shown:
            if err := (res[s].get(sc.key) or {}).get("error"):
                lines.append(f"\n{s}: failed: {err}")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny versions of each scenario; prints, writes nothing")
    ap.add_argument("--servers", default="sse-daemon,sse-starlette,Nchan,Twisted floor", help="comma-separated")
    ap.add_argument("--out", type=Path, default=run.BENCH / "RESULTS.md", help="the results file whose section is written")
    args = ap.parse_args(argv)
    started = time.monotonic()
    load_before = " ".join(open("/proc/loadavg").read().split()[:3])
    run.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="sse-bench-publish-"))
    classes: dict[str, type[run.Server]] = {"sse-daemon": run.Daemon, "sse-starlette": run.Starlette, "Nchan": run.Nchan,
                                            "Twisted floor": TwistedFloor}
    notes: list[str] = []
    try:
        client = run.build_client(work)
        two = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        pin_server, pin_client = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if two else ([], [])
        servers = []
        for name in (s.strip() for s in args.servers.split(",") if s.strip()):
            why = run.Nchan.available() if name == "Nchan" else run.ensure_peer_packages() if name == "sse-starlette" else None
            if why:
                notes.append(f"{name} skipped: {why}.")
            else:
                servers.append(name)
        scs = scenarios(args.quick)
        res: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in servers}
        for sc in scs:
            for name in servers:
                if (sc.batch > 1 or sc.ndjson) and name in PEERS:
                    continue
                print(f"bench: {sc.key} on {name} ...", file=sys.stderr, flush=True)
                runs = []
                for _ in range(sc.repeat):
                    server = classes[name](work, pin_server)
                    try:
                        runs.append(run.run_one(server, sc, client, pin_client))
                    except Exception as e:  # one failed run is reported, the others go on
                        runs.append({"error": f"{type(e).__name__}: {e}"})
                result = res[name][sc.key] = run.median_run(runs, sc.median_of)
                print("bench:   " + json.dumps({k: result.get(k) for k in ("publish_rate", "publish_errors", "lat_ms_p99",
                                                                            "cpu_us_per_published", "error")}),
                      file=sys.stderr, flush=True)
        info = {"machine": run.machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "quick": args.quick, "seconds": time.monotonic() - started, "load_before": load_before,
                "pinning": "server on CPU 0, client on CPU 1 (taskset)" if two else "none (needs taskset and 2 CPUs)"}
        text = section(res, scs, servers, info, notes)
        if args.quick:
            sys.stdout.write(text + "\n")
        else:
            run.put_section(args.out, BEGIN, END, text)
            args.out.with_name(args.out.stem + "-publish.json").write_text(json.dumps({"info": info, "results": res}, indent=1))
            print(f"bench: wrote {args.out}", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
