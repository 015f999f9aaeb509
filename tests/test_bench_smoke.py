"""The benchmark itself runs: `bench/run.py --quick` against a real twistd, no timing asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.reactor_free
@pytest.mark.timeout(120)
def test_quick_benchmark_writes_a_table_with_deliveries(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C compiler (cc) to build bench/sseload.c; CI must have one")
        pytest.skip("no C compiler (cc) to build bench/sseload.c")
    out = tmp_path / "RESULTS.md"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
                             "--servers", "sse-daemon,sse-daemon (2 workers)", "--out", str(out)],
                            capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "## Targets of issue 7" in table
    assert "| delivered events/s |" in table
    assert "daemon (2 workers) / sse-daemon" in table
    assert "| A: with worker.count=2, ≥ half of Nchan's deliveries/s |" in table
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    for name in ("sse-daemon", "sse-daemon (2 workers)"):
        runs = results[name]
        for key in ("A", "B200", "B20", "Dref", "D", "E"):
            assert "error" not in runs[key], (name, runs[key])
            assert runs[key]["delivered"] > 0, (name, key, runs[key])
        assert runs["C1k"]["ready"]["connected"] > 0, (name, runs["C1k"])
    # the 2-worker daemon is measured as twistd plus its two worker processes
    workers = results["sse-daemon (2 workers)"]
    assert workers["A"]["processes"] == 3, workers["A"]
    assert len(workers["A"]["cpu_by_process"]) == 3, workers["A"]


@pytest.mark.reactor_free
@pytest.mark.timeout(120)
def test_quick_relay_benchmark_carries_the_upstreams_events(tmp_path: Path) -> None:
    """`bench/relay.py --quick`: sseload as the upstream (its --upstream and --external modes), a real twistd relaying."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler (cc) to build bench/sseload.c")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "relay.py"), "--quick"],
                            capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| 500 |")]
    assert len(rows) == 3, result.stdout  # the default relay, flush.interval 0 and 2 ms
    for cells in rows:
        published, lost = int(cells[1].replace(",", "")), cells[5]
        assert published >= 475, cells  # the upstream kept the offered 500/s
        assert lost == "0", cells
    assert "failed:" not in result.stdout


@pytest.mark.reactor_free
@pytest.mark.timeout(60)
def test_send_floor_measures_the_writers_cpu(tmp_path: Path) -> None:
    """`bench/sendfloor.c` builds, writes a window's frames to each reader and reports its CPU for them."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build bench/sendfloor.c")
    program = tmp_path / "sendfloor"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(program), str(ROOT / "bench" / "sendfloor.c")], check=True)
    result = subprocess.run([str(program), "3", "2000", "64", "1000", "0.3"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("subscribers 3, 2000 events/s of 64 B, window 1000 us"), line
    sends = int(line.split(": ")[1].split(" sends")[0])
    assert sends >= 3 * 200, line  # a send to each of the 3 readers in (nearly) every 1 ms window of 0.3 s
    assert "(0 short)" in line, line
    assert "of a core" in line, line
    bad = subprocess.run([str(program), "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr
