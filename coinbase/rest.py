"""Coinbase's REST order books, sans-IO: the URL to ask, and the reply's top levels.

Two dialects, one per protocol (:mod:`coinbase.feeds`):

* ``exchange``: ``GET {base}/products/{product_id}/book?level=2``, the full aggregated
  book ``{"bids": [["price", "size", num_orders], ...], "asks": [...], "sequence": N,
  ...}`` (``level=1``, the best level only, when one level is asked for);
* ``advanced-trade``: ``GET {base}/api/v3/brokerage/market/product_book?product_id=ID&
  limit=N``, ``{"pricebook": {"product_id": ID, "bids": [{"price": "...", "size":
  "..."}], "asks": [...], "time": "..."}, ...}``.

:func:`parse_book` returns the best ``levels`` per side, best first, as exact Decimals of
:mod:`common.domain`'s number domain, or a one-line failure (``not JSON``, ``bad
shape: ...``, ``bad price '...': ...``); it never raises. Foreign text in a failure goes
through :func:`common.text.shown`.

Why a lazy decode: the Exchange dialect has no ``limit``, so a BTC-USD reply carries the
whole book, tens of thousands of levels a side, about 5 MB, and it is parsed on the feed's
event loop (:data:`coinbase.runner.LOOP`), where every millisecond delays every product's
frames. Each side is decoded by msgspec as a list of raw JSON values (the parser still
checks that the whole body is JSON, but builds no string or number for a level it skips),
and only the first ``levels`` are decoded into strings and Decimals. Measured on a 5.0 MB
body (70,000 levels a side, 8-decimal prices and sizes; medians of 7, two runs on a busy
machine): ``orjson.loads`` alone 109 / 249 ms, :func:`parse_book` 8.4 / 17.7 ms for 50
levels and 11 / 24 ms for 1000: about 13 times less. Advanced Trade replies carry only
``limit`` levels.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import quote, urlencode, urlsplit

import msgspec

from coinbase.feeds import ADVANCED_TRADE, EXCHANGE, FEEDS, PROTOCOLS
from common.domain import DomainError, price, product_id, size
from common.text import shown
from events import Level

__all__ = [
    "REPLAY_NO_AUDITS",
    "REST_URLS",
    "RestBook",
    "book_url",
    "default_rest_url",
    "parse_book",
]

REST_URLS = {
    EXCHANGE: "https://api.exchange.coinbase.com",
    ADVANCED_TRADE: "https://api.coinbase.com",
}
"""Coinbase's public REST base of each protocol (``ORDERBOOK_REST_URL`` overrides it)."""

REPLAY_NO_AUDITS = "replay: no REST books, audits skipped"
"""What a replay says once, when audits are on and it holds no recorded REST books: a
replay cannot ask one (a replay of files: ``service.inputs``; a replay served by the
local exchange: ``coinbase_source``)."""

ADVANCED_TRADE_MAX_LIMIT = 1000
"""``ORDERBOOK_AUDIT_LEVELS``' bound, which the ``limit`` parameter stays within."""


def default_rest_url(feed: str, ws_url: str, protocol: str) -> str:
    """The REST base that goes with a feed read at ``ws_url``: Coinbase's when the URL
    is the feed's own host, else ``http(s)://HOST:PORT`` of the URL, where the local
    exchange (``sim``, ``python -m local_exchange``) serves its REST books on its
    WebSocket port. Any other server (a sandbox, a proxy) needs ``ORDERBOOK_REST_URL``.
    """
    spec = FEEDS.get(feed)
    parts = urlsplit(ws_url)
    if spec is not None and parts.hostname == urlsplit(spec.url).hostname:
        return REST_URLS[protocol]
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{host}{port}"


class _ExchangeBook(msgspec.Struct):
    bids: list[msgspec.Raw]
    asks: list[msgspec.Raw]


class _AtLevel(msgspec.Struct):
    price: str
    size: str


class _AtPricebook(msgspec.Struct):
    product_id: str
    bids: list[_AtLevel]
    asks: list[_AtLevel]


class _AtReply(msgspec.Struct):
    pricebook: _AtPricebook


_EXCHANGE = msgspec.json.Decoder(_ExchangeBook)
_EXCHANGE_LEVEL = msgspec.json.Decoder(tuple[str, str, int])
_ADVANCED_TRADE = msgspec.json.Decoder(_AtReply)


class RestBook(msgspec.Struct, frozen=True):
    """The best ``levels`` of each side of a REST book, best first."""

    bids: list[Level]
    asks: list[Level]


def book_url(base: str, protocol: str, product: str, levels: int) -> str:
    """The URL of ``product``'s REST book in ``protocol``'s dialect, at most ``levels``
    levels a side asked for (the Exchange dialect has no limit: the whole book, or the
    best level alone when one is asked)."""
    product = product_id(product)
    base = base.rstrip("/")
    if protocol == EXCHANGE:
        level = 1 if levels == 1 else 2
        return f"{base}/products/{quote(product)}/book?level={level}"
    if protocol == ADVANCED_TRADE:
        query = urlencode({"product_id": product, "limit": levels})
        return f"{base}/api/v3/brokerage/market/product_book?{query}"
    raise ValueError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")


def parse_book(
    body: bytes | str, protocol: str, product: str, levels: int
) -> RestBook | str:
    """The best ``levels`` per side of a reply, or a one-line failure; never raises."""
    try:
        if protocol == EXCHANGE:
            return _parse_exchange(body, levels)
        return _parse_advanced_trade(body, product, levels)
    except msgspec.ValidationError as exc:
        return f"bad shape: {shown(exc)}"
    except msgspec.DecodeError:
        return "not JSON"
    except DomainError as exc:
        return str(exc)
    except Exception as exc:  # pragma: no cover - a parser bug must not stop the audits
        return f"unreadable reply: {type(exc).__name__}"


def _parse_exchange(body: bytes | str, levels: int) -> RestBook | str:
    book = _EXCHANGE.decode(body)
    bids = [_EXCHANGE_LEVEL.decode(raw)[:2] for raw in book.bids[:levels]]
    asks = [_EXCHANGE_LEVEL.decode(raw)[:2] for raw in book.asks[:levels]]
    return _checked(bids, asks)


def _parse_advanced_trade(
    body: bytes | str, product: str, levels: int
) -> RestBook | str:
    book = _ADVANCED_TRADE.decode(body).pricebook
    if book.product_id != product:
        return f"bad shape: the reply is the book of {shown(book.product_id)!r}"
    bids = [(level.price, level.size) for level in book.bids[:levels]]
    asks = [(level.price, level.size) for level in book.asks[:levels]]
    return _checked(bids, asks)


def _checked(
    bids: list[tuple[str, str]], asks: list[tuple[str, str]]
) -> RestBook | str:
    """Decimals in the domain, sizes above zero, each side strictly best first."""
    sides = []
    for name, raw, worse in (("bids", bids, _lower), ("asks", asks, _higher)):
        side: list[Level] = []
        for text_price, text_size in raw:
            level = (price(text_price), size(text_size))
            if not level[1]:
                return f"bad {name}: a level of size 0 at {shown(text_price)}"
            if side and not worse(level[0], side[-1][0]):
                return f"bad {name}: not best first at {shown(text_price)}"
            side.append(level)
        sides.append(side)
    return RestBook(sides[0], sides[1])


def _higher(a: Decimal, b: Decimal) -> bool:
    return a > b


def _lower(a: Decimal, b: Decimal) -> bool:
    return a < b
