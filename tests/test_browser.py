"""The status page in a real headless Chromium: figures, charts, and live events over the browser's own EventSource.

Selenium's calls block, so each runs in a thread (``deferToThread``) while
the reactor thread keeps serving the page, its JSON and its event stream.
Set ``UPDATE_SCREENSHOT=1`` to refresh ``docs/status-page.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from .conftest import deadline, sleep, subscribe, wait_for
from .system_tools import require

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
)

CONFIG = """\
streams:
  Orders: "item string, qty int"
sources:
  Shop:
    type: http
    stream: Orders
    receiver.url: http://127.0.0.1:0/shop
sinks:
  OrdersOut:
    type: sse-server
    stream: Orders
    server.host: 127.0.0.1
    server.port: 0
    server.path: orders
  Audit:
    type: log
    stream: Orders
admin:
  port: 0
"""


@pytest.fixture
def browser():
    yield from chromium()


def chromium(*extra_flags: str) -> Iterator[Any]:
    """A headless Chromium under chromedriver (skipped where it is not installed), quit after use."""
    require(CHROMIUM, "chromium")
    require(CHROMEDRIVER, "chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - the test extra installs it
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    profile = tempfile.mkdtemp(prefix="sse-daemon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # Debian's: nothing is downloaded
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    for flag in extra_flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await deadline(threads.deferToThread(function, *args))


async def until(driver: Any, script: str, what: str, timeout: float = 15.0) -> Any:
    """Run ``script`` in the page until it returns something truthy (a deadline, not a sleep)."""
    end = reactor.seconds() + timeout
    while True:
        value = await in_thread(driver.execute_script, script)
        if value:
            return value
        if reactor.seconds() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(0.05)


LIVE_IDS = "return [...document.querySelectorAll('#events li')].map(li => li.dataset.id).reverse()"
LIVE_DATA = "return [...document.querySelectorAll('#events li .data')].map(n => n.textContent).reverse()"


@pytest_twisted.ensureDeferred
async def test_status_page_shows_figures_and_live_events_and_resumes_after_a_drop(daemon, browser) -> None:
    service = await daemon(CONFIG)
    pool = HTTPConnectionPool(reactor, persistent=False)
    orders = f"http://127.0.0.1:{service.port_of('Shop')}/shop"

    async def order(item: str, qty: int) -> None:
        response = await deadline(treq.post(orders, data=f'{{"item":"{item}","qty":{qty}}}'.encode(), pool=pool))
        assert response.code == 200, await treq.content(response)
        await deadline(treq.content(response))

    await in_thread(browser.get, f"http://127.0.0.1:{service.admin.port}/#stream=Orders")
    await until(browser, "return document.getElementById('live-state').textContent === 'open'", "the live view to open")
    await until(browser, "return document.getElementById('ready').textContent === 'ready'", "the first status poll")

    # An event published over HTTP ingest reaches the page through the browser's own EventSource.
    await order("tea", 2)
    data = await until(browser, LIVE_DATA, "the event in the page")
    assert data == ['{"event":{"item":"tea","qty":2}}']
    live = service.admin.live["Orders"]
    assert len(live.subscribers) == 1, "the page's EventSource is a subscriber of the admin's sink for Orders"

    # The figures tables follow (status.json is polled every second).
    row = await until(browser, """
        const row = [...document.querySelectorAll('#sinks tbody tr')].find(r => r.cells[0].textContent === 'OrdersOut');
        return row && row.cells[5].textContent === '1' ? [...row.cells].map(c => c.textContent) : null""", "OrdersOut's row")
    assert row[:4] == ["OrdersOut", "sse-server", "Orders", "/orders"]
    source = await in_thread(browser.execute_script,
                             "return [...document.querySelector('#sources tbody tr').cells].map(c => c.textContent)")
    assert source[:3] == ["Shop", "http", "Orders"] and source[5] == "1"

    # The daemon drops the browser's stream; events published meanwhile arrive after the
    # browser reconnects with Last-Event-ID: nothing lost, nothing twice.
    for subscriber in list(live.subscribers):
        subscriber.request.transport.abortConnection()
    await until(browser, "return document.getElementById('live-state').textContent === 'reconnecting'", "the page to see the drop")
    for n, item in enumerate(["milk", "bread", "jam"], start=1):
        await order(item, n)
    await until(browser, "return document.querySelectorAll('#events li').length === 4", "the missed events after the reconnect")
    assert await in_thread(browser.execute_script, "return document.getElementById('live-opens').textContent") == "2"
    assert await in_thread(browser.execute_script, LIVE_DATA) == [
        '{"event":{"item":"tea","qty":2}}', '{"event":{"item":"milk","qty":1}}',
        '{"event":{"item":"bread","qty":2}}', '{"event":{"item":"jam","qty":3}}',
    ]
    ids = await in_thread(browser.execute_script, LIVE_IDS)
    assert len(set(ids)) == 4 and [int(i) for i in ids] == sorted(int(i) for i in ids), ids
    assert live.counters["events_replayed"] == 3, "the three missed events came from history, on resume"

    # One more live event after the resume, then the picture for docs/operations.md.
    await order("honey", 1)
    await until(browser, "return document.querySelectorAll('#events li').length === 5", "a live event after the resume")
    await until(browser, """
        const row = [...document.querySelectorAll('#sinks tbody tr')].find(r => r.cells[0].textContent === 'OrdersOut');
        return row && row.cells[5].textContent === '5'""", "the figures to catch up")
    png = await in_thread(browser.get_screenshot_as_png)
    assert png.startswith(b"\x89PNG")
    await in_thread(browser.get, "about:blank")  # closes the page's EventSource before the daemon stops


#: the charts sampled twice a second over 20 s (the test's length), so the test sees samples soon
CHARTS = CONFIG.replace("admin:\n  port: 0\n", "admin:\n  port: 0\n  charts.interval: 0.5\n  charts.window: 20\n")
RATE = 20  # events per second, published 5 at a time every quarter of a second


def chart(figure: str) -> str:
    """A script reading back one chart of the selected connector: its values and the page's sample times."""
    return f"""const box = document.querySelector('#charts figure[data-figure="{figure}"]');
        return box ? {{values: JSON.parse(box.dataset.values), times: charts.times, selected: box.parentNode.dataset.selected}} : null"""


