"""ORDERBOOK_DASHBOARD: the page in headless Chromium, and slow clients never slow the flow."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bytewax.testing import TestingSink
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from common.validation import ConfigError
from dataflow import get_flow
from records import OrderBookSummary
from service.settings import Settings
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.flow import REPO, flow_env, free_port, wait_until
from views import dashboard
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
            # the stats and the pixels in one evaluation: the page cannot draw between
            # them (two evaluations let a draw slip in, and the pixels then matched the
            # "after" picture: 2 failures in 20 loaded runs)
            before, pixels = page.evaluate(
                """() => [JSON.parse(JSON.stringify(window.dashboardStats)),
                    [...document.querySelectorAll('.depth canvas')].map(c => c.toDataURL())]"""
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
        batch = [(0, _summary(p, len(times))) for p in PRODUCTS]  # the flow's pairs
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
    last_bid = float(batch[0][1]["bid_price"])

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


# -- who may talk to the dashboard, and how many (issue 17, findings 15, 16, 21) --------


def _get(port: int, host_header: str, path: str = "/") -> tuple[int, bytes]:
    """A GET to 127.0.0.1:port sent with any Host header (what DNS rebinding sends)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host_header)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _hello(port: int, host: str = "127.0.0.1", origin: str | None = None) -> dict:
    """The WebSocket's first message, asked for as ``host`` (the Host header) from a
    page of ``origin``; raises InvalidStatus when refused."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    uri = f"ws://{host}:{port}/ws"
    with connect(uri, sock=sock, origin=origin, open_timeout=10) as ws:
        return json.loads(ws.recv(timeout=10))


def test_a_foreign_origin_or_host_gets_403_and_no_data():
    """Finding 15: another site's page (its Origin) and another name for this machine
    (DNS rebinding: its Host) get a 403 and nothing of the market, for the page and for
    the WebSocket; the dashboard's own names work."""
    server = DashboardServer("127.0.0.1", 0, MarketBoard(PRODUCTS)).start()
    port = server.port
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            status, body = _get(port, host)
            assert status == 200 and b"/static/dashboard.js" in body, host
        for host in (f"evil.test:{port}", "evil.test", f"127.0.0.1:{port + 1}", ""):
            for path in ("/", "/static/dashboard.js", "/ws"):
                status, body = _get(port, host, path)
                assert status == 403, (host, path)
                assert b"forbidden" in body and b"BTC" not in body
        assert _hello(port)["products"] == PRODUCTS  # no Origin: not a browser page
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            assert _hello(port, origin=origin)["type"] == "hello"
        for host, origin in (
            ("127.0.0.1", "http://evil.test"),
            ("127.0.0.1", f"http://evil.test:{port}"),
            ("127.0.0.1", "null"),  # a sandboxed frame, a file:// page
            ("127.0.0.1", f"https://127.0.0.1:{port}"),
            ("evil.test", None),
            ("evil.test", f"http://evil.test:{port}"),
        ):
            with pytest.raises(InvalidStatus) as refused:
                _hello(port, host=host, origin=origin)
            assert refused.value.response.status_code == 403, (host, origin)
            assert b"BTC" not in refused.value.response.body
        assert server.forbidden == 4 * 3 + 6
    finally:
        server.stop()


def test_dashboard_origins_allow_more_than_the_own_address():
    """Finding 15: ORDERBOOK_DASHBOARD_ORIGINS (here the server's ``origins``) lets a
    LAN name or a reverse proxy in, as an Origin and as a Host; nothing else is."""
    settings = Settings.from_env(
        {"ORDERBOOK_DASHBOARD_ORIGINS": "http://Dash.Example:8050/, https://proxy.test"}
    )
    assert settings.dashboard_origins == (
        "http://dash.example:8050",
        "https://proxy.test",
    )
    server = DashboardServer(
        "127.0.0.1", 0, MarketBoard(PRODUCTS), origins=settings.dashboard_origins
    ).start()
    port = server.port
    try:
        assert _hello(port, origin="http://dash.example:8050")["type"] == "hello"
        assert _hello(port, origin="https://proxy.test")["type"] == "hello"
        assert _get(port, "dash.example:8050")[0] == 200
        assert _get(port, "proxy.test")[0] == 200  # a proxy that keeps the Host
        assert _get(port, "dash.example:8051")[0] == 403
        with pytest.raises(InvalidStatus):
            _hello(port, origin="http://proxy.test")  # not its scheme
    finally:
        server.stop()


