"""``sse-daemon probe URL``: is this endpoint a working SSE stream, through every proxy on the way?

It connects like a browser's EventSource (``Accept: text/event-stream``,
``Accept-Encoding: gzip, deflate``), listens for ``duration`` seconds while
recording when every read arrived, and parses the stream with the daemon's
own :class:`~sse_daemon.wire.eventstream.EventStreamParser`. While listening it opens a
second connection with ``Last-Event-ID`` to check resume.

**Buffering heuristic.** A proxy that buffers holds what the server wrote
and lets it go in bursts. Arrival times alone cannot show that (a server
may well send ten events at once), so the probe looks for things that a
server *cannot* have written together:

1. two or more heartbeat comments in one burst: a server writes them one
   heartbeat interval apart, so the earlier ones were held back;
2. events whose ids are timestamps (seconds, ms, µs or ns since the epoch,
   as this daemon's are) and that arrive in one burst although they were
   written more than ``HELD_SPAN`` apart by their own clock.

A burst is a run of reads less than ``BURST_GAP`` apart. The first burst
(the response head's neighbourhood, where servers send padding, an opening
comment or a backlog) is never counted. One held-back burst spanning more
than a second, or two of any span, make the verdict "buffered"; one short
one is reported but put down to the network (a lost packet holds later
data too). A stream with nothing after its first burst cannot be judged.
"""

from __future__ import annotations

import base64
import codecs
import json
import statistics
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, RedirectAgent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from sse_daemon.policy.redact import redact_url, split_userinfo
from sse_daemon.wire.eventstream import EventStreamParser, Message, Rejection

#: reads closer than this belong to one burst (seconds)
BURST_GAP = 0.02
#: events written further apart than this (by their timestamp ids) cannot share a burst unheld
HELD_SPAN = 0.25
#: a single held-back burst this long is enough for the verdict on its own
HELD_ALONE = 1.0
#: exit statuses
EXIT_OK, EXIT_NOT_SSE, EXIT_DEGRADED = 0, 1, 3
#: response headers shown in the report; others are counted, not echoed (cookies stay out)
SHOWN_HEADERS = (
    "content-type", "cache-control", "content-encoding", "x-accel-buffering", "vary", "server", "via",
    "access-control-allow-origin", "access-control-allow-credentials", "expires", "pragma", "age", "x-cache",
)


@dataclass
class Problem:
    severity: str  # "error" (not a working stream), "warning" (works, but will bite), "info"
    text: str


@dataclass
class Report:
    url: str
    duration: float
    verdict: str = "unreachable"  # ok | buffered | silent | not-sse | unreachable
    exit_code: int = EXIT_NOT_SSE
    final_url: str | None = None
    status: int | None = None
    phrase: str | None = None
    http_version: str | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    framing: str | None = None
    time_to_head: float | None = None
    time_to_first_body_byte: float | None = None
    bytes: int = 0
    reads: int = 0
    events: int = 0
    events_with_ids: int = 0
    comments: int = 0
    retry: int | None = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    buffering: dict[str, Any] = field(default_factory=dict)
    ids: dict[str, Any] = field(default_factory=dict)
    resume: dict[str, Any] = field(default_factory=dict)
    ended: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def problem(self, severity: str, text: str) -> None:
        self.problems.append(Problem(severity, text))

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False, default=str)


# --------------------------------------------------------------------------- recording a stream


@dataclass
class Read:
    at: float
    size: int
    events: list[str]  # ids of the events this read completed ("" for none)
    comments: int


