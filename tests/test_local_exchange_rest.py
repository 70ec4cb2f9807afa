"""The local exchange's REST books, REST faults, request log and silent corruption.

Pure parts (request parsing, reply shapes, the market's frozen level) run in the fast
subset; everything over a socket is ``slow`` and talks to a real loopback exchange with
the standard library's HTTP client and websockets' client.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from coinbase_source import CoinbaseSource
from local_exchange import embedded, rest
from local_exchange.faults import Corruption
from local_exchange.market import FROZEN_MAX_DEPTH, Market
from local_exchange.server import LocalExchange
from tests.support.exchange_client import (
    busiest_window,
    drain_with_marker,
    open_ws,
    recv,
    recv_until,
    rest_get,
)
from tests.support.flow import wait_until
from tests.support.frames import (
    at_subscribe,
    exchange_subscribe_root,
    text,
    write_exchange_recording,
)
from tests.support.reference_book import ReferenceBooks
from tests.support.source_partitions import (
    FAST,
    Book,
    apply_all_after_pause,
    assert_books_match,
    feed_books,
    fresh_snapshots,
)

AT_BOOK = "/api/v3/brokerage/market/product_book"


def _known(pid: str) -> bool:
    return pid in ("BTC-USD", "ETH-USD")


# --------------------------------------------------------------------------- pure
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/products/BTC-USD/book?level=2",
            rest.BookRequest("exchange", "BTC-USD", None),
        ),
        ("/products/BTC-USD/book?level=1", rest.BookRequest("exchange", "BTC-USD", 1)),
        ("/products/BTC-USD/book", rest.BookRequest("exchange", "BTC-USD", 1)),
        (
            f"{AT_BOOK}?product_id=ETH-USD&limit=50",
            rest.BookRequest("advanced-trade", "ETH-USD", 50),
        ),
        (
            f"{AT_BOOK}?product_id=ETH-USD",
            rest.BookRequest("advanced-trade", "ETH-USD", None),
        ),
    ],
)
def test_book_requests_parse(path: str, expected: rest.BookRequest) -> None:
    assert rest.parse_book_request(path, _known) == expected


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/products/DOGE-USD/book?level=2", 404, {"message": "NotFound"}),
        ("/products/BTC-USD/ticker", 404, {"message": "NotFound"}),
        ("/products/BTC-USD/book?level=3", 400, {"message": "Invalid level"}),
        ("/products/BTC-USD/book?level=x", 400, {"message": "Invalid level"}),
        (f"{AT_BOOK}?product_id=DOGE-USD", 404, "NOT_FOUND"),
        (f"{AT_BOOK}?limit=5", 400, "INVALID_ARGUMENT"),
        (f"{AT_BOOK}?product_id=BTC-USD&limit=0", 400, "INVALID_ARGUMENT"),
        (f"{AT_BOOK}?product_id=BTC-USD&limit=abc", 400, "INVALID_ARGUMENT"),
    ],
)
def test_bad_book_requests_get_json_errors(path: str, status: int, body) -> None:
    reply = rest.parse_book_request(path, _known)
    assert isinstance(reply, rest.Reply) and reply.status == status
    parsed = json.loads(reply.body)
    if isinstance(body, dict):
        assert parsed == body
    else:
        assert parsed["error"] == body and parsed["message"]


def test_reply_shapes_print_the_feeds_strings() -> None:
    bids = [(6500000, 50_000_000), (6499999, 123_456_789)]
    asks = [(6500010, 100_000_000), (6500200, 1)]
    ex = json.loads(rest.exchange_book(bids, asks, 2, None, 1_000_042, 0).body)
    assert ex["bids"] == [["65000.00", "0.5", 1], ["64999.99", "1.23456789", 5]]
    assert [level[:2] for level in ex["asks"]] == [
        ["65000.10", "1"],
        ["65002.00", "0.00000001"],
    ]
    assert ex["sequence"] == 1_000_042
    assert (ex["auction_mode"], ex["auction"]) == (False, None)
    assert ex["time"].endswith("Z")
    one = json.loads(rest.exchange_book(bids, asks, 2, 1, 7, 0).body)
    assert len(one["bids"]) == len(one["asks"]) == 1
    at = json.loads(rest.at_book("BTC-USD", bids, asks, 2, 1, 0).body)
    assert at["pricebook"]["product_id"] == "BTC-USD"
    assert at["pricebook"]["bids"] == [{"price": "65000.00", "size": "0.5"}]
    assert at["pricebook"]["asks"] == [{"price": "65000.10", "size": "1"}]
    assert at["mid_market"] == "65000.05" and at["spread_absolute"] == "0.1"
    assert at["spread_bps"] == "0.01538460355"  # 0.1 / 65000.05 * 10^4, 12 decimals


def test_rest_faults_are_taken_in_order() -> None:
    faults = rest.RestFaults()
    faults.arm("429", 2, 1.0)
    faults.arm("timeout", 1, 3.0)
    taken = [faults.take() for _ in range(4)]
    assert taken == [("429", 1.0), ("429", 1.0), ("timeout", 3.0), None]
    assert json.loads(rest.fault_reply("429", "exchange").body) == {
        "message": "Public rate limit exceeded"
    }
    assert rest.fault_reply("500", "advanced-trade").status == 500
    not_json = rest.fault_reply("not_json", "exchange")
    assert not_json.status == 200 and not not_json.body.startswith(b"{")


def test_a_corrupted_level_is_left_alone_and_stays_shallow() -> None:
    """The market never touches, crosses or sweeps a frozen level, and keeps it within
    the top :data:`FROZEN_MAX_DEPTH` + 1, for the whole hold; then it moves again."""
    market = Market(["BTC-USD"], depth=300, rate=200, seed=3)
    market.step(1.0)
    side, ticks, old, new = market.corrupt_level("BTC-USD", 1500, random.Random(1))
    assert old != new
    deepest = 0
    for _ in range(1500):
        market.next_batch("BTC-USD")
        bids, asks = market.raw_levels("BTC-USD")
        levels = bids if side == "bid" else asks
        index = [p for p, _ in levels].index(ticks)
        assert levels[index] == (ticks, new)
        deepest = max(deepest, index)
        assert bids[0][0] < asks[0][0]
    assert 2 <= deepest <= FROZEN_MAX_DEPTH
    for _ in range(3000):  # thawed: the market may change it again
        market.next_batch("BTC-USD")
        bids, asks = market.raw_levels("BTC-USD")
        if (ticks, new) not in (bids if side == "bid" else asks):
            break
    else:
        raise AssertionError("the level stayed frozen after its hold")


# --------------------------------------------------------------------------- sockets
@pytest.fixture
def ex():
    with LocalExchange(["BTC-USD", "ETH-USD"], depth=300, rate=50) as exchange:
        yield exchange


def _rest_sides(reply: dict) -> tuple[list[list[str]], list[list[str]]]:
    if "pricebook" in reply:
        book = reply["pricebook"]
        return (
            [[lv["price"], lv["size"]] for lv in book["bids"]],
            [[lv["price"], lv["size"]] for lv in book["asks"]],
        )
    return (
        [lv[:2] for lv in reply["bids"]],
        [lv[:2] for lv in reply["asks"]],
    )


def _true_strings(ex: LocalExchange, pid: str) -> tuple[list, list]:
    shared = ex._market
    assert shared is not None
    with shared.lock:
        return shared.market.snapshot(pid)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    ["/products/BTC-USD/book?level=2", f"{AT_BOOK}?product_id=BTC-USD"],
)
def test_rest_book_is_the_true_book_in_the_feeds_strings(
    ex: LocalExchange, path: str
) -> None:
    ex.pause_market()
    reply = rest_get(ex, path)
    assert reply.status == 200 and reply.content_type == "application/json"
    bids, asks = _rest_sides(reply.json())
    assert (bids, asks) == _true_strings(ex, "BTC-USD")
    true_bids, true_asks = ex.true_book("BTC-USD")
    assert {Decimal(p): Decimal(s) for p, s in bids} == true_bids
    assert {Decimal(p): Decimal(s) for p, s in asks} == true_asks
    # ... and the same strings a snapshot on the socket carries
    with open_ws(ex) as ws:
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        snap, _ = recv_until(ws, lambda m: m.get("type") == "snapshot")
    assert (snap["bids"], snap["asks"]) == (bids, asks)


@pytest.mark.slow
def test_level_1_and_limit_give_the_top(ex: LocalExchange) -> None:
    ex.pause_market()
    bid, bid_size, ask, ask_size = ex.true_top("ETH-USD")
    one = rest_get(ex, "/products/ETH-USD/book?level=1").json()
    assert [[Decimal(x) for x in lv[:2]] for lv in one["bids"]] == [[bid, bid_size]]
    assert [[Decimal(x) for x in lv[:2]] for lv in one["asks"]] == [[ask, ask_size]]
    at = rest_get(ex, f"{AT_BOOK}?product_id=ETH-USD&limit=5").json()
    bids, asks = _rest_sides(at)
    true_bids, true_asks = _true_strings(ex, "ETH-USD")
    assert (bids, asks) == (true_bids[:5], true_asks[:5])
    assert Decimal(at["mid_market"]) == (bid + ask) / 2
    assert Decimal(at["spread_absolute"]) == ask - bid


@pytest.mark.slow
def test_errors_log_and_plain_paths(ex: LocalExchange) -> None:
    started = time.monotonic()
    missing = rest_get(ex, "/products/XRP-USD/book?level=2")
    assert (missing.status, missing.json()) == (404, {"message": "NotFound"})
    bad = rest_get(ex, "/products/BTC-USD/book?level=9")
    assert (bad.status, bad.json()) == (400, {"message": "Invalid level"})
    at_missing = rest_get(ex, f"{AT_BOOK}?product_id=XRP-USD&limit=5")
    assert at_missing.status == 404 and at_missing.json()["error"] == "NOT_FOUND"
    assert rest_get(ex, f"{AT_BOOK}?limit=5").status == 400
    assert rest_get(ex, "/products/BTC-USD/book?level=2").status == 200
    assert rest_get(ex, "/").status == 426  # a plain GET of a feed path: websockets'
    log = ex.rest_requests()
    assert [(p, s) for _, p, s in log] == [
        ("/products/XRP-USD/book?level=2", 404),
        ("/products/BTC-USD/book?level=9", 400),
        (f"{AT_BOOK}?product_id=XRP-USD&limit=5", 404),
        (f"{AT_BOOK}?limit=5", 400),
        ("/products/BTC-USD/book?level=2", 200),
    ]
    times = [t for t, _, _ in log]
    assert (
        times == sorted(times) and started <= times[0] and times[-1] <= time.monotonic()
    )
    over_http = rest_get(ex, "/_local/rest-requests").json()
    assert over_http == [{"t": t, "path": p, "status": s} for t, p, s in log]
    with open_ws(ex) as ws:  # the feed itself is unchanged
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        assert recv(ws)["type"] == "subscriptions"


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", ["/products/BTC-USD/book?level=2", f"{AT_BOOK}?product_id=BTC-USD&limit=50"]
)
def test_each_rest_error_kind_reaches_a_real_client(
    ex: LocalExchange, path: str
) -> None:
    ex.rest_errors("429", 2)
    ex.rest_errors("500")
    ex.rest_errors("not_json")
    ex.rest_errors("timeout", hold=20)
    assert [rest_get(ex, path).status for _ in range(3)] == [429, 429, 500]
    not_json = rest_get(ex, path)
    assert not_json.status == 200 and "html" in not_json.content_type
    with pytest.raises(ValueError):
        not_json.json()
    asked = time.monotonic()
    with pytest.raises(TimeoutError):
        rest_get(ex, path, timeout=0.5)
    assert time.monotonic() - asked < 15  # the client gave up, not the server
    assert rest_get(ex, path).status == 200  # disarmed
    assert [s for _, _, s in ex.rest_requests()] == [429, 429, 500, 200, 504, 200]
    faults = ex.stats["faults"]
    assert faults["rest_error:429"] == 2 and faults["rest_error:timeout"] == 1


@pytest.mark.slow
def test_a_held_request_does_not_delay_stop() -> None:
    with LocalExchange(["BTC-USD"], depth=20, rate=20) as exchange:
        exchange.rest_errors("timeout", hold=40)
        with pytest.raises(TimeoutError):
            rest_get(exchange, "/products/BTC-USD/book", timeout=0.3)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10


@pytest.mark.slow
def test_rest_runs_ahead_of_the_socket() -> None:
    """With the socket 1000 steps (50 s) behind, the REST book moves on while a
    subscribed client has received nothing after its snapshot; a pause sends it all."""
    with LocalExchange(["BTC-USD"], depth=100, rate=20, socket_lag=1000) as exchange:
        books = ReferenceBooks()
        with open_ws(exchange) as ws:
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            snap, _ = recv_until(ws, lambda m: m.get("type") == "snapshot")
            books.apply_exchange(snap)
            client = books.true_book_form("BTC-USD")

            def rest_book() -> tuple[dict, dict]:
                bids, asks = _rest_sides(
                    rest_get(exchange, "/products/BTC-USD/book?level=2").json()
                )
                return (
                    {Decimal(p): Decimal(s) for p, s in bids},
                    {Decimal(p): Decimal(s) for p, s in asks},
                )

            wait_until(lambda: rest_book() != client, 20, "the REST book to move on")
            with pytest.raises(TimeoutError):  # the socket holds every update back
                ws.recv(timeout=0.2)
            exchange.pause_market()
            drain_with_marker(exchange, ws, books.apply_exchange)
            assert (
                books.true_book_form("BTC-USD")
                == rest_book()
                == exchange.true_book("BTC-USD")
            )


def _differences(client: tuple[dict, dict], truth: tuple[dict, dict]) -> list:
    out = []
    for side, mine, true in zip(("bid", "ask"), client, truth, strict=True):
        for price in sorted(set(mine) | set(true)):
            if mine.get(price) != true.get(price):
                out.append((side, price, mine.get(price), true.get(price)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["exchange", "advanced-trade"])
@pytest.mark.parametrize("kind", ["skip", "wrong_size"])
def test_silent_corruption_leaves_the_client_wrong_at_exactly_that_level(
    ex: LocalExchange, protocol: str, kind: str
) -> None:
    books = ReferenceBooks()
    apply = books.apply_exchange if protocol == "exchange" else books.apply_at
    sub = (
        exchange_subscribe_root(["BTC-USD"], ["level2_batch"])
        if protocol == "exchange"
        else at_subscribe(["BTC-USD"])
    )
    seen: list[dict] = []

    def read(count: int) -> None:
        for _ in range(count):
            msg = recv(ws)
            seen.append(msg)
            apply(msg)

    with open_ws(ex, protocol) as ws:
        ws.send(text(sub))
        read(5)  # subscriptions, snapshot, updates
        done = ex.corrupt("BTC-USD", kind)
        assert isinstance(done, Corruption) and done.kind == kind
        read(40)  # ~0.8 s of market after it
        ex.pause_market()
        seen += drain_with_marker(ex, ws, apply)
        truth = ex.true_book("BTC-USD")
        client = books.true_book_form("BTC-USD")
        assert _differences(client, truth) == [
            (done.side, done.price, done.client_size, done.true_size)
        ]
        rest_bids, rest_asks = _rest_sides(
            rest_get(ex, "/products/BTC-USD/book?level=2").json()
        )
        rest_side = rest_bids if done.side == "bid" else rest_asks
        assert [str(done.price), str(done.true_size)] in rest_side
        position = [Decimal(p) for p, _ in rest_side].index(done.price)
        assert position < 50  # an audit of the top 50 sees it
        if kind == "skip":
            assert done.sent_size is None
        else:
            assert done.sent_size == done.client_size != done.true_size
    if protocol == "advanced-trade":  # no sign on the stream: contiguous numbers
        numbers = [m["sequence_num"] for m in seen if "sequence_num" in m]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # a client that (re)subscribes now gets the right book
    fresh = ReferenceBooks()
    with open_ws(ex) as ws:
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        snap, _ = recv_until(ws, lambda m: m.get("type") == "snapshot")
        fresh.apply_exchange(snap)
    assert fresh.true_book_form("BTC-USD") == ex.true_book("BTC-USD")
    assert ex.stats["faults"][f"corrupt:{kind}"] == 1


@pytest.mark.slow
def test_corruption_stays_while_the_market_runs() -> None:
    """400 frames of a fast market (500 batches a second: 0.8 s; it was 2 s at 200)
    after the corruption: the client's book is still wrong there, and only there."""
    with LocalExchange(["ETH-USD"], depth=300, rate=500) as exchange:
        books = ReferenceBooks()
        with open_ws(exchange, "advanced-trade") as ws:
            ws.send(text(at_subscribe(["ETH-USD"])))
            snap, _ = recv_until(ws, lambda m: m.get("channel") == "l2_data")
            books.apply_at(snap)
            done = exchange.corrupt("ETH-USD", "wrong_size", hold=60)
            for _ in range(400):  # 400 frames of market, however long they take
                books.apply_at(recv(ws))
            exchange.pause_market()
            drain_with_marker(exchange, ws, books.apply_at)
            assert _differences(
                books.true_book_form("ETH-USD"), exchange.true_book("ETH-USD")
            ) == [(done.side, done.price, done.client_size, done.true_size)]


