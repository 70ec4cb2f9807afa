"""Client-side helpers for the local exchange tests: open, read, a naive reference book."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from websockets.sync.client import ClientConnection, connect

from local_exchange.auth import sign_level2
from local_exchange.server import LocalExchange

KEY = "sim-key-123"
SECRET = base64.b64encode(b"a very secret hmac key for tests").decode()
PASSPHRASE = "open sesame"
AT_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
EX_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition`` until true (no fixed sleeps: robust on a busy machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def exchange() -> Iterator[LocalExchange]:
    with LocalExchange(
        depth=200,
        rate=50,
        heartbeat_interval=0.2,
        api_key=KEY,
        api_secret=SECRET,
        passphrase=PASSPHRASE,
        announce=True,
    ) as ex:
        yield ex


def open_ws(ex: LocalExchange, protocol: str = "exchange") -> ClientConnection:
    # max_queue=None: the sync client stops reading when 16 frames wait unread, so closing
    # mid-stream would otherwise wait 10 s for a close frame stuck behind them.
    return connect(ex.url(protocol), max_size=None, max_queue=None, open_timeout=5)


def recv(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def recv_until(
    ws: ClientConnection, pred, timeout: float = 5.0
) -> tuple[dict, list[dict]]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = recv(ws, max(0.01, deadline - time.monotonic()))
        if pred(msg):
            return msg, seen
        seen.append(msg)


class NaiveBook:
    """The simplest correct client: a dict per side keyed by Decimal price."""

    def __init__(self) -> None:
        self.books: dict[str, tuple[dict, dict]] = {}

    def snapshot(self, pid: str, bids: list, asks: list) -> None:
        self.books[pid] = (
            {Decimal(p): Decimal(s) for p, s in bids},
            {Decimal(p): Decimal(s) for p, s in asks},
        )

    def change(self, pid: str, changes: list) -> None:
        """Validate every change first, then apply all (whole or not at all)."""
        bids, asks = self.books[pid]
        parsed = []
        for side, price, size in changes:
            if side not in ("buy", "bid", "sell", "offer"):
                raise ValueError(side)
            p, s = Decimal(price), Decimal(size)
            if not (p.is_finite() and s.is_finite()) or p <= 0 or s < 0:
                raise ValueError(f"bad level {price!r} {size!r}")
            parsed.append((bids if side in ("buy", "bid") else asks, p, s))
        for levels, p, s in parsed:
            if s == 0:
                levels.pop(p, None)
            else:
                levels[p] = s

    def apply_exchange(self, msg: dict) -> None:
        if msg["type"] == "snapshot":
            self.snapshot(msg["product_id"], msg["bids"], msg["asks"])
        elif msg["type"] == "l2update":
            self.change(msg["product_id"], msg["changes"])

    def apply_at(self, msg: dict) -> None:
        if msg.get("channel") != "l2_data":
            return
        for event in msg["events"]:
            pid = event["product_id"]
            if event["type"] == "snapshot":
                ups = event["updates"]
                self.snapshot(
                    pid,
                    [
                        (u["price_level"], u["new_quantity"])
                        for u in ups
                        if u["side"] == "bid"
                    ],
                    [
                        (u["price_level"], u["new_quantity"])
                        for u in ups
                        if u["side"] == "offer"
                    ],
                )
            else:
                self.change(
                    pid,
                    [
                        (u["side"], u["price_level"], u["new_quantity"])
                        for u in event["updates"]
                    ],
                )


def drain_with_marker(ex: LocalExchange, ws: ClientConnection, apply) -> list[dict]:
    """After pause_market(), a marker frame queued behind every generated change."""
    ex.send_malformed(kinds=["unknown_type"])

    def is_marker(m: dict) -> bool:
        return m.get("type") == "sim_unknown" or m.get("channel") == "sim_unknown"

    _, seen = recv_until(ws, is_marker)
    for msg in seen:
        apply(msg)
    return seen


def signed(
    msg: dict, *, key=KEY, secret=SECRET, passphrase=PASSPHRASE, ts: str | None = None
) -> dict:
    ts = ts if ts is not None else str(time.time())
    return {
        **msg,
        "signature": sign_level2(secret, ts),
        "key": key,
        "passphrase": passphrase,
        "timestamp": ts,
    }