def events_between(data: dict, start: float, end: float) -> float:
    """What a rate chart says was published in (start, end]: each rate times its sample's interval."""
    times, values = data["times"], data["values"]
    return sum(values[i] * (times[i] - times[i - 1]) for i in range(1, len(times))
               if values[i] is not None and start < times[i] <= end)


@pytest_twisted.ensureDeferred
async def test_charts_show_past_traffic_at_once_then_new_traffic_and_a_subscriber_drop(daemon, browser) -> None:
    service = await daemon(CHARTS)
    charts = service.admin.charts
    pool = HTTPConnectionPool(reactor, persistent=False)
    orders = f"http://127.0.0.1:{service.port_of('Shop')}/shop"
    batch = b"[" + b",".join(b'{"item":"tea","qty":%d}' % n for n in range(5)) + b"]"

    async def publish(seconds: float) -> tuple[float, float]:
        """RATE events a second for ``seconds``; when the first and the last were published."""
        start = reactor.seconds()
        for n in range(int(seconds * RATE / 5)):
            response = await deadline(treq.post(orders, data=batch, pool=pool))
            assert response.code == 200, await treq.content(response)
            await deadline(treq.content(response))
            await sleep(max(0.0, start + (n + 1) * 5 / RATE - reactor.seconds()))  # pacing the publisher
        return start, reactor.seconds()

    async def sampled_after(moment: float) -> None:
        await wait_for(lambda: charts.taken and charts.times[(charts.taken - 1) % charts.points] > moment + 0.01,
                       what="a sample after the traffic")

    # Before the page is opened: three subscribers, 60 events in 3 s, then two subscribers drop.
    subscribers = [await subscribe(service.port_of("OrdersOut"), "/orders") for _ in range(3)]
    await wait_for(lambda: charts.history()["sinks"]["OrdersOut"]["subscribers"][-1] == 3, what="3 subscribers sampled")
    first_start, first_end = await publish(3.0)
    await sampled_after(first_end)
    for client in subscribers[:2]:
        client.transport.abortConnection()
    await wait_for(lambda: charts.history()["sinks"]["OrdersOut"]["subscribers"][-1] == 1, what="the drop sampled")

    opened = reactor.seconds()
    await in_thread(browser.get, f"http://127.0.0.1:{service.admin.port}/#stream=Orders&chart=source:Shop")
    data = await until(browser, chart("events_in"), "the source's events chart")
    assert data["selected"] == "source:Shop"
    assert data["times"][0] < first_start, "the page shows what the daemon sampled before it was opened"
    assert events_between(data, 0, opened) == pytest.approx(3 * RATE, abs=0.01), "every event of the first burst, at once"
    burst = [v for t, v in zip(data["times"], data["values"]) if first_start < t <= first_end + charts.interval and v]
    published = 3 * RATE / (first_end - first_start)  # RATE, or less on a loaded machine
    assert published / 2 <= sum(burst) / len(burst) <= published * 2, f"about {published:.1f}/s while publishing: {burst}"

    # New traffic shows up within a few seconds, on the chart already open.
    second_start, second_end = await publish(2.0)
    async def second_burst() -> float:
        return events_between(await in_thread(browser.execute_script, chart("events_in")), second_start, reactor.seconds())

    end = reactor.seconds() + 5
    while abs(await second_burst() - 2 * RATE) > 0.01:
        assert reactor.seconds() < end, "the second burst did not show within 5 s"
        await sleep(0.1)

    # The sink's subscribers chart: 3, then 1 after the drop.
    await in_thread(browser.execute_script, "setHashParam('chart', 'sink:OrdersOut')")
    subs = await until(browser, f"const d = (() => {{ {chart('subscribers')} }})(); return d && d.selected === 'sink:OrdersOut' ? d : null",
                       "the sink's subscribers chart")
    known = [v for v in subs["values"] if v is not None]
    assert 3 in known and known[-1] == 1 and known.index(3) < len(known) - 1 - known[::-1].index(1), known
    spark = await in_thread(browser.execute_script, """
        const row = [...document.querySelectorAll('#sinks tbody tr')].find(r => r.cells[0].textContent === 'OrdersOut');
        const svg = row && row.querySelector('svg.spark');
        return svg ? JSON.parse(svg.dataset.values) : null""")
    assert spark and max(v for v in spark if v is not None) > 0, "the table's sparkline of events out"

    errors = [entry for entry in await in_thread(browser.get_log, "browser")
              if entry["level"] == "SEVERE" and "/favicon.ico " not in entry["message"]]  # the page has no icon
    assert errors == [], "no script errors and nothing the Content-Security-Policy refused"

    # The picture for docs/operations.md: the daemon's charts over these seconds.
    await in_thread(browser.execute_script, "setHashParam('chart', 'daemon')")
    await until(browser, "return document.getElementById('charts').dataset.selected === 'daemon'", "the daemon's charts")
    png = await in_thread(browser.get_screenshot_as_png)
    assert png.startswith(b"\x89PNG")
    if os.environ.get("UPDATE_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "status-page.png").write_bytes(png)
    await in_thread(browser.get, "about:blank")  # closes the page's EventSource before the daemon stops
    for client in subscribers[2:]:
        await client.close()


HUB_CONFIG = """\
sinks:
  Prices:
    type: sse-server
    schema: "symbol string, price double"
    server.host: 127.0.0.1
    server.port: 0
    server.path: prices
    hub.path: /hub
    retry.min: 300
    retry.max: 300
  News:
    type: sse-server
    schema: "title string"
    server.host: 127.0.0.1
    server.port: 0
    server.path: news
    hub.path: /hub
"""

HUB_PAGE = """
window.got = []; window.opens = 0;
const source = new EventSource('/hub?stream=Prices&stream=News');
source.onopen = () => { window.opens += 1; };
for (const name of ['Prices', 'News']) {
  source.addEventListener(name, e => window.got.push([e.type, JSON.parse(e.data).event, e.lastEventId]));
}
source.onmessage = e => window.got.push(['message', e.data, e.lastEventId]);
"""


@pytest_twisted.ensureDeferred
async def test_one_eventsource_reads_two_streams_and_its_own_reconnect_resumes_both(daemon, browser) -> None:
    from sse_daemon.events.schema import Event

    service = await daemon(HUB_CONFIG)
    port = service.port_of("Prices")
    hub = service.sinks["Prices"].sink

    def publish(prices: list[float], titles: list[str]) -> None:
        service.bus.publish("Prices", [Event({"symbol": "ACME", "price": p}) for p in prices])
        service.bus.publish("News", [Event({"title": t}) for t in titles])

    await in_thread(browser.get, f"http://127.0.0.1:{port}/page")  # any page of the origin: the hub is same-origin
    await in_thread(browser.execute_script, HUB_PAGE)
    await until(browser, "return window.opens === 1", "the EventSource to open")
    await wait_for(lambda: hub.hub_readers == 1, what="the hub connection")
    publish([1.0, 2.0], ["first"])
    await until(browser, "return window.got.length === 3", "three events through addEventListener")

    # the daemon drops the connection; what is published meanwhile arrives after the browser's own
    # reconnect (its Last-Event-ID carries both streams' positions): once each, in order per stream
    for hubs in list(hub.hubs):
        for connection in hubs.readers("Prices"):
            connection.subscriber.request.transport.abortConnection()
    publish([3.0, 4.0], ["second", "third"])
    await until(browser, "return window.opens === 2 && window.got.length === 7", "the missed events after the reconnect")
    publish([5.0], [])
    await until(browser, "return window.got.length === 8", "a live event after the resume")
    got = await in_thread(browser.execute_script, "return window.got")
    assert [g[1]["price"] for g in got if g[0] == "Prices"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [g[1]["title"] for g in got if g[0] == "News"] == ["first", "second", "third"]
    assert all(set(part.split(":")[0] for part in g[2].split(",")) == {"Prices", "News"} for g in got)
    assert service.sinks["Prices"].sink.counters["events_replayed"] == 2
    assert service.sinks["News"].sink.counters["events_replayed"] == 2
    await in_thread(browser.get, "about:blank")