@pytest.mark.slow
def test_control_endpoints_inject_faults(ex: LocalExchange) -> None:
    done = rest_get(ex, "/_local/corrupt?product_id=ETH-USD&kind=wrong_size&hold=5")
    assert done.status == 200
    injected = done.json()
    assert injected["product_id"] == "ETH-USD" and injected["kind"] == "wrong_size"
    ex.pause_market()
    bids, asks = ex.true_book("ETH-USD")
    side = bids if injected["side"] == "bid" else asks
    assert side[Decimal(injected["price"])] == Decimal(injected["true_size"])
    armed = rest_get(ex, "/_local/rest-errors?kind=500&count=2")
    assert armed.json() == {"armed": [["500", 2]]}
    assert rest_get(ex, "/products/ETH-USD/book").status == 500
    assert rest_get(ex, "/_local/rest-errors?kind=teapot").status == 400
    assert rest_get(ex, "/_local/corrupt?product_id=XRP-USD").status == 400
    assert rest_get(ex, "/_local/nothing").status == 404
    assert [p for _, p, _ in ex.rest_requests()] == ["/products/ETH-USD/book"]


def test_fault_arguments_are_checked() -> None:
    exchange = LocalExchange(["BTC-USD"], depth=20)  # not started: checks only
    with pytest.raises(ValueError, match="kind"):
        exchange.rest_errors("404")
    with pytest.raises(ValueError, match="count"):
        exchange.rest_errors("500", 0)
    with pytest.raises(ValueError, match="kind"):
        exchange.corrupt("BTC-USD", "swap")
    with pytest.raises(ValueError, match="product_id"):
        exchange.corrupt("ETH-USD")


