"""The relay benchmark: an upstream SSE server -> this daemon's `sse` source -> its sink -> subscribers.

    .venv/bin/python bench/relay.py                   # about 3 minutes: its section of bench/RESULTS.md
    .venv/bin/python bench/relay.py --quick           # tiny versions (seconds), printed, nothing written
    .venv/bin/python bench/relay.py --upstream nchan  # Nchan as the upstream, fed by POSTs (the earlier layout)

The spec's own pair of connectors as a relay (issue 17, part 4). The upstream is, by default,
`bench/sseload.c --upstream`: a C server that writes the events itself at the offered rate, as
they fall due, to every connection (a few events a write), so that the upstream costs next to
nothing on the client's CPU. (With Nchan as the upstream, its 16 publishers' POSTs, Nchan and
the readers of 100 subscribers shared CPU 1 and fell behind first at 20,000 events/s: that
layout measured the second core, not the daemon.) The daemon, alone on CPU 0, reads it with one
`sse` source and re-serves the stream on an `sse-server` sink to 100 subscribers. The same load
is also read from the upstream directly (the same upstream on CPU 0, serving them all), so the
latency the hop adds is the difference at each rate. Offered rates step up; each step is a fresh
upstream and a fresh daemon; the relay runs three times: as configured by default (the sink's
`flush.interval` at 1 ms: a write per subscriber at most every millisecond), with it at 0 (a
write at the end of every reactor turn, the default before) and at 2 ms. CPU per relayed event
is the daemon's user + system time while publishing over the events it delivered to one
subscriber.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py: the servers, the client, the formatting)

BEGIN = "<!-- relay: begin (written by bench/relay.py; a full run of bench/run.py keeps it) -->"
END = "<!-- relay: end -->"
SUBSCRIBERS = 100
SECONDS = 5


class NchanUpstream(run.Nchan):
    """Nchan as the upstream (``--upstream nchan``), fed by the load client's POSTs. Relaying, it runs on the
    client's CPU and serves one subscriber (the daemon's source); read directly, it gets the daemon's CPU."""

    name = "upstream read directly"


class SseloadUpstream(run.Server):
    """``sseload --upstream``: writes ``sc.count`` events at ``sc.rate`` itself once told to go (SIGUSR1); what
    it kept of the rate is its own report, read after the run (a reader slower than the rate slows it)."""

    name = "upstream read directly"

    def __init__(self, workdir: Path, pin: list[str], client: Path, sc: run.Scenario) -> None:
        super().__init__(workdir, pin)
        self.client, self.sc = client, sc

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.pin, str(self.client), "--upstream", "--port", "0", "--rate", str(self.sc.rate),
             "--count", str(self.sc.count), "--max-seconds", str(self.sc.max_seconds), "--pad", str(self.sc.pad)],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def go(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)

    def after_run(self, result: dict[str, Any]) -> None:
        """The events the upstream wrote, and at what rate, replace what the reader assumed (all of them, on time)."""
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        done = json.loads(self.proc.stdout.readline()) if ready else {}
        if not done:
            result["error"] = "the upstream did not report"
            return
        for key in ("published", "publish_seconds", "publish_rate"):
            result[key] = done[key]
        result["expected"] = done["published"] * self.sc.subs