class _AttackSite:
    """Another web site on 127.0.0.1 (reached as http://evil.test:PORT): a page whose
    script tries to read the dashboard's WebSocket."""

    PAGE = """<!doctype html><title>a page elsewhere</title><script>
    window.stolen = []; window.done = false;
    const ws = new WebSocket("ws://127.0.0.1:%d/ws");
    ws.onmessage = (e) => window.stolen.push(e.data);
    ws.onclose = () => { window.done = true; };
    </script>"""

    def __init__(self, dashboard_port: int) -> None:
        page = (self.PAGE % dashboard_port).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_page_on_another_site_cannot_read_the_dashboard_in_a_browser(tmp_path):
    """Finding 15 in Chromium: a site the user visits opens the dashboard's WebSocket
    (cross-site WebSocket hijacking), or has its own name resolve to 127.0.0.1 (DNS
    rebinding): neither gets a byte of the market; the dashboard's own page still does."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    board = MarketBoard(PRODUCTS)
    server = DashboardServer("127.0.0.1", 0, board).start()
    server.local_workers = server.worker_count = 1
    _DashboardPartition(server).write_batch([(0, _summary(p, 1)) for p in PRODUCTS])
    site = _AttackSite(server.port)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                headless=True,
                # evil.test resolves to this machine, as a rebinding DNS server does
                args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP evil.test 127.0.0.1"],
            )
            page = browser.new_page()
            page.goto(f"http://evil.test:{site.port}/")
            page.wait_for_function(
                "window.done || window.stolen.length > 0", timeout=30_000
            )
            assert page.evaluate("window.stolen") == []
            rebound = page.goto(f"http://evil.test:{server.port}/")
            assert rebound.status == 403
            assert "BTC" not in page.content()
            own = page.goto(f"http://127.0.0.1:{server.port}/")
            assert own.status == 200
            page.wait_for_function(
                "Object.keys(window.dashboardStats || {}).length === 4", timeout=30_000
            )
            browser.close()
    finally:
        site.close()
        server.stop()


def test_half_open_connections_are_capped_and_closed_while_a_good_client_is_served():
    """Finding 16: 200 connections that never send a request. The server holds at most
    MAX_CONNECTIONS of them (its descriptors stay bounded, measured in /proc: 88 to 127 with
    the cap at 64, against 300 before), closes
    the oldest to make room and the others after the handshake timeout, and a client
    that sends its request is served all along."""
    server = DashboardServer(
        "127.0.0.1", 0, MarketBoard(PRODUCTS), handshake_timeout=3.0
    ).start()
    server.local_workers = server.worker_count = 1
    cap = dashboard.MAX_CONNECTIONS
    flood = 300
    clients: list[socket.socket] = []
    base = _fds()
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:  # the server's descriptors: the test's own are `clients`
        while not sampling.is_set():
            peak[0] = max(peak[0], _fds() - base - len(clients))
            time.sleep(0.001)

    def accepted(n: int):
        return lambda: server.accepted >= n

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(flood):
            clients.append(socket.create_connection(("127.0.0.1", server.port), 10))
            if len(clients) % 16 == 0:  # the kernel queues 33: beyond, a SYN waits 1 s
                wait_until(accepted(len(clients)), 30, "the server to accept")
        wait_until(lambda: server.accepted == flood, 30, "the server to accept them")
        assert server.peak_connections == cap and server.evicted > 0
        status, body = _get(server.port, f"127.0.0.1:{server.port}")
        assert status == 200 and b"/static/dashboard.js" in body
        assert _hello(server.port)["type"] == "hello"
        sampling.set()
        sampler.join()
        # +1 for reading /proc/self/fd; asyncio accepts up to a backlog in one go
        assert peak[0] <= cap + 2 * dashboard.ACCEPT_BACKLOG + 4, peak[0]
        wait_until(
            lambda: all(_closed(c) for c in clients), 30, "every half-open one closed"
        )
        # each made room for a newer one, or waited out the handshake timeout
        assert server.evicted + server.expired == flood
        assert server.expired > 0 and server.refused == 0
        assert server.peak_connections == cap
        wait_until(lambda: server.connections == 0, 10, "the server to forget them")
        assert _fds() - base - flood <= 2
    finally:
        sampling.set()
        for client in clients:
            client.close()
        server.stop()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _closed(sock: socket.socket) -> bool:
    """The peer closed (or reset) this connection: it is readable and reads nothing."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1024, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def _busy_ports(count: int) -> tuple[int, list[socket.socket]]:
    """``count`` consecutive loopback ports, each held by a listening socket."""
    for _ in range(50):
        first = free_port()
        held = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
                sock.listen()
            return first, held
        except OSError:
            for sock in held:
                sock.close()
    raise AssertionError("no run of free ports")


