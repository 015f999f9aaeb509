"""The status page in a real headless Chromium: figures, and live events over the browser's own EventSource.

Selenium's calls block, so each runs in a thread (``deferToThread``) while
the reactor thread keeps serving the page, its JSON and its event stream.
Set ``UPDATE_SCREENSHOT=1`` to refresh ``docs/status-page.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.web.client import HTTPConnectionPool

from .conftest import deadline, sleep
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
    if os.environ.get("UPDATE_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "status-page.png").write_bytes(png)
    await in_thread(browser.get, "about:blank")  # closes the page's EventSource before the daemon stops