class Relay(run.Daemon):
    """The daemon relaying the upstream: its `sse` source reads it, its sink serves the subscribers."""

    name = "relayed by sse-daemon (flush.interval 1 ms, the default)"

    def __init__(self, workdir: Path, pin: list[str], upstream: run.Server) -> None:
        super().__init__(workdir, pin)
        self.upstream = upstream

    def config_text(self) -> str:
        return (
            "sources:\n"
            f"  Up: {{type: sse, stream: S, schema: 'm string', receiver.url: 'http://127.0.0.1:{self.upstream.port}/sub'}}\n"
            "sinks:\n"
            "  S: {type: sse-server, stream: S, schema: 'm string', server.host: 127.0.0.1, server.port: 0,\n"
            "      server.path: /sub, heartbeat.interval: 0, drain.window: 0}\n"
        )

    def start(self) -> None:
        self.upstream.start()
        super().start()
        self.pub_port = self.upstream.port  # where the load client's publishers POST (Nchan as the upstream)
        end = time.monotonic() + 30
        while "source Up connected to" not in self.log.read_text(errors="replace"):
            if time.monotonic() > end or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"the source did not connect:\n{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def _listening(self, log: str) -> bool:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) for sink 'S'", log)
        if m:
            self.port = int(m.group(1))
        return bool(m)

    def go(self) -> None:
        self.upstream.go()

    def after_run(self, result: dict[str, Any]) -> None:
        super().after_run(result)
        self.upstream.after_run(result)

    def stop(self) -> None:
        super().stop()
        self.upstream.stop()


class WindowedRelay(Relay):
    """The same relay with the sink's ``flush.interval`` at 2 ms: a write per subscriber at most every 2 ms."""

    name = "relayed, flush.interval 2 ms"

    def config_text(self) -> str:
        return super().config_text().replace("drain.window: 0}", "drain.window: 0, flush.interval: 0.002}")


class EveryTurnRelay(Relay):
    """The same relay with the sink's ``flush.interval`` at 0: a write to every subscriber at the end of every turn."""

    name = "relayed, flush.interval 0"

    def config_text(self) -> str:
        return super().config_text().replace("drain.window: 0}", "drain.window: 0, flush.interval: 0}")


RELAYS = (Relay, EveryTurnRelay, WindowedRelay)


def rates(quick: bool) -> list[int]:
    return [500] if quick else [1_000, 5_000, 10_000, 20_000, 30_000, 50_000]


def scenario(rate: int, quick: bool, external: bool) -> run.Scenario:
    """``external``: the upstream writes the events (sseload --upstream); else 16 publishers POST them to Nchan."""
    seconds = 1 if quick else SECONDS
    subs = 10 if quick else SUBSCRIBERS
    return run.Scenario(f"R{rate}", f"{rate:,} events/s offered for {seconds} s to {subs} subscribers", subs,
                        count=rate * seconds, rate=rate, publishers=1 if external else 16, max_seconds=seconds * 2,
                        external=external)


def relayed_without_loss(results: dict[int, dict[str, Any]]) -> int | None:
    """The highest offered rate the relay carried whole: nothing lost, and the upstream kept the rate."""
    best = None
    for rate, r in sorted(results.items()):
        if r.get("error") or run.get(r, "loss") != 0 or (r.get("publish_rate") or 0) < 0.95 * rate:
            break
        best = rate
    return best


def added_p99(relay: dict[str, Any] | None, direct: dict[str, Any] | None) -> float | None:
    """The p99 latency the hop adds at one step: relayed minus read directly (None if either is missing)."""
    if not relay or not direct or run.get(relay, "lat_ms_p99") is None or run.get(direct, "lat_ms_p99") is None:
        return None
    return float(relay["lat_ms_p99"] - direct["lat_ms_p99"])


def relayed_within(results: dict[int, dict[str, Any]], direct: dict[int, dict[str, Any]], bound_ms: float = 2.0) -> int | None:
    """The highest rate carried whole with at most ``bound_ms`` of p99 added: the target's two halves at once."""
    whole = relayed_without_loss(results)
    within = [rate for rate in results if whole and rate <= whole
              and (added := added_p99(results[rate], direct.get(rate))) is not None and added <= bound_ms]
    return max(within, default=None)


DIRECT = SseloadUpstream.name  # the same name for either upstream