class _CommentLines:
    """Counts comment lines (heartbeats), which the parser rightly swallows."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._started = False

    def feed(self, data: bytes) -> int:
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        lines = (self._partial + text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._partial = lines.pop()
        return sum(1 for line in lines if line.startswith(":"))


class Recorder(Protocol):
    """A response body: every read with its arrival time, parsed as it comes."""

    def __init__(self, clock: Callable[[], float], encoding: str | None, on_read: Callable[["Recorder"], None]) -> None:
        self.clock = clock
        self.parser = EventStreamParser()
        self.comment_lines = _CommentLines()
        self.reads: list[Read] = []
        self.ids: list[str] = []
        self.events = 0
        self.rejections: list[Rejection] = []
        self.done: Deferred = Deferred()
        self.ended_at: float | None = None
        self.reason: Failure | None = None
        self.on_read = on_read
        self.stopping = False
        self._inflate = None
        if encoding == "gzip":
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflate = zlib.decompressobj()

    def dataReceived(self, data: bytes) -> None:
        at = self.clock()
        size = len(data)
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                data = b""
        ids: list[str] = []
        for item in self.parser.feed(data):
            if isinstance(item, Message):
                self.events += 1
                ids.append(item.id)
                if item.id:
                    self.ids.append(item.id)
            elif isinstance(item, Rejection):  # no Comment: this parser is not asked for them
                self.rejections.append(item)
        self.reads.append(Read(at, size, ids, self.comment_lines.feed(data)))
        self.on_read(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended_at = self.clock()
        self.reason = reason
        self.done.callback(None)

    def stop(self) -> None:
        self.stopping = True
        if self.transport is not None and self.ended_at is None:
            _producer(self.transport).stopProducing()


def _producer(transport: ITransport) -> IPushProducer:
    """A response body's transport: what ``IResponse.deliverBody`` gives is a producer, which
    stops the body (Twisted types ``Protocol.transport`` as any transport)."""
    return cast(IPushProducer, transport)


class _Discard(Protocol):
    """The body of a response that is no stream: closed at once (it may never end)."""

    def __init__(self) -> None:
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        if self.transport is not None:
            _producer(self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(None)


# --------------------------------------------------------------------------- analysis (pure)


def bursts(reads: list[Read], gap: float = BURST_GAP) -> list[list[Read]]:
    """Runs of reads less than ``gap`` apart."""
    groups: list[list[Read]] = []
    for read in reads:
        if groups and read.at - groups[-1][-1].at < gap:
            groups[-1].append(read)
        else:
            groups.append([read])
    return groups


def id_clock(ids: list[str], now: float) -> Callable[[str], float] | None:
    """If every id is a timestamp in one unit (s, ms, µs, ns), a function id -> seconds."""
    try:
        numbers = [int(i) for i in ids]
    except ValueError:
        return None
    if not numbers:
        return None
    for scale in (1, 1e3, 1e6, 1e9):
        if all(abs(n / scale - now) < 86400 * 3 for n in numbers):
            return _seconds_at(scale)
    return None


def _seconds_at(scale: float) -> Callable[[str], float]:
    """Reads an id that counts ``scale`` units per second, as seconds."""
    def to_seconds(text: str) -> float:
        return int(text) / scale
    return to_seconds


def judge_buffering(reads: list[Read], now: float) -> dict[str, Any]:
    """The heuristic in the module docstring; returns the verdict and its evidence."""
    groups = bursts(reads)
    later = groups[1:]
    all_ids = [i for read in reads for i in read.events if i]
    to_seconds = id_clock(all_ids, now)
    held: list[dict[str, Any]] = []
    for group in later:
        comments = sum(r.comments for r in group)
        if comments >= 2:
            held.append({"at": group[0].at, "why": f"{comments} heartbeat comments arrived together", "span": None})
        if to_seconds is not None:
            stamps = [to_seconds(i) for r in group for i in r.events if i]
            if len(stamps) >= 2 and max(stamps) - min(stamps) > HELD_SPAN:
                span = max(stamps) - min(stamps)
                held.append({"at": group[0].at, "why": f"{len(stamps)} events written {span:.2f}s apart arrived together", "span": span})
    units_after_first = sum(len(r.events) + r.comments for g in later for r in g)
    spread = None
    if to_seconds is not None:
        lags = [r.at - to_seconds(i) for g in later for r in g for i in r.events if i]
        if len(lags) >= 2:
            spread = max(lags) - min(lags)
    long_held = [h for h in held if (h["span"] or 0) >= HELD_ALONE]
    held_bursts = len({h["at"] for h in held})
    if held_bursts >= 2 or long_held:
        verdict = "buffered"
    elif units_after_first < 2:
        verdict = "unknown"
    else:
        verdict = "unbuffered"
    return {
        "verdict": verdict,
        "bursts": len(groups),
        "largest_burst": max((sum(len(r.events) + r.comments for r in g) for g in groups), default=0),
        "held_back": [h["why"] for h in held],
        "ids_are_timestamps": to_seconds is not None,
        "lag_spread": spread,
    }


def judge_heartbeat(reads: list[Read], buffered: bool) -> dict[str, Any]:
    groups = bursts(reads)[1:]
    times = [g[0].at for g in groups if sum(r.comments for r in g)]
    count = sum(r.comments for g in groups for r in g)
    interval = None
    if len(times) >= 2 and not buffered:
        interval = statistics.median(b - a for a, b in zip(times, times[1:]))
    return {"comments": count, "interval": interval}


def judge_resume(main_ids: list[str], anchor: str | None, resumed: list[str] | None, events: int | None = None) -> dict[str, Any]:
    """How a resume with ``Last-Event-ID`` went; ``events`` is how many events the main stream
    carried (with or without ids): none means ids could not be seen, not that there are none."""
    if events == 0:
        return {"verdict": "untested", "detail": "no event arrived while listening, so ids and resume are untested"}
    if not main_ids:
        return {"verdict": "no-ids", "detail": "the stream sent no event ids, so clients cannot resume"}
    if anchor is None or resumed is None:
        return {"verdict": "untested", "detail": "too few events with ids arrived to try a resume"}
    position = main_ids.index(anchor)
    expected = main_ids[position + 1:]
    seen_before = set(main_ids[: position + 1])
    repeats = [i for i in resumed if i in seen_before]
    base = {"last_event_id": anchor, "received": len(resumed)}
    if repeats:
        return {**base, "verdict": "repeats", "detail": f"resumed after {anchor!r} but got {len(repeats)} event(s) again, e.g. {repeats[0]!r}"}
    if not resumed:
        if expected:
            return {**base, "verdict": "no-replay", "detail": f"nothing arrived on the resumed stream; {len(expected)} event(s) after {anchor!r} were missed"}
        return {**base, "verdict": "untested", "detail": "no event followed the resume point while listening"}
    if len(set(resumed)) != len(resumed):
        return {**base, "verdict": "repeats", "detail": "the resumed stream sent an id twice"}
    if expected and resumed[0] != expected[0]:
        missed = expected.index(resumed[0]) if resumed[0] in expected else len(expected)
        return {**base, "verdict": "no-replay", "detail": f"resumed after {anchor!r} at {resumed[0]!r}: {missed} event(s) in between were not replayed"}
    overlap = min(len(expected), len(resumed))
    if resumed[:overlap] != expected[:overlap]:
        return {**base, "verdict": "out-of-order", "detail": "the resumed stream's events differ from the original's"}
    return {**base, "verdict": "ok", "detail": f"the next event followed {anchor!r} with no repeats ({len(resumed)} received)"}


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    kind, *params = content_type.split(";")
    parsed = {}
    for param in params:
        name, _, value = param.partition("=")
        parsed[name.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), parsed


# --------------------------------------------------------------------------- the probe


def _header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return ", ".join(v.decode("latin-1") if isinstance(v, bytes) else v for v in values) if values else None


def _request_headers(extra: list[tuple[str, str]], last_event_id: str | None = None) -> Headers:
    headers = Headers({
        b"Accept": [b"text/event-stream"],
        b"Cache-Control": [b"no-cache"],
        b"Accept-Encoding": [b"gzip, deflate"],  # as browsers do: a compressing proxy shows itself
        b"User-Agent": [b"sse-daemon-probe"],
    })
    for name, value in extra:
        headers.setRawHeaders(name.encode("latin-1"), [value.encode("utf-8")])
    if last_event_id is not None:
        headers.setRawHeaders(b"Last-Event-ID", [last_event_id.encode("utf-8")])
    return headers


async def probe(
    url: str, duration: float = 20.0, reactor: Any = None, *, timeout: float = 10.0,
    headers: list[tuple[str, str]] | None = None, resume: bool = True,
) -> Report:
    """Listen to ``url`` for ``duration`` seconds and judge it; never raises for the endpoint's faults."""
    if reactor is None:
        from twisted.internet import reactor
    report = Report(url=redact_url(url), duration=duration)  # the report never holds a credential
    try:
        url, userinfo = split_userinfo(url)  # user:password@ goes as Basic credentials, as curl sends it
    except ValueError as e:  # an unclosed [ or such: the operator's typo, reported as an unreachable URL is
        report.problem("error", f"not a URL: {e}")
        return _finish(report, None)
    extra = list(headers or [])
    if userinfo is not None and not any(name.lower() == "authorization" for name, _ in extra):
        extra.insert(0, ("Authorization", "Basic " + base64.b64encode(":".join(userinfo).encode("utf-8")).decode("ascii")))
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = RedirectAgent(Agent(reactor, connectTimeout=timeout, pool=pool))
    clock = reactor.seconds
    recorders: list[Recorder] = []
    timers: list[Any] = []
    resume_state: dict[str, Any] = {"anchor": None, "recorder": None, "started": False}

    async def connect(last_event_id: str | None) -> IResponse:
        d = agent.request(b"GET", url.encode("utf-8"), _request_headers(extra, last_event_id))
        return await d.addTimeout(timeout, reactor)

    def start_resume() -> None:
        if resume_state["started"] or not resume or main is None or main.ended_at is not None or not main.ids:
            return
        resume_state["started"] = True
        anchor = main.ids[-2] if len(main.ids) >= 2 else main.ids[-1]
        resume_state["anchor"] = anchor
        task = Deferred.fromCoroutine(open_resumed(anchor))
        task.addErrback(resume_failed)
        resume_state["task"] = task

    def resume_failed(failure: Failure) -> None:
        resume_state["error"] = f"resuming failed: {_describe(failure)}"

    async def open_resumed(anchor: str) -> None:
        response = await connect(anchor)
        if response.code != 200:
            resume_state["error"] = f"status {response.code} when resuming"
            discard = _Discard()
            response.deliverBody(discard)
            await discard.done
            return
        recorder = Recorder(clock, _header(response, "content-encoding"), lambda r: None)
        resume_state["recorder"] = recorder
        recorders.append(recorder)
        response.deliverBody(recorder)
        if main is None or main.ended_at is not None:
            recorder.stop()

    def on_main_read(recorder: Recorder) -> None:
        if len(recorder.ids) >= 2:
            start_resume()

    main: Recorder | None = None
    started = clock()
    try:
        try:
            response = await connect(None)
        except Exception as e:  # connection refused, DNS, TLS, timeout: all "unreachable"
            report.problem("error", f"no response: {_describe(e)}")
            return _finish(report, None)
        report.time_to_head = clock() - started
        report.status = response.code
        report.phrase = response.phrase.decode("latin-1", "replace") if isinstance(response.phrase, bytes) else str(response.phrase)
        report.http_version = "HTTP/%d.%d" % response.version[1:]
        request = getattr(response, "request", None)
        final = getattr(request, "absoluteURI", None)
        if isinstance(final, bytes) and final.decode("utf-8", "replace") != url:
            report.final_url = redact_url(final.decode("utf-8", "replace"))
        report.content_type = _header(response, "content-type")
        for name, values in response.headers.getAllRawHeaders():
            text = name.decode("latin-1").lower()
            if text in SHOWN_HEADERS:
                report.headers[text] = ", ".join(v.decode("latin-1", "replace") for v in values)
        if response.length is not UNKNOWN_LENGTH:
            report.framing = f"Content-Length: {response.length}"
        else:
            report.framing = "chunked" if response.version >= (b"HTTP", 1, 1) else "until the connection closes"
        if not _check_head(report):
            discard = _Discard()
            response.deliverBody(discard)
            await discard.done
            return _finish(report, None)

        main = Recorder(clock, report.headers.get("content-encoding"), on_main_read)
        recorders.append(main)
        response.deliverBody(main)
        listened: Deferred[None] = Deferred()

        def stop_listening(_: object = None) -> None:
            if not listened.called:
                listened.callback(None)

        timers.append(reactor.callLater(duration, stop_listening))
        timers.append(reactor.callLater(duration / 2, start_resume))
        main.done.addCallback(stop_listening)
        await listened
        # If the server ended the stream early, give a resume in flight a moment.
        return _finish(report, main, resume_state, started)
    finally:
        for timer in timers:
            if timer.active():
                timer.cancel()
        task = resume_state.get("task")
        if task is not None and not task.called:
            task.cancel()  # a resume still waiting for its head
        for recorder in recorders:
            recorder.stop()
        await DeferredList([r.done for r in recorders], consumeErrors=True)
        await pool.closeCachedConnections()


