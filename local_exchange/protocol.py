"""What the two wire dialects have in common: the interface the server talks to.

The server never asks which protocol a connection speaks: it calls the connection's
:class:`Protocol` (chosen once, by URL path) to answer requests and to encode snapshots,
updates, errors and fault frames. :mod:`local_exchange.exchange_protocol` and
:mod:`local_exchange.advanced_trade_protocol` implement it.

With ``announce=True`` (the CLI, ``ORDERBOOK_FEED=sim``) every subscriptions reply carries
``"local_exchange": "sim"`` (simulated market) or ``"local_exchange": "replay"`` (a served
recording), a field Coinbase never sends, so a client can label what it reads as not
market data; without it the replies are Coinbase's, byte for byte.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import orjson

from coinbase.feeds import ADVANCED_TRADE, EXCHANGE
from local_exchange.market import RawChange, RawLevel

if TYPE_CHECKING:
    from local_exchange.connections import Connection, Registry

ADVANCED_TRADE_PATH = "/advanced-trade"
MARKER_FIELD = "local_exchange"
"""The subscriptions reply's field saying which local exchange answered (sim or replay)."""
BAD_TIMESTAMP = "0001-01-01T00:00:00.000000Z"
BAD_SIZES = {
    "non_numeric_size": "abc",
    "negative_size": "-1.5",
    "malformed_size": "0.-10000",
}
"""Malformed-size fault kinds and the size text each sends."""


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def iso_us(ns: int) -> str:
    """``2026-08-25T03:35:57.300000Z``: Exchange ``time`` and AT ``event_time``."""
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem // 1000:06d}Z"


def iso_ns(ns: int) -> str:
    """``2026-08-09T21:05:48.629706932Z``: the AT envelope ``timestamp`` (9 digits)."""
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem:09d}Z"


def protocol_name_for_path(path: str) -> str:
    """``/advanced-trade`` (and below) is Advanced Trade; every other path is Exchange."""
    path = path.split("?", 1)[0].rstrip("/")
    if path == ADVANCED_TRADE_PATH or path.startswith(ADVANCED_TRADE_PATH + "/"):
        return ADVANCED_TRADE
    return EXCHANGE


class Protocol(ABC):
    """One wire dialect, bound to the exchange's subscriptions ``registry``."""

    name: str
    path: str
    snapshot_label: str
    update_label: str
    sequenced = False
    """True when frames carry a per-connection sequence number (``skip_sequence``)."""

    def __init__(self, registry: Registry, feed: str | None) -> None:
        self.registry = registry
        self.feed = feed  # "sim", "replay" or None: the subscriptions reply's marker

    # -- requests ---------------------------------------------------------------------
    @abstractmethod
    def handle(self, conn: Connection, msg: dict, *, subscribe: bool) -> None:
        """Answer a (un)subscribe request of the simulated market."""

    @abstractmethod
    def error(self, text: str) -> Any:
        """A refused subscribe, in this dialect's error shape."""

    @abstractmethod
    def parse_error(self) -> Any:
        """The reply to a message that is not a JSON object."""

    @abstractmethod
    def invalid_type(self, kind: Any) -> Any:
        """The reply to a message that is neither subscribe nor unsubscribe."""

    # -- encoders ---------------------------------------------------------------------
    @abstractmethod
    def snapshot(
        self,
        pid: str,
        bids: list[RawLevel],
        asks: list[RawLevel],
        decimals: int,
        now_ns: int,
    ) -> Any:
        """A full book; runs in a worker thread (BTC-USD-sized: ~5 MB of JSON)."""

    @abstractmethod
    def updates(
        self, pid: str, changes: list[RawChange], t: str, channel: str
    ) -> list[Any]:
        """The frames carrying one batch of changes on ``channel``."""

    @abstractmethod
    def malformed(
        self, kind: str, pid: str, restate: list[RawChange], now_ns: int
    ) -> Any:
        """A broken frame of ``kind`` (see :mod:`local_exchange.faults`)."""

    def frame_text(self, conn: Connection, payload: Any) -> str:
        """The text that goes on the wire for a queued payload (at send time)."""
        return payload