def section(res: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any], notes: list[str]) -> str:
    m = info["machine"]
    direct = res.get(DIRECT, {})
    nchan = info["upstream"] == "nchan"
    layout = (
        "- Relayed: the upstream (one nginx worker with Nchan, one subscriber: the daemon's source) and the load "
        "client (`bench/sseload.c`, 16 publisher connections POSTing to Nchan at the offered rate, and the "
        "subscribers) share CPU 1; the daemon has CPU 0 to itself. Direct: the same upstream serves the subscribers "
        "itself, on CPU 0, the client on CPU 1." if nchan else
        "- Relayed: the upstream (`bench/sseload.c --upstream`: a C server writing the events itself at the offered "
        "rate, as they fall due, a write per connection for the events due since its last one; one connection: "
        "the daemon's source) and the load client's readers (`bench/sseload.c --external`) share CPU 1; the daemon "
        "has CPU 0 to itself. Direct: the same upstream serves the subscribers itself, on CPU 0, the readers on "
        "CPU 1. \"published /s\" is the rate the upstream kept (its writes block on a reader that is behind).")
    lines = [
        BEGIN,
        "## Relaying: an upstream SSE server, this daemon's `sse` source, its sink, 100 subscribers",
        "",
        f"Written by `bench/relay.py{' --quick' if info['quick'] else ''}` on {info['date']} (took {info['seconds']:.0f} s)"
        f"{' (QUICK run: tiny scenarios, figures are not meaningful)' if info['quick'] else ''}.",
        "",
        f"- Machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']}; Python {m['python']}, Twisted {m['twisted']}; "
        f"load average before: {info['load_before']}, after: {m['load']}. Peers installed: {m['peers']}.",
        layout + " The hop's added latency is relayed minus direct (negative: the "
        "daemon hands events to the subscribers sooner than the upstream does itself). CPU per relayed event is "
        "the daemon's, its fan-out to the 100 subscribers included; \"carried whole\" means nothing lost and the "
        "offered rate kept, whatever the latency.",
        *[f"- {note}" for note in notes],
    ]
    for kind in RELAYS:
        relay = res.get(kind.name, {})
        if relay:
            lines += _relay_table(kind.name, direct, relay)
    lines += ["", END]
    return "\n".join(lines)


