"""A sink's history on disk (``history.path``), proven over real ``twistd`` processes.

Acknowledged means durable: every event ingest answered 200 for is replayed, exactly once
and in order, to a client that resumes with a ``Last-Event-ID`` from before a SIGKILL, a
SIGTERM restart or a reload, with no reset event. A corrupt file stops the start with one
line (or is moved aside), and a disk that refuses writes turns publishes into 503s, counted,
until it takes them again. Everything on 127.0.0.1, port 0; waits on conditions, never sleeps.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from .conftest import DEADLINE, RawHttpClient, next_response, TwistdProcess, deadline, header, raw_request, status, subscribe, \
    twistd_command, wait_for, write_config
from .test_sink import messages

ROOT = Path(__file__).resolve().parent.parent

#: the body of the marker event published after a resume: once a client has it, the replay is complete
MARKER = 999_999_999

GARBAGE = b"this is not an SQLite database, whatever its name says\n" * 200


# --------------------------------------------------------------------------- configuration and processes


def config_text(history: Path, workers: int = 1, admin: bool = False, pad: bool = False, **sink: Any) -> str:
    """An http ingest and an sse-server sink with ``history.path``; on one port, or with ``workers``
    above 1 the ingest on a port of its own (the sink's is the workers')."""
    options = {"history.path": str(history), "history.size": 5000, "drain.window": 0.3, "drain.batch.min": 1,
               **({"worker.count": workers} if workers > 1 else {}), **sink}
    extra = "".join(f", {k}: {json.dumps(v) if isinstance(v, str) else v}" for k, v in options.items())
    schema = "n int, pad string" if pad else "n int"
    return (
        ("admin: {host: 127.0.0.1, port: 0}\n" if admin else "")
        + "sources:\n"
        + f'  In: {{type: http, stream: S, schema: "{schema}", receiver.url: "http://127.0.0.1:0/in"}}\n'
        + "sinks:\n"
        + f"  S: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 0, server.path: events{extra}}}\n"
    )


def write(tmp_path: Path, text: str) -> Path:
    return write_config(tmp_path, text, "durable.yaml")


def ports(output: bytes) -> dict[str, int]:
    """Each listener's port, by what it serves: ``sink``, ``ingest``, ``admin`` (from twistd's log)."""
    found: dict[str, int] = {}
    for port, what in re.findall(rb"listening on 127\.0\.0\.1:(\d+) for ([^\n]*)", output):
        if b"source 'In'" in what:
            found["ingest"] = int(port)
        if b"sink 'S'" in what:
            found["sink"] = int(port)
        if b"admin" in what:
            found["admin"] = int(port)
    for port in re.findall(rb"admin listener on (?:http://)?127\.0\.0\.1:(\d+)", output):
        found["admin"] = int(port)
    if "sink" in found and "ingest" not in found:
        found["ingest"] = found["sink"]
    return found


class Daemon(TwistdProcess):
    """``twistd -n sse-daemon`` on the test's config; optionally under a file size limit
    (``RLIMIT_FSIZE``, soft only, so the test can lift it while the daemon runs: ``prlimit``).
    Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing it."""

    def __init__(self, fsize: int | None = None, workers: int = 1) -> None:
        super().__init__()
        self.fsize = fsize
        self.workers = workers
        self.ports: dict[str, int] = {}

    async def launch(self, config: Path, cwd: Path) -> int:
        limit = "" if self.fsize is None else (
            f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({self.fsize}, resource.RLIM_INFINITY)); ")
        code = limit + "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        reactor.spawnProcess(self, sys.executable, [sys.executable, "-c", code, "-n", "--pidfile=", "sse-daemon",
                                                    "--config", str(config)], env=os.environ.copy(), path=str(cwd))

        def serving() -> bool:
            found = ports(self.output)
            if "sink" not in found or (b"admin:" in config.read_bytes() and "admin" not in found):
                return False
            if self.workers > 1 and len(set(re.findall(rb"worker (\d+) of sink S serving", self.output))) < self.workers:
                return False
            self.ports = found
            return True

        await wait_for(lambda: serving() or self.ended, what="twistd to serve")
        assert not self.ended, self.output.decode(errors="replace")
        return self.ports["sink"]

    @property
    def pid(self) -> int:
        return self.transport.pid


async def start(config: Path, cwd: Path, **kwargs: Any) -> Daemon:
    daemon = Daemon(**kwargs)
    await daemon.launch(config, cwd)
    return daemon


# --------------------------------------------------------------------------- publishers and subscribers


class Publisher(RawHttpClient):
    """POSTs one event after another on one kept-alive connection, each once the last is answered.

    Stops at the first answer that is not 200, at ``stop()``, or when the connection ends (a
    killed daemon): ``pending`` is then the one event sent and never answered, which may or may
    not have been kept; every one answered 200 must be."""

    def __init__(self, index: int, path: str = "/in", pad: int = 0) -> None:
        super().__init__()
        self.index, self.path, self.pad = index, path, pad
        self.sent = 0
        self.pending: int | None = None
        self.answers: list[tuple[int, int, bytes]] = []  # (n, status, the whole answer)
        self.stopping = False
        self._buffer = b""

    def n(self, i: int) -> int:
        return self.index * 1_000_000 + i

    def connectionMade(self) -> None:
        self._send()

    def _send(self) -> None:
        self.pending = self.n(self.sent)
        self.sent += 1
        event: dict[str, Any] = {"n": self.pending}
        if self.pad:
            event["pad"] = "x" * self.pad
        body = json.dumps(event).encode()
        self.transport.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (self.path.encode(), len(body), body))

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._buffer += data
        while (response := next_response(self._buffer)) is not None:
            head, body, self._buffer = response
            assert self.pending is not None
            self.answers.append((self.pending, status(head), head + body))
            self.pending = None
            if status(head) != 200 or self.stopping:
                self.transport.loseConnection()
                return
            self._send()

    def stop(self) -> None:
        """Send nothing more; the one in flight is still answered."""
        self.stopping = True

    def acked(self) -> list[int]:
        return [n for n, code, _ in self.answers if code == 200]

    def refused(self) -> list[tuple[int, int, bytes]]:
        return [answer for answer in self.answers if answer[1] != 200]


async def publishers(port: int, count: int, **kwargs: Any) -> list[Publisher]:
    started = [Publisher(i + 1, **kwargs) for i in range(count)]
    for publisher in started:
        await deadline(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), publisher))
    return started


async def publish_one(port: int, n: int, pad: str | None = None) -> int:
    """One POST with Connection: close; its status."""
    body = json.dumps({"n": n} if pad is None else {"n": n, "pad": pad}).encode()
    client = await raw_request(port, b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await deadline(client.closed)
    return status(bytes(client.received))


def events(client: RawHttpClient) -> list[tuple[int, int]]:
    """(id, n) of every event a subscriber got, in order; ids are integers (the sink's own)."""
    return [(int(m.id), json.loads(m.data)["event"]["n"]) for m in messages(bytes(client.received))
            if m.event == "message" and m.id]


def resets(client: RawHttpClient) -> list[str]:
    return [m.event for m in messages(bytes(client.received)) if m.event != "message"]


async def resume(port: int, last_id: int) -> RawHttpClient:
    return await subscribe(port, "/events", headers=f"Last-Event-ID: {last_id}\r\n")


def check_exact_resume(got: list[tuple[int, int]], after: int, acked: set[int], seen_before: set[int],
                       maybe: set[int], live: list[tuple[int, int]]) -> None:
    """What a client resuming after id ``after`` got (up to the marker) is every acknowledged event it had
    not seen, each once, in id order; besides those only events sent but never answered (``maybe``)."""
    ids = [i for i, _ in got]
    assert ids == sorted(set(ids)) and all(i > after for i in ids), f"ids not strictly increasing after {after}: {ids}"
    ns = [n for _, n in got]
    assert len(ns) == len(set(ns)), f"events replayed twice: {sorted(n for n in set(ns) if ns.count(n) > 1)}"
    missing = (acked - seen_before) - set(ns)
    assert not missing, f"{len(missing)} acknowledged events lost: {sorted(missing)[:10]}"
    extra = set(ns) - acked
    assert extra <= maybe, f"events nobody acknowledged or sent: {sorted(extra - maybe)[:10]}"
    assert not set(ns) & seen_before, "events from before the resume point replayed"
    for index in {n // 1_000_000 for n in ns}:
        mine = [n for n in ns if n // 1_000_000 == index]
        assert mine == sorted(mine), f"publisher {index}'s events out of order"
    by_n = dict((n, i) for i, n in live)
    changed = {n: (by_n[n], i) for i, n in got if n in by_n and by_n[n] != i}
    assert not changed, f"an event's id changed across the restart: {changed}"


async def resume_and_check(port: int, ingest: int, live: RawHttpClient, acked: set[int], maybe: set[int],
                           resume_at: int = 4, marker: int = MARKER) -> RawHttpClient:
    """Resume after the ``resume_at``-th event the live client saw, publish ``marker``, check the replay."""
    seen = events(live)
    assert len(seen) > resume_at, f"the live subscriber saw only {len(seen)} events"
    after = seen[resume_at][0]
    seen_before = {n for _, n in seen[:resume_at + 1]}
    again = await resume(port, after)
    assert await publish_one(ingest, marker) == 200
    await wait_for(lambda: any(n == marker for _, n in events(again)), what="the marker after the replay")
    got = events(again)
    assert not resets(again), f"a resume from {after} got {resets(again)}"
    marker_id = got[-1][0]
    assert got[-1][1] == marker and marker_id > max(i for i, _ in seen), "ids go on increasing after the restart"
    check_exact_resume(got[:-1], after, acked, seen_before, maybe, seen)
    return again


def unanswered(started: list[Publisher]) -> set[int]:
    return {p.pending for p in started if p.pending is not None}


# --------------------------------------------------------------------------- SIGKILL, SIGTERM, reload


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    history = tmp_path / "S.sqlite3"
    config = write(tmp_path, config_text(history))
    first = await start(config, tmp_path)
    second: Daemon | None = None
    try:
        live = await subscribe(first.ports["sink"])
        posting = await publishers(first.ports["ingest"], 2)
        await wait_for(lambda: all(len(p.acked()) >= 40 for p in posting) and len(events(live)) >= 10,
                       what="publishing under way")
        first.signal("KILL")  # while both publishers still post
        await wait_for(lambda: first.ended and all(p.is_closed for p in posting), what="the kill")
        acked = {n for p in posting for n in p.acked()}
        assert not any(p.refused() for p in posting), "nothing refused before the kill"
        second = await start(config, tmp_path)
        await resume_and_check(second.ports["sink"], second.ports["ingest"], live, acked, unanswered(posting))
    finally:
        await first.kill()
        if second is not None:
            await second.kill()


@pytest_twisted.ensureDeferred
async def test_sigterm_restart_resumes_exactly(tmp_path: Path) -> None:
    history = tmp_path / "S.sqlite3"
    config = write(tmp_path, config_text(history))
    first = await start(config, tmp_path)
    second: Daemon | None = None
    try:
        live = await subscribe(first.ports["sink"])
        posting = await publishers(first.ports["ingest"], 2)
        await wait_for(lambda: all(len(p.acked()) >= 40 for p in posting), what="publishing under way")
        await first.stop("TERM")
        assert first.reason.value.exitCode == 0, first.output
        await wait_for(lambda: all(p.is_closed for p in posting), what="the publishers to be closed")
        acked = {n for p in posting for n in p.acked()}
        for p in posting:
            assert all(code == 503 for _, code, _ in p.refused()), "refused only by the drain"
        second = await start(config, tmp_path)
        await resume_and_check(second.ports["sink"], second.ports["ingest"], live, acked, unanswered(posting))
    finally:
        await first.kill()
        if second is not None:
            await second.kill()


async def reload_to(daemon: Daemon, config: Path, text: str) -> None:
    before = daemon.output.count(b"configuration reloaded")
    config.write_text(text)
    daemon.signal("HUP")
    await wait_for(lambda: daemon.output.count(b"configuration reloaded") > before or b"reload rejected" in daemon.output,
                   what="the reload")
    assert b"reload rejected" not in daemon.output, daemon.output.decode(errors="replace")


@pytest.mark.parametrize("change", ["restarts-the-sink", "keeps-the-sink"])
@pytest_twisted.ensureDeferred
async def test_a_reload_mid_stream_resumes_exactly(tmp_path: Path, change: str) -> None:
    history = tmp_path / "S.sqlite3"
    config = write(tmp_path, config_text(history))
    daemon = await start(config, tmp_path)
    try:
        live = await subscribe(daemon.ports["sink"])
        posting = await publishers(daemon.ports["ingest"], 2)
        await wait_for(lambda: all(len(p.acked()) >= 20 for p in posting) and len(events(live)) >= 10,
                       what="publishing under way")
        if change == "restarts-the-sink":  # a changed sink option: the sink restarts on the same file
            text = config_text(history, **{"heartbeat.interval": 7})
        else:  # another connector changes: the sink, its subscribers and its file are kept
            text = config_text(history) + "  Log: {type: log, stream: S}\n"
        await reload_to(daemon, config, text)
        assert re.search(rb"configuration reloaded: [^\n]*" + (rb"restarted S" if change == "restarts-the-sink" else rb"added Log"),
                         daemon.output), daemon.output.decode(errors="replace")[-2000:]
        acked_at_reload = sum(len(p.acked()) for p in posting)
        await wait_for(lambda: sum(len(p.acked()) for p in posting) >= acked_at_reload + 40, what="publishing after the reload")
        for p in posting:
            p.stop()
        await wait_for(lambda: all(p.is_closed for p in posting), what="the publishers to finish")
        assert not any(p.refused() for p in posting), [p.refused()[:1] for p in posting]
        acked = {n for p in posting for n in p.acked()}
        if change == "keeps-the-sink":
            assert not live.is_closed, "a kept sink keeps its subscribers"
        else:
            await wait_for(lambda: live.is_closed, what="the restarted sink to close its subscribers")
        await resume_and_check(daemon.ports["sink"], daemon.ports["ingest"], live, acked, set())
        await daemon.stop("TERM")
        assert daemon.reason.value.exitCode == 0, daemon.output
    finally:
        await daemon.kill()


@pytest_twisted.ensureDeferred
async def test_workers_resume_from_the_file_after_a_restart(tmp_path: Path) -> None:
    history = tmp_path / "S.sqlite3"
    config = write(tmp_path, config_text(history, workers=2))
    first = await start(config, tmp_path, workers=2)
    second: Daemon | None = None
    try:
        live = await subscribe(first.ports["sink"])
        posting = await publishers(first.ports["ingest"], 1)
        await wait_for(lambda: len(posting[0].acked()) >= 60 and len(events(live)) >= 10, what="publishing under way")
        first.signal("KILL")
        await wait_for(lambda: first.ended and posting[0].is_closed, what="the kill")
        # the workers, orphaned by the kill, end when their pipe closes
        acked = set(posting[0].acked())
        second = await start(config, tmp_path, workers=2)
        for worker in (0, 1):
            held = re.search(rb"worker %d of sink S serving \(pid \d+, (\d+) events of history\)" % worker, second.output)
            assert held and int(held.group(1)) >= len(acked), f"worker {worker} did not load the file: {second.output!r}"
        # each connection lands on either worker: several resumes, each exact
        for attempt in range(6):
            earlier = {MARKER + i for i in range(attempt)}  # the markers of the resumes before
            again = await resume_and_check(second.ports["sink"], second.ports["ingest"], live, acked,
                                           unanswered(posting) | earlier, marker=MARKER + attempt)
            await again.close()
    finally:
        await first.kill()
        if second is not None:
            await second.kill()


# --------------------------------------------------------------------------- a corrupt file


def twistd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twistd_command(*args), capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.reactor_free
def test_a_corrupt_file_stops_the_start_with_one_line_and_check_says_so(tmp_path: Path) -> None:
    history = tmp_path / "S.sqlite3"
    history.write_bytes(GARBAGE)
    config = write(tmp_path, config_text(history))
    run = twistd("-n", "--pidfile=", "sse-daemon", "--config", str(config), cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if str(history) in line]
    assert lines and any("corrupt" in line or "not a database" in line for line in lines), output
    assert "history.on.corrupt" in output, "the line names the option that would move it aside"
    assert history.read_bytes() == GARBAGE, "refusing touches nothing"
    assert "listening on" not in output

    check = twistd("-n", "sse-daemon", "--config", str(config), "--check", cwd=tmp_path)
    assert check.returncode == 1, check.stdout + check.stderr
    assert str(history) in check.stderr and "Traceback" not in check.stdout + check.stderr
    assert history.read_bytes() == GARBAGE


@pytest.mark.reactor_free
@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_check_reports_a_path_it_cannot_use(tmp_path: Path, where: str) -> None:
    history = tmp_path / "nowhere" / "S.sqlite3" if where == "missing-directory" else tmp_path
    config = write(tmp_path, config_text(history))
    check = twistd("-n", "sse-daemon", "--config", str(config), "--check", cwd=tmp_path)
    assert check.returncode == 1, check.stdout
    assert "history.path" in check.stderr and str(history) in check.stderr and "Traceback" not in check.stderr


@pytest.mark.reactor_free
def test_history_path_is_refused_with_the_redis_bus(tmp_path: Path) -> None:
    config = write(tmp_path, "bus: {type: redis, url: 'redis://127.0.0.1:1/0'}\n" + config_text(tmp_path / "S.sqlite3"))
    check = twistd("-n", "sse-daemon", "--config", str(config), "--check", cwd=tmp_path)
    assert check.returncode == 1, check.stdout
    assert "history.path" in check.stderr and "redis" in check.stderr.lower() and "unknown option" not in check.stderr


@pytest_twisted.ensureDeferred
async def test_move_aside_starts_empty_and_keeps_the_bad_file(tmp_path: Path) -> None:
    history = tmp_path / "S.sqlite3"
    history.write_bytes(GARBAGE)
    config = write(tmp_path, config_text(history, **{"history.on.corrupt": "move-aside"}))
    daemon = await start(config, tmp_path)
    try:
        aside = list(tmp_path.glob("S.sqlite3.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == GARBAGE, list(tmp_path.iterdir())
        assert re.fullmatch(r"S\.sqlite3\.corrupt-\d{8}T\d{6}Z", aside[0].name), aside[0].name
        assert str(aside[0]).encode() in daemon.output, "the log names where the file went"
        assert b"Traceback" not in daemon.output
        # an id from the lost history cannot be vouched for: an honest reset, then what comes
        client = await resume(daemon.ports["sink"], 41)
        assert await publish_one(daemon.ports["ingest"], 1) == 200
        await wait_for(lambda: [n for _, n in events(client)] == [1], what="the new event")
        assert resets(client) == ["reset"]
        await daemon.stop("TERM")
        again = await start(config, tmp_path)  # the new file is a good one
        try:
            assert len(list(tmp_path.glob("S.sqlite3.corrupt-*"))) == 1
            replay = await resume(again.ports["sink"], 0)
            await wait_for(lambda: [n for _, n in events(replay)] == [1], what="the event kept in the new file")
        finally:
            await again.kill()
    finally:
        await daemon.kill()


# --------------------------------------------------------------------------- a full disk


def metric(admin_text: str, value_label: str) -> float:
    """The sum of every sample that carries a label with the value ``value_label``."""
    total = 0.0
    for family in text_string_to_metric_families(admin_text):
        for sample in family.samples:
            if value_label in sample.labels.values() and not sample.name.endswith("_created"):
                total += sample.value
    return total


async def metrics(port: int) -> str:
    client = await raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await deadline(client.closed)
    raw = bytes(client.received)
    assert status(raw) == 200, raw[:200]
    body = raw.partition(b"\r\n\r\n")[2]
    if (header(raw, "Transfer-Encoding") or "").lower() == "chunked":
        from .test_sink import _unchunk

        body = _unchunk(body)
    return body.decode()


async def fill_the_disk(tmp_path: Path) -> tuple[Path, Daemon, RawHttpClient, Publisher]:
    """A daemon whose disk is full as far as it can tell (a file size limit, RLIMIT_FSIZE, it cannot
    write past), a live subscriber, and a publisher that posted until its first refusal."""
    config = write(tmp_path, config_text(tmp_path / "S.sqlite3", admin=True, pad=True))
    daemon = await start(config, tmp_path, fsize=256 * 1024)
    live = await subscribe(daemon.ports["sink"])
    posting = (await publishers(daemon.ports["ingest"], 1, pad=2048))[0]
    await wait_for(lambda: posting.is_closed or len(posting.answers) >= 2000, timeout=60, what="the disk to fill")
    assert posting.refused() and posting.acked(), f"{len(posting.acked())} acknowledged, refused: {posting.refused()[:1]}"
    return config, daemon, live, posting


async def space_returns(daemon: Daemon) -> list[int]:
    """Lift the limit while the daemon runs (prlimit on its pid); publish n=3 until it is taken: the answers."""
    resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    answers: list[int] = []
    end = reactor.seconds() + DEADLINE
    while not answers or answers[-1] != 200:
        assert reactor.seconds() < end, f"still refused after the limit was lifted: {answers[-5:]}"
        answers.append(await publish_one(daemon.ports["ingest"], 3, pad=""))
        assert answers[-1] in (200, 503), answers
    return answers


@pytest_twisted.ensureDeferred
async def test_a_full_disk_refuses_publishes_with_503_and_recovers_when_space_returns(tmp_path: Path) -> None:
    config, daemon, live, posting = await fill_the_disk(tmp_path)
    try:
        n, code, answer = posting.refused()[0]
        assert code == 503, answer
        assert b"history-unavailable" in answer, answer
        assert header(answer, "Retry-After") is not None
        assert metric(await metrics(daemon.ports["admin"]), "history-unavailable") >= 1
        assert b"Traceback" not in daemon.output
        # still refused while the disk stays full; the daemon serves on
        assert await publish_one(daemon.ports["ingest"], 2, pad="x" * 2048) == 503
        assert not live.is_closed
        answers = await space_returns(daemon)
        counted = metric(await metrics(daemon.ports["admin"]), "history-unavailable")
        assert counted >= 2 + answers.count(503), "every refused publish is counted"
        await wait_for(lambda: any(n == 3 for _, n in events(live)), what="the first event after the recovery")
        kept = posting.acked() + [3]
        seen = events(live)
        assert [n for _, n in seen if n in kept] == kept, "every acknowledged event delivered, in order"
        # the file holds what was acknowledged and nothing refused: after a restart, a resume after
        # the first event replays exactly the rest
        first = next(i for i, n in seen if n == kept[0])
        await daemon.stop("TERM")
        again = await start(config, tmp_path)
        try:
            after = await resume(again.ports["sink"], first)
            await wait_for(lambda: any(n == 3 for _, n in events(after)), what="the replay after a restart")
            assert [n for _, n in events(after)] == kept[1:] and not resets(after)
        finally:
            await again.kill()
    finally:
        await daemon.kill()


@pytest_twisted.ensureDeferred
async def test_a_refused_publish_is_in_no_history(tmp_path: Path) -> None:
    """An event is kept and sent only once committed: one whose publisher got 503 reaches no
    subscriber and no resume, so a retry cannot make it arrive twice."""
    _, daemon, live, posting = await fill_the_disk(tmp_path)
    try:
        refused = posting.refused()[0][0]
        await space_returns(daemon)
        await wait_for(lambda: any(n == 3 for _, n in events(live)), what="the first event after the recovery")
        kept = posting.acked() + [3]
        first = next(i for i, n in events(live) if n == kept[0])
        replay = await resume(daemon.ports["sink"], first)  # before any restart: from the memory history
        await wait_for(lambda: any(n == 3 for _, n in events(replay)), what="the replay up to the event after")
        assert refused not in [n for _, n in events(live)], "a refused event reached a live subscriber"
        assert [n for _, n in events(replay)] == kept[1:] and not resets(replay)
    finally:
        await daemon.kill()


# --------------------------------------------------------------------------- the operator's side


@pytest.mark.reactor_free
def test_the_example_and_the_systemd_unit_keep_history_on_disk() -> None:
    from sse_daemon.config.load import load_files

    example = load_files([str(ROOT / "etc" / "sse-daemon.yaml")])
    sink = next(c for c in example.sinks if c.name == "PublishStream")
    assert sink.options.history_path == "var/PublishStream.sqlite3"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "/var/*" in ignored and (ROOT / "var").is_dir(), "var/ is there in a fresh clone, its content ignored"
    unit = (ROOT / "etc" / "sse-daemon.service").read_text()
    assert "\nStateDirectory=sse-daemon\n" in unit
    # the documented install rewrites the example's path into the state directory
    install = next(line for line in (ROOT / "docs" / "operations.md").read_text().splitlines()
                   if "sed" in line and "/var/lib/sse-daemon/" in line)
    command = install.split("sed ", 1)[1].split(" etc/sse-daemon.yaml", 1)[0]
    installed = subprocess.run(f"sed {command} {ROOT / 'etc' / 'sse-daemon.yaml'}", shell=True, check=True,
                               capture_output=True, text=True).stdout
    assert "history.path: /var/lib/sse-daemon/PublishStream.sqlite3" in installed
    assert textwrap.dedent(installed).count("history.path:") == 1