@pytest.mark.slow
def test_the_cli_serves_rest_and_takes_faults_over_http() -> None:
    here = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_exchange", "--port", "0", "--products",
         "BTC-USD", "--depth", "50", "--rate", "20", "--socket-lag", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(here)},
    )  # fmt: skip
    try:
        base = None
        for _ in range(10):
            line = proc.stdout.readline()
            if "REST books:" in line:
                base = line.split()[-1].split("/products/")[0]
                break
        assert base and base.startswith("http://127.0.0.1:")

        def get(path: str) -> dict:
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return json.loads(r.read())

        book = get("/products/BTC-USD/book?level=2")
        assert len(book["bids"]) > 10 and book["bids"][0][0] < book["asks"][0][0]
        done = get("/_local/corrupt?product_id=BTC-USD&kind=skip")
        assert done["kind"] == "skip" and done["sent_size"] is None
        assert get("/_local/rest-errors?kind=not_json") == {"armed": [["not_json", 1]]}
        with urllib.request.urlopen(base + "/products/BTC-USD/book", timeout=10) as r:
            assert r.read().startswith(b"<html>")
        log = get("/_local/rest-requests")
        assert [(e["path"], e["status"]) for e in log] == [
            ("/products/BTC-USD/book?level=2", 200),
            ("/products/BTC-USD/book", 200),
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_the_sim_feeds_exchange_tells_its_rest_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "_exchange", None)
    assert embedded.rest_url() is None
    url = embedded.exchange_url(["ETH-USD"], 20, 10)
    try:
        base = embedded.rest_url()
        assert base == url.replace("ws://", "http://").rstrip("/")
        with urllib.request.urlopen(base + "/products/ETH-USD/book", timeout=10) as r:
            assert len(json.loads(r.read())["bids"]) == 1
    finally:
        assert embedded._exchange is not None
        embedded._exchange.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("protocol", "kind"), [("exchange", "skip"), ("advanced-trade", "wrong_size")]
)
def test_the_projects_own_source_keeps_the_corruption_until_a_resync(
    protocol: str, kind: str
) -> None:
    """The service's Coinbase source, reading the local exchange, ends with a book wrong
    at exactly the corrupted level (and nowhere else) however long the market runs on;
    a resync of that product alone makes it the true book again."""
    products = ["BTC-USD", "ETH-USD"]
    # 200 update batches a second: the 50 events after the corruption come in 0.25 s
    # (1 s at 50)
    with (
        LocalExchange(
            products, depth=200, rate=200, seed=5, heartbeat_interval=0.1
        ) as exchange,
        contextlib.ExitStack() as cleanup,
    ):
        source = CoinbaseSource(
            products, feed="sim", protocol=protocol, url=exchange.url(protocol), **FAST
        )
        parts = {p: source.build_part("input", p, None) for p in products}
        for part in parts.values():
            cleanup.callback(part.close)
        books = {p: Book() for p in products}
        feed_books(parts, books, fresh_snapshots(parts))
        done = exchange.corrupt("BTC-USD", kind)
        events = parts["BTC-USD"].stats.events
        feed_books(parts, books, lambda: parts["BTC-USD"].stats.events > events + 50)
        apply_all_after_pause(exchange, parts, books)
        btc = books["BTC-USD"]
        assert _differences((btc.bids, btc.asks), exchange.true_book("BTC-USD")) == [
            (done.side, done.price, done.client_size, done.true_size)
        ]
        eth = books["ETH-USD"]
        assert (eth.bids, eth.asks) == exchange.true_book("ETH-USD")
        assert parts["BTC-USD"].stats.sequence_gaps == 0  # nothing on the stream
        source.resync_requests.request("BTC-USD", "audit: test")
        exchange.resume_market()
        feed_books(parts, books, fresh_snapshots({"BTC-USD": parts["BTC-USD"]}))
        assert_books_match(exchange, parts, books)