def _relay_table(name: str, direct: dict[int, dict[str, Any]], relay: dict[int, dict[str, Any]]) -> list[str]:
    """The targets' verdicts and the rows of one relay, against reading the upstream directly."""
    best, within = relayed_without_loss(relay), relayed_within(relay, direct)
    lines = ["", f"### {name}", "", "| target | figure | verdict |", "|---|---|---|"]
    met = bool(within and within >= 50_000)
    lines.append(f"| ≥ 50,000 events/s relayed on one core without loss, with p99 added latency ≤ 2 ms | "
                 f"{run.fmt(within, 0) + '/s (the highest step carried whole with ≤ 2 ms added)' if within else 'none of the steps'} | "
                 f"{'met' if met else 'NOT met'} |")
    lines.append(f"| (its first half) ≥ 50,000 events/s relayed on one core without loss | "
                 f"{run.fmt(best, 0) + '/s (the highest step carried whole)' if best else 'none of the steps'} | "
                 f"{'met' if best and best >= 50_000 else 'NOT met'} |")
    if best and (added := added_p99(relay.get(best), direct.get(best))) is not None:
        lines.append(f"| (its second half) p99 added latency ≤ 2 ms, at {run.fmt(best, 0)}/s | {added:.2f} ms "
                     f"({relay[best]['lat_ms_p99']:.2f} against {direct[best]['lat_ms_p99']:.2f} ms direct) | "
                     f"{'met' if added <= 2 else 'NOT met'} |")
    lines += ["", "| offered events/s | published /s | direct p50 / p99 (ms) | relayed p50 / p99 (ms) | added p50 / p99 (ms) "
              "| relayed: lost | daemon CPU per relayed event (µs) | daemon CPU share of one core |",
              "|---|---|---|---|---|---|---|---|"]
    for rate in sorted(set(direct) | set(relay)):
        d, r = direct.get(rate) or {}, relay.get(rate) or {}

        def pair(x: dict[str, Any]) -> str:
            return f"{x['lat_ms_p50']:.2f} / {x['lat_ms_p99']:.2f}" if x.get("lat_ms_p99") is not None and x.get("lat_ms_p99", -1) >= 0 else "—"

        added = (f"{r['lat_ms_p50'] - d['lat_ms_p50']:.2f} / {r['lat_ms_p99'] - d['lat_ms_p99']:.2f}"
                 if pair(d) != "—" and pair(r) != "—" else "—")
        per_event = r.get("server_cpu") / (r["delivered"] / max(r.get("subscribers", SUBSCRIBERS), 1)) * 1e6 \
            if r.get("server_cpu") is not None and r.get("delivered") else None
        share = r["server_cpu"] / r["publish_seconds"] if r.get("server_cpu") is not None and r.get("publish_seconds") else None
        lines.append(f"| {rate:,} | {run.fmt(r.get('publish_rate'), 0)} | {pair(d)} | {pair(r)} | {added} | "
                     f"{run.fmt(run.get(r, 'loss'), 0)} | {run.fmt(per_event, 1)} | {run.fmt(share, 2)} |")
        for who, x in (("direct", d), ("relayed", r)):
            if x.get("error"):
                lines.append(f"\n{rate:,}/s {who}: failed: {x['error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny version; prints, writes nothing")
    ap.add_argument("--out", type=Path, default=run.BENCH / "RESULTS.md", help="the results file whose section is written")
    ap.add_argument("--upstream", choices=("sseload", "nchan"), default="sseload",
                    help="the upstream: sseload --upstream (default) or Nchan fed by POSTs")
    args = ap.parse_args(argv)
    external = args.upstream == "sseload"
    if not external and (why := run.Nchan.available()):
        raise SystemExit(f"bench: the relay benchmark needs Nchan as its upstream: {why}")
    started = time.monotonic()
    load_before = " ".join(open("/proc/loadavg").read().split()[:3])
    run.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="sse-bench-relay-"))
    two = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    pin_server, pin_client = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if two else ([], [])
    notes: list[str] = [] if two else ["not pinned: taskset or a second CPU is missing"]
    try:
        client = run.build_client(work)
        res: dict[str, dict[int, dict[str, Any]]] = {DIRECT: {}, **{kind.name: {} for kind in RELAYS}}
        for rate in rates(args.quick):
            sc = scenario(rate, args.quick, external)

            def upstream(pin: list[str], sc: run.Scenario = sc) -> run.Server:
                return SseloadUpstream(work, pin, client, sc) if external else NchanUpstream(work, pin)

            makers: list[tuple[str, Any]] = [(DIRECT, lambda: upstream(pin_server))]
            makers += [(kind.name, lambda kind=kind: kind(work, pin_server, upstream(pin_client))) for kind in RELAYS]
            for name, make in makers:
                print(f"bench: {rate}/s {name} ...", file=sys.stderr, flush=True)
                server = make()
                try:
                    result = run.run_one(server, sc, client, pin_client)
                    result["subscribers"] = sc.subs
                except (Exception, subprocess.SubprocessError) as e:
                    result = {"error": f"{type(e).__name__}: {e}"}
                finally:
                    server.stop()
                res[name][rate] = result
                print("bench:   " + json.dumps({k: result.get(k) for k in ("publish_rate", "loss", "lat_ms_p50", "lat_ms_p99",
                                                                            "server_cpu", "error")}), file=sys.stderr, flush=True)
        info = {"machine": run.machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "quick": args.quick, "upstream": args.upstream, "seconds": time.monotonic() - started, "load_before": load_before}
        text = section(res, info, notes)
        if args.quick:
            sys.stdout.write(text + "\n")
        else:
            run.put_section(args.out, BEGIN, END, text)
            args.out.with_name(args.out.stem + "-relay.json").write_text(
                json.dumps({"info": info, "results": {k: {str(r): v for r, v in rs.items()} for k, rs in res.items()}}, indent=1))
            print(f"bench: wrote {args.out}", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
