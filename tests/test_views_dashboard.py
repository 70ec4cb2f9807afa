"""ORDERBOOK_DASHBOARD: the page in headless Chromium, and slow clients never slow the flow."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from websockets.sync.client import connect

from orderbook import OrderBookSummary
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.flow import REPO, flow_env, wait_until
from views.dashboard import DashboardServer, History, _DashboardPartition
from views.state import MarketBoard

PRODUCTS = ["BTC-EUR", "BTC-USD", "ETH-EUR", "ETH-USD"]

pytestmark = pytest.mark.slow


class DashboardFlow:
    """The real command with the dashboard on, its URL read from its log."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.log = tmp_path / "flow.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow:flow", *args],
            cwd=REPO,
            env=flow_env(
                ORDERBOOK_FEED="sim",
                ORDERBOOK_DASHBOARD="127.0.0.1:0",
                ORDERBOOK_OUTPUT=f"jsonl:{tmp_path / 'out.jsonl'}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def url(self) -> str:
        def found():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            match = re.search(r"dashboard: (http://\S+/)", self.log.read_text())
            return match and match.group(1)

        return wait_until(found, 30, "the dashboard's URL in the log")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _browser(playwright, tmp_path):
    return playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900},
    )


def test_page_draws_every_product_and_keeps_changing(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    flow = DashboardFlow(tmp_path, "-w", "2")
    try:
        url = flow.url()
        assert url.startswith("http://127.0.0.1:")  # loopback
        with urllib.request.urlopen(url + "static/uplot/LICENSE", timeout=5) as r:
            assert b"MIT" in r.read()
        with sync_api.sync_playwright() as playwright:
            browser = _browser(playwright, tmp_path)
            page = browser.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            ready = """(n) => {
                const s = window.dashboardStats || {};
                const v = Object.values(s);
                return v.length >= n && v.every(p => p.depthDraws > 0 && p.seriesPoints >= 2);
            }"""
            page.wait_for_function(ready, arg=len(PRODUCTS), timeout=30_000)
            before = page.evaluate("JSON.parse(JSON.stringify(window.dashboardStats))")
            pixels = page.evaluate(
                "[...document.querySelectorAll('.depth canvas')].map(c => c.toDataURL())"
            )
            changed = """(before) => Object.entries(before).every(([p, b]) => {
                const s = window.dashboardStats[p];
                return s.depthSignature !== b.depthSignature
                    && s.depthDraws > b.depthDraws
                    && s.seriesPoints > b.seriesPoints
                    && s.seriesDraws > b.seriesDraws;
            })"""
            page.wait_for_function(changed, arg=before, timeout=30_000)
            after = page.evaluate(
                "[...document.querySelectorAll('.depth canvas')].map(c => c.toDataURL())"
            )
            assert len(after) == len(PRODUCTS)
            assert all(a != b for a, b in zip(pixels, after, strict=True))
            shown = page.eval_on_selector_all(
                "section.product", "els => els.map(e => e.dataset.product)"
            )
            assert shown == PRODUCTS
            assert page.locator("#connection").inner_text() == "live"
            assert (
                "connected" in page.locator("section.product .state").first.inner_text()
            )
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()
        assert errors == []
        assert all(
            r.startswith(url.replace("http", "ws")[:-1]) or r.startswith(url)
            for r in requests
        ), requests  # nothing from anywhere else
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    finally:
        assert flow.stop() == 0


def _summary(product: str, i: int) -> dict:
    bid = Decimal(1000) + Decimal(i) / 100
    return OrderBookSummary.from_top(
        product,
        bid,
        Decimal(1),
        bid + Decimal("0.01"),
        Decimal(2),
        time=datetime.now(UTC),
        feed="sim",
    ).to_dict()


def test_a_client_that_does_not_read_never_slows_the_sink(tmp_path):
    board = MarketBoard(PRODUCTS)
    server = DashboardServer("127.0.0.1", 0, board, History()).start()
    server.local_workers = server.worker_count = 1
    sink = _DashboardPartition(server)
    address = f"ws://127.0.0.1:{server.port}/ws"
    try:
        with connect(address) as stalled, connect(address) as reader:
            _slow_client_check(server, sink, stalled, reader)
        wait_until(lambda: server.clients == 0, 10, "closed clients to be forgotten")
    finally:
        server.stop()


def _slow_client_check(server, sink, stalled, reader) -> None:
    wait_until(lambda: server.clients == 2, 10, "two clients")
    received: list[str] = []
    stop_reading = threading.Event()

    def read() -> None:
        while not stop_reading.is_set():
            try:
                received.append(reader.recv(timeout=0.5))
            except TimeoutError:
                pass

    reading = threading.Thread(target=read, daemon=True)
    reading.start()
    times: list[float] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # 3 s of batches; one client never reads
        batch = [_summary(p, len(times)) for p in PRODUCTS]
        started = time.perf_counter()
        sink.write_batch(batch)
        times.append(time.perf_counter() - started)
    stop_reading.set()
    reading.join()
    assert len(times) > 300
    # the sink only ever updates the latest state: it never waits for a client (a
    # blocked sink would stall here for good; a loaded machine may pause it briefly)
    times.sort()
    p99 = times[int(len(times) * 0.99)]
    assert p99 < 0.02 and times[-1] < 2.0, (p99, times[-1])
    assert len(received) >= 4  # pushes went on, a few a second, to the reading client
    last_bid = float(batch[0]["bid_price"])

    def latest(client):
        def got():
            message = json.loads(client.recv(timeout=5))
            if message["type"] != "update":
                return False
            rows = {r["product_id"]: r for r in message["products"]}
            return rows["BTC-EUR"]["bid_price"] == last_bid

        return got

    wait_until(latest(reader), 10, "the reading client to get the latest state")
    # the stalled client, once it reads, is soon at the latest state too: what it
    # missed was conflated, not queued (only what sat in socket buffers is stale)
    wait_until(latest(stalled), 10, "the stalled client to catch up")


def test_only_the_page_and_its_files_are_served(tmp_path):
    server = DashboardServer("127.0.0.1", 0, MarketBoard(PRODUCTS)).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/html")
            assert b"/static/dashboard.js" in r.read()
        with urllib.request.urlopen(base + "/static/dashboard.js", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
        for path in ("/static/../dataflow.py", "/etc/passwd", "/static/plot.js"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=5)
            assert refused.value.code == 404
            refused.value.close()
    finally:
        server.stop()


def test_a_replay_stays_on_the_dashboard_until_stopped(tmp_path):
    """ORDERBOOK_REPLAY with the dashboard: the whole replay's history, then held."""
    log = tmp_path / "flow.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        cwd=REPO,
        env=flow_env(
            ORDERBOOK_REPLAY=str(REPO / "samples" / "sample.jsonl.gz"),
            ORDERBOOK_DASHBOARD="127.0.0.1:0",
            ORDERBOOK_OUTPUT=f"jsonl:{tmp_path / 'out.jsonl'}",
        ),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:

        def held():
            assert proc.poll() is None, log.read_text()[-3000:]
            text = log.read_text()
            match = re.search(r"dashboard: (http://\S+/)", text)
            return match and "the replay ended" in text and match.group(1)

        url = wait_until(held, 60, "the end of the replay")
        with connect(url.replace("http", "ws") + "ws", max_size=None) as ws:
            assert json.loads(ws.recv())["type"] == "hello"
            rows = json.loads(ws.recv())["products"]
        assert sorted(r["product_id"] for r in rows) == PRODUCTS
        for row in rows:
            assert row["state"] == "run ended"
            assert row["feed"] == "replay"
            assert len(row["history"]) > 100  # minutes of the sample, by its own clock
            assert row["bids"] and row["asks"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