def _describe(e: BaseException | Failure) -> str:
    from sse_daemon.client.failures import describe_failure  # the source's wording for the same failures

    try:
        return describe_failure(e)
    except Exception:
        reason = e.value if isinstance(e, Failure) else e
        return f"{type(reason).__name__}: {reason}"


def _check_head(report: Report) -> bool:
    """Status and headers; False when the response is not an event stream at all."""
    ok = True
    if report.status != 200:
        hint = " (204 tells EventSource clients to stop reconnecting)" if report.status == 204 else (
            "; an EventSource fails the connection and does not retry" if report.status and report.status >= 300 else "")
        report.problem("error", f"status {report.status} {report.phrase or ''}, expected 200{hint}")
        ok = False
    kind, params = media_type(report.content_type)
    if kind != "text/event-stream":
        report.problem("error", f"Content-Type is {report.content_type!r}, expected text/event-stream: EventSource refuses it")
        ok = False
    elif params.get("charset", "utf-8") != "utf-8":
        report.problem("warning", f"charset={params['charset']}: an event stream is always UTF-8, clients ignore this")
    if not ok:
        return False
    cache = report.headers.get("cache-control", "").lower()
    if "no-cache" not in cache and "no-store" not in cache:
        report.problem("warning", "no Cache-Control: no-cache (or no-store): a cache or proxy may hold the stream")
    encoding = report.headers.get("content-encoding")
    if encoding and encoding.lower() not in ("identity",):
        severity = "warning" if encoding.lower() in ("gzip", "deflate") else "error"
        report.problem(severity, f"Content-Encoding: {encoding}: a compressor holds events unless it flushes after each one")
        if severity == "error":
            ok = False
    if report.framing and report.framing.startswith("Content-Length"):
        report.problem("warning", f"{report.framing} on a stream: it ends after that many bytes, and proxies may wait for all of them")
    if report.http_version == "HTTP/1.0":
        report.problem("info", "HTTP/1.0 response: the stream is framed by closing the connection")
    return ok


