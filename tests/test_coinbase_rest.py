"""The REST book dialects (coinbase/rest.py): URLs, both reply shapes, bad bodies."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from coinbase.rest import RestBook, book_url, default_rest_url, parse_book
from common import validation
from common.validation import ConfigError

D = Decimal


def exchange_body(bids, asks, **extra) -> bytes:
    reply = {"bids": bids, "asks": asks, "sequence": 7, "auction_mode": False}
    reply.update(extra)
    return json.dumps(reply).encode()


def at_body(product, bids, asks) -> bytes:
    book = {
        "product_id": product,
        "bids": [{"price": p, "size": s} for p, s in bids],
        "asks": [{"price": p, "size": s} for p, s in asks],
        "time": "2026-12-05T00:00:00Z",
    }
    return json.dumps({"pricebook": book, "last": "1", "mid_market": "1"}).encode()


def test_book_urls_of_both_dialects():
    assert (
        book_url("https://api.exchange.coinbase.com/", "exchange", "BTC-USD", 50)
        == "https://api.exchange.coinbase.com/products/BTC-USD/book?level=2"
    )
    assert (
        book_url("http://127.0.0.1:9000", "exchange", "BTC-USD", 1)
        == "http://127.0.0.1:9000/products/BTC-USD/book?level=1"
    )
    assert (
        book_url("https://api.coinbase.com", "advanced-trade", "ETH-EUR", 50)
        == "https://api.coinbase.com/api/v3/brokerage/market/product_book"
        "?product_id=ETH-EUR&limit=50"
    )
    with pytest.raises(ValueError, match="not a product id"):
        book_url("http://h", "exchange", "../admin", 5)


def test_exchange_reply_gives_the_best_levels_first_as_exact_decimals():
    body = exchange_body(
        [["100.50", "1.5", 3], ["100.4", "0.00000001", 1], ["99", "2", 1]],
        [["100.60000000", "3", 2], ["101", "4", 1]],
    )
    book = parse_book(body, "exchange", "BTC-USD", 2)
    assert book == RestBook(
        [(D("100.50"), D("1.5")), (D("100.4"), D("0.00000001"))],
        [(D("100.60000000"), D("3")), (D("101"), D("4"))],
    )
    assert all(type(v) is Decimal for level in book.bids + book.asks for v in level)
    # fewer levels than asked: what there is; an empty side is a valid book
    assert parse_book(body, "exchange", "BTC-USD", 50).bids[2] == (D("99"), D("2"))
    assert parse_book(exchange_body([], []), "exchange", "BTC-USD", 5) == RestBook(
        [], []
    )


def test_advanced_trade_reply_gives_the_best_levels_and_checks_the_product():
    body = at_body("ETH-EUR", [("3000.1", "2"), ("3000", "1")], [("3000.2", "5")])
    book = parse_book(body, "advanced-trade", "ETH-EUR", 50)
    assert book == RestBook(
        [(D("3000.1"), D("2")), (D("3000"), D("1"))], [(D("3000.2"), D("5"))]
    )
    assert parse_book(body, "advanced-trade", "ETH-EUR", 1).bids == [
        (D("3000.1"), D("2"))
    ]
    assert parse_book(body, "advanced-trade", "BTC-USD", 5) == (
        "bad shape: the reply is the book of 'ETH-EUR'"
    )


def test_a_large_exchange_reply_is_parsed_to_its_top_levels():
    n = 46_000
    bids = [[f"{100000 - i * 0.01:.2f}", "0.5", 1] for i in range(n)]
    asks = [[f"{100000.01 + i * 0.01:.2f}", "0.5", 1] for i in range(n)]
    body = exchange_body(bids, asks)
    assert len(body) > 2_000_000
    book = parse_book(body, "exchange", "BTC-USD", 50)
    assert len(book.bids) == len(book.asks) == 50
    assert book.bids[0] == (D("100000.00"), D("0.5"))
    assert book.asks[49] == (D("100000.50"), D("0.5"))
    # a broken tail is still refused: the whole body must be JSON
    assert parse_book(body[:-5], "exchange", "BTC-USD", 50) == "not JSON"


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>Bad gateway</html>", b'{"bids": [', b"\xff\xfe", "{'bids': []}"],
)
@pytest.mark.parametrize("protocol", ["exchange", "advanced-trade"])
def test_a_body_that_is_not_json_is_a_failure(body, protocol):
    assert parse_book(body, protocol, "BTC-USD", 5) == "not JSON"


@pytest.mark.parametrize(
    ("body", "protocol", "why"),
    [
        (b"[]", "exchange", "bad shape"),
        (b'{"message": "NotFound"}', "exchange", "bad shape"),
        (b'{"bids": [], "asks": {}}', "exchange", "bad shape"),
        (exchange_body([["1", 2, 1]], []), "exchange", "bad shape"),
        (exchange_body([["1", "2"]], []), "exchange", "bad shape"),
        (exchange_body([{"price": "1"}], []), "exchange", "bad shape"),
        (b'{"pricebook": null}', "advanced-trade", "bad shape"),
        (b'{"bids": [], "asks": []}', "advanced-trade", "bad shape"),
        (
            b'{"pricebook": {"product_id": "BTC-USD", "bids": [{"price": 1, "size": '
            b'"1"}], "asks": []}}',
            "advanced-trade",
            "bad shape",
        ),
    ],
)
def test_a_reply_of_the_wrong_shape_is_a_failure(body, protocol, why):
    failure = parse_book(body, protocol, "BTC-USD", 5)
    assert isinstance(failure, str) and failure.startswith(why), failure
    assert "\n" not in failure


@pytest.mark.parametrize(
    ("bids", "asks", "failure"),
    [
        ([["-1", "1", 1]], [], "bad price '-1': must be > 0"),
        ([["1E+20", "1", 1]], [], "bad price '1E+20': not below 1E+14"),
        ([["1.000000000000001", "1", 1]], [], "more than 14 decimals"),
        ([["NaN", "1", 1]], [], "bad price 'NaN': not a finite number"),
        ([["abc", "1", 1]], [], "not a decimal number"),
        ([["1", "-2", 1]], [], "bad size '-2': must be >= 0"),
        ([["1", "0", 1]], [], "bad bids: a level of size 0 at 1"),
        ([["1", "1", 1], ["2", "1", 1]], [], "bad bids: not best first at 2"),
        ([], [["2", "1", 1], ["2", "1", 1]], "bad asks: not best first at 2"),
        ([], [["2", "1", 1], ["1", "1", 1]], "bad asks: not best first at 1"),
        ([["1\x1b[2J", "1", 1]], [], "\\x1b"),
    ],
)
def test_levels_outside_the_domain_or_order_are_a_failure(bids, asks, failure):
    result = parse_book(exchange_body(bids, asks), "exchange", "BTC-USD", 5)
    assert isinstance(result, str) and failure in result, result
    assert "\x1b" not in result


def test_only_the_levels_compared_are_checked():
    # a bad level beyond the levels asked for is not read (nor refused)
    body = exchange_body([["2", "1", 1], ["-1", "1", 1]], [["3", "1", 1]])
    assert parse_book(body, "exchange", "BTC-USD", 1).bids == [(D("2"), D("1"))]
    assert "bad price" in parse_book(body, "exchange", "BTC-USD", 2)


def test_default_rest_url_follows_the_websocket_url():
    assert (
        default_rest_url("exchange", "wss://ws-feed.exchange.coinbase.com", "exchange")
        == "https://api.exchange.coinbase.com"
    )
    assert (
        default_rest_url(
            "advanced-trade", "wss://advanced-trade-ws.coinbase.com", "advanced-trade"
        )
        == "https://api.coinbase.com"
    )
    # the local exchange (sim, or any other server): its WebSocket port, over http
    assert default_rest_url("sim", "ws://127.0.0.1:8123/", "exchange") == (
        "http://127.0.0.1:8123"
    )
    assert default_rest_url(
        "exchange", "ws://user:pw@localhost:9/advanced-trade", "exchange"
    ) == ("http://localhost:9")
    assert default_rest_url("exchange", "wss://[::1]:9443", "exchange") == (
        "https://[::1]:9443"
    )


def test_http_url_setting_check():
    assert validation.http_url("ORDERBOOK_REST_URL", " http://h:1 ") == "http://h:1"
    assert validation.http_url("ORDERBOOK_REST_URL", "") is None
    for bad in ("ws://h", "h:80", "http://", "http://h:99999", "https://u:pw@ /x"):
        with pytest.raises(ConfigError, match="ORDERBOOK_REST_URL=") as info:
            validation.http_url("ORDERBOOK_REST_URL", bad)
        assert "pw" not in str(info.value)