@pytest.mark.slow
def test_a_served_recording_has_no_rest_book(tmp_path: Path) -> None:
    recording = write_exchange_recording(tmp_path / "session.jsonl.gz", updates=5)
    with LocalExchange(recording=recording) as exchange:
        reply = rest_get(exchange, "/products/BTC-USD/book?level=2")
        assert reply.status == 501 and "recording" in reply.json()["message"]
        assert rest_get(exchange, "/products/XRP-USD/book").status == 404
        with pytest.raises(RuntimeError, match="recording"):
            exchange.corrupt("BTC-USD")
        assert [s for _, _, s in exchange.rest_requests()] == [501, 404]


@pytest.mark.slow
def test_odd_requests_get_plain_answers(ex: LocalExchange) -> None:
    """Repeated headers and odd paths: a reply, never a failed hook (a 500 and a
    traceback in the log per request)."""
    conn = http.client.HTTPConnection("127.0.0.1", ex.port, timeout=10)
    try:
        conn.putrequest("GET", "/products/BTC-USD/book?level=1")
        conn.putheader("Upgrade", "h2c")
        conn.putheader("Upgrade", "tls/1.0")
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 200 and json.loads(reply.read())["bids"]
    finally:
        conn.close()
    for path in ("/products//book", "/products/%ZZ/book", "/products/BTC-USD/book/x"):
        reply = rest_get(ex, path)
        assert (reply.status, reply.json()) == (404, {"message": "NotFound"}), path


def test_busiest_window_counts_any_one_second_stretch() -> None:
    assert busiest_window([]) == 0
    assert busiest_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3  # [0, 0.99] or [0.5, 1.5)
    assert busiest_window([0.0, 1.0, 2.0, 3.0]) == 1
    assert busiest_window([0.0, 0.1, 0.2, 5.0], window=0.15) == 2