def test_a_dashboard_that_cannot_listen_stops_the_command_in_one_line(tmp_path):
    """Finding 21, the real command: an address of another machine is one line naming
    the address and the cause, exit status 1, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        cwd=REPO,
        env=flow_env(
            ORDERBOOK_REPLAY=str(REPO / "samples" / "sample.jsonl.gz"),
            ORDERBOOK_DASHBOARD="192.0.2.1:8050",  # TEST-NET-1: never this machine's
            ORDERBOOK_OUTPUT=f"jsonl:{tmp_path / 'out.jsonl'}",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("orderbook: ORDERBOOK_DASHBOARD='192.0.2.1:8050'")
    assert "cannot assign requested address" in lines[0].lower()


@pytest.mark.parametrize("case", ["unresolvable", "ports-busy"])
def test_a_dashboard_that_cannot_listen_is_a_one_line_error_at_build(case):
    """Finding 21: the server starts while the dataflow is built, so the service's
    one-line ConfigError names the address and the cause (before: a traceback out of a
    Bytewax worker, 106 to 124 lines)."""
    held: list[socket.socket] = []
    if case == "unresolvable":
        address, cause = "no-such-host.invalid:8050", "not known"
    else:
        first, held = _busy_ports(dashboard.PORT_ATTEMPTS)
        address = f"127.0.0.1:{first}"
        cause = f"ports {first}..{first + dashboard.PORT_ATTEMPTS - 1} are all in use"
    settings = Settings.from_env(
        {
            "ORDERBOOK_REPLAY": str(REPO / "samples" / "sample.jsonl.gz"),
            "ORDERBOOK_DASHBOARD": address,
        }
    )
    try:
        with pytest.raises(ConfigError) as refused:
            get_flow(settings, sink=TestingSink([]))
    finally:
        for sock in held:
            sock.close()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"ORDERBOOK_DASHBOARD='{address}' is not allowed")
    assert cause in message


def test_at_the_cap_with_every_connection_a_live_page_a_new_one_gets_503():
    """Finding 16: live pages are never closed to make room; a new connection then gets
    a 503 at once (not a hang), and is served again once a page has gone."""
    server = DashboardServer("127.0.0.1", 0, MarketBoard(PRODUCTS), max_connections=2)
    server.start()
    address = f"ws://127.0.0.1:{server.port}/ws"
    try:
        with connect(address) as first, connect(address) as second:
            assert json.loads(first.recv(timeout=10))["type"] == "hello"
            assert json.loads(second.recv(timeout=10))["type"] == "hello"
            for path in ("/", "/ws"):
                status, body = _get(server.port, f"127.0.0.1:{server.port}", path)
                assert (status, body) == (503, b"too many connections, try later\n")
            assert server.refused == 2 and server.connections == 2
        wait_until(lambda: server.connections == 0, 10, "the pages to be gone")
        # their senders ended too, though there was nothing to send (an empty board)
        wait_until(lambda: server.clients == 0, 10, "the pages' senders to end")
        assert _hello(server.port)["type"] == "hello"
    finally:
        server.stop()


# -- a restart of the process (issue 22, item 5) ----------------------------------------


def _member_server(port: int) -> tuple[DashboardServer, _DashboardPartition]:
    """A cluster member's dashboard (one of three processes' workers: a product shows
    up with its first record), on ``port``."""
    server = DashboardServer("127.0.0.1", port, MarketBoard(PRODUCTS), History())
    server.start()
    server.local_workers, server.worker_count = 1, 3
    return server, _DashboardPartition(server)


def test_a_page_open_across_a_restart_shows_every_book_awaiting_its_snapshot(tmp_path):
    """The process behind an open page restarts (a cluster restarted by its
    orchestrator): the page reconnects to the new run. Before, every card went on
    showing the run before's prices as "connected" (a cluster member sends nothing of
    a product before its first record), so a book still awaiting its snapshot looked
    live. Now each card says "awaiting snapshot (restarted)" with no prices, until its
    product's first record of the new run."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    port = free_port()
    first, sink = _member_server(port)
    servers = [first]
    try:
        sink.write_batch([(0, _summary(p, 1)) for p in PRODUCTS[:2]])
        with sync_api.sync_playwright() as playwright:
            browser = _browser(playwright, tmp_path)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(first.url)
            states = "els => els.map(e => e.querySelector('.state').textContent)"
            bids = "els => els.map(e => e.querySelector('.stats b.bid').textContent)"

            def cards(script):
                return page.eval_on_selector_all("section.product", script)

            wait_until(
                lambda: (
                    len(cards(states)) == 2
                    and all(s.startswith("connected") for s in cards(states))
                ),
                30,
                "two live cards",
            )
            assert cards(bids) == ["1,000.01", "1,000.01"]

            servers.remove(first)
            first.stop()
            page.wait_for_function(
                "document.getElementById('connection').textContent.startsWith('disconnected')",
                timeout=30_000,
            )
            second, sink = _member_server(port)  # the restarted process
            servers.append(second)
            page.wait_for_function(
                "document.getElementById('connection').textContent === 'live'",
                timeout=30_000,
            )
            wait_until(
                lambda: cards(states) == ["awaiting snapshot (restarted)"] * 2,
                10,
                "every card awaiting its snapshot",
            )
            assert cards(bids) == ["-", "-"]
            assert page.locator("section.product .nodepth").count() == 2

            # the first record of the new run: that card is live again, alone
            sink.write_batch([(0, _summary(PRODUCTS[1], 7))])
            wait_until(
                lambda: cards(states)[1].startswith("connected"),
                10,
                "the card of the product with a record",
            )
            assert cards(bids) == ["-", "1,000.07"]
            assert cards(states)[0] == "awaiting snapshot (restarted)"
            browser.close()
        assert errors == []
    finally:
        for server in servers:
            server.stop()