def _finish(report: Report, main: Recorder | None, resume_state: dict[str, Any] | None = None, started: float = 0.0) -> Report:
    if main is not None:
        report.reads = len(main.reads)
        report.bytes = sum(r.size for r in main.reads)
        report.events = main.events
        report.events_with_ids = len(main.ids)
        report.comments = sum(r.comments for r in main.reads)
        report.retry = main.parser.retry
        if main.reads:
            report.time_to_first_body_byte = main.reads[0].at - started
        report.buffering = judge_buffering(main.reads, time.time())
        report.heartbeat = judge_heartbeat(main.reads, report.buffering["verdict"] == "buffered")
        report.ids = {
            "sent": bool(main.ids) if main.events else None,  # None: no event arrived, so untested
            "all_events_have_ids": bool(main.events) and len(main.ids) == main.events,
            "timestamps": report.buffering["ids_are_timestamps"],
        }
        resumed = resume_state.get("recorder") if resume_state else None
        result = judge_resume(main.ids, resume_state.get("anchor") if resume_state else None, resumed.ids if resumed else None,
                              main.events)
        if resume_state and resume_state.get("error") and result["verdict"] in ("untested", "no-replay"):
            result = {**result, "verdict": "failed", "detail": resume_state["error"]}
        report.resume = result
        if main.ended_at is not None and not main.stopping:
            why = "cleanly" if main.reason is None or main.reason.check(ResponseDone) else f"with {_describe(main.reason)}"
            report.ended = f"after {main.ended_at - started:.1f}s, {why}"
            report.problem("warning", f"the server ended the stream {report.ended}: clients reconnect after the retry delay")
        for rejection in main.rejections:
            report.problem("warning", f"the parser skipped an event ({rejection.reason}, {rejection.size} characters)")
        _judge_flow(report)
    if any(p.severity == "error" for p in report.problems):
        report.verdict = "not-sse" if report.status is not None else "unreachable"
        report.exit_code = EXIT_NOT_SSE
    elif report.verdict == "buffered" or report.verdict == "silent":
        report.exit_code = EXIT_DEGRADED
    else:
        report.verdict = "ok"
        report.exit_code = EXIT_OK
    return report


def _judge_flow(report: Report) -> None:
    buffering = report.buffering
    if report.bytes == 0:
        report.verdict = "silent"
        report.problem("warning", f"not one byte of body in {report.duration:g}s: the server sends nothing yet "
                       "(no opening comment, no heartbeat) or a proxy holds the stream")
        return
    if buffering["verdict"] == "buffered":
        report.verdict = "buffered"
        report.problem("warning", "events arrive in bursts that the server did not write together: something on the way "
                       "buffers the stream (" + "; ".join(buffering["held_back"][:3]) + ")")
    elif buffering["held_back"]:
        report.problem("info", "one burst looked held back (" + buffering["held_back"][0] + "); once is usually the network")
    if report.time_to_first_body_byte is not None and report.time_to_head is not None:
        wait = report.time_to_first_body_byte - report.time_to_head
        if wait > 1.0:
            report.problem("info", f"the body started {wait:.1f}s after the head: send a comment at once so proxies flush the head")
    if report.comments == 0 and report.events == 0 and report.duration >= 5:
        report.problem("warning", f"no heartbeat or event after the first bytes in {report.duration:g}s: idle proxies "
                       "(nginx 60 s, many load balancers 60-100 s) cut silent streams")
    interval = report.heartbeat.get("interval")
    if interval is not None and interval > 55:
        report.problem("warning", f"heartbeat every {interval:.0f}s: longer than nginx's default 60 s read timeout allows safely")
    if report.resume.get("verdict") in ("repeats", "no-replay", "out-of-order", "failed"):
        report.problem("warning", "resume with Last-Event-ID: " + report.resume["detail"])


# --------------------------------------------------------------------------- the human-readable report


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_report(report: Report) -> str:
    rows: list[tuple[str, str]] = [
        ("url", report.url + (f" (redirected to {report.final_url})" if report.final_url else "")),
        ("status", f"{report.status} {report.phrase or ''} ({report.http_version})" if report.status else "no response"),
    ]
    if report.status is not None:
        rows += [
            ("content type", report.content_type or "(none)"),
            ("framing", report.framing or "-"),
            ("time to head", _ms(report.time_to_head)),
        ]
    if report.buffering:  # the body was read
        rows += [
            ("first body byte", _ms(report.time_to_first_body_byte)),
            ("received", f"{report.bytes} bytes in {report.reads} reads over {report.duration:g}s"),
            ("events", f"{report.events} ({report.events_with_ids} with ids), {report.comments} comment lines"),
        ]
    if report.buffering:
        b = report.buffering
        text = {"unbuffered": "none seen: events arrived as they were written",
                "buffered": "BUFFERED: events arrive in held-back bursts",
                "unknown": "cannot tell: too little arrived after the first burst"}[b["verdict"]]
        if b.get("lag_spread") is not None:
            text += f" (timestamp ids: arrival lag varied by {_ms(b['lag_spread'])})"
        rows.append(("buffering", text))
        hb = report.heartbeat
        rows.append(("heartbeat", f"every {hb['interval']:.2f}s" if hb.get("interval") else
                     f"{hb.get('comments', 0)} comment lines; interval not measurable"))
        sent = report.ids.get("sent")
        ids = "untested (no event arrived)" if sent is None else "sent" if sent else "not sent"
        if report.ids.get("timestamps"):
            ids += " (timestamps)"
        rows.append(("ids", ids))
        rows.append(("resume", f"{report.resume.get('verdict')}: {report.resume.get('detail')}"))
        rows.append(("retry", f"{report.retry} ms" if report.retry is not None else "not sent (clients use their default, ~3 s)"))
    for name, value in sorted(report.headers.items()):
        rows.append((f"  {name}", value))
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"sse-daemon probe: {report.verdict.upper()}"]
    lines += [f"  {k.ljust(width)}{v}" for k, v in rows]
    if report.problems:
        lines.append("problems:")
        lines += [f"  {p.severity:<8} {p.text}" for p in report.problems]
    lines.append({
        "ok": "verdict: a working SSE stream",
        "buffered": "verdict: an SSE stream, but something buffers it (exit 3)",
        "silent": "verdict: an SSE response, but nothing arrived (exit 3)",
        "not-sse": "verdict: not a working SSE stream (exit 1)",
        "unreachable": "verdict: unreachable (exit 1)",
    }[report.verdict])
    return "\n".join(lines)
