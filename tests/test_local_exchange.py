"""The local Coinbase exchange, exercised over real loopback WebSockets."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import local_exchange.connections
from local_exchange.advanced_trade_protocol import TOO_MANY_L2_STREAMS
from local_exchange.auth import LEVEL2_AUTH_REASON, sign_level2
from local_exchange.faults import MALFORMED_KINDS
from local_exchange.server import LocalExchange
from recording.format import Recording, RecordingWriter

KEY = "sim-key-123"
SECRET = base64.b64encode(b"a very secret hmac key for tests").decode()
PASSPHRASE = "open sesame"
AT_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
EX_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def exchange() -> Iterator[LocalExchange]:
    with LocalExchange(
        depth=200,
        rate=50,
        heartbeat_interval=0.2,
        api_key=KEY,
        api_secret=SECRET,
        passphrase=PASSPHRASE,
    ) as ex:
        yield ex


def _open(ex: LocalExchange, protocol: str = "exchange") -> ClientConnection:
    # max_queue=None: the sync client stops reading when 16 frames wait unread, so closing
    # mid-stream would otherwise wait 10 s for a close frame stuck behind them.
    return connect(ex.url(protocol), max_size=None, max_queue=None, open_timeout=5)


def _recv(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def _recv_until(
    ws: ClientConnection, pred, timeout: float = 5.0
) -> tuple[dict, list[dict]]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = _recv(ws, max(0.01, deadline - time.monotonic()))
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


def _drain_with_marker(ex: LocalExchange, ws: ClientConnection, apply) -> list[dict]:
    """After pause_market(), a marker frame queued behind every generated change."""
    ex.send_malformed(kinds=["unknown_type"])
    is_marker = lambda m: (
        m.get("type") == "sim_unknown" or m.get("channel") == "sim_unknown"
    )
    _, seen = _recv_until(ws, is_marker)
    for msg in seen:
        apply(msg)
    return seen


def _signed(
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


# --------------------------------------------------------------------------- Exchange feed
def test_exchange_root_form_handshake_and_exact_snapshot_shape(
    exchange: LocalExchange,
) -> None:
    with _open(exchange) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD"],
                    "channels": ["level2_batch"],
                }
            )
        )
        assert _recv(ws) == {
            "type": "subscriptions",
            "channels": [
                {
                    "name": "level2_batch",
                    "product_ids": ["BTC-USD"],
                    "account_ids": None,
                }
            ],
            "local_exchange": "sim",
        }
        snap = _recv(ws)
        assert list(snap) == ["type", "product_id", "asks", "bids"]
        assert snap["type"] == "snapshot" and snap["product_id"] == "BTC-USD"
        assert all(
            isinstance(x, str) for lvl in snap["bids"] + snap["asks"] for x in lvl
        )
        bids = [Decimal(p) for p, _ in snap["bids"]]
        asks = [Decimal(p) for p, _ in snap["asks"]]
        assert (
            bids == sorted(bids, reverse=True)
            and asks == sorted(asks)
            and bids[0] < asks[0]
        )
        assert len(bids) >= 150 and len(asks) >= 150
        update = _recv(ws)
        assert list(update) == ["type", "product_id", "changes", "time"]
        assert update["type"] == "l2update" and EX_TIME.match(update["time"])
        assert len(update["changes"]) >= 5  # level2_batch: several changes per frame
        assert {c[0] for c in update["changes"]} <= {"buy", "sell"}


def test_exchange_per_channel_form_and_heartbeats(exchange: LocalExchange) -> None:
    with _open(exchange) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "channels": [
                        {"name": "level2_batch", "product_ids": ["ETH-USD", "BTC-EUR"]},
                        {"name": "heartbeat", "product_ids": ["ETH-USD"]},
                    ],
                }
            )
        )
        ack = _recv(ws)
        assert ack["channels"] == [
            {
                "name": "level2_batch",
                "product_ids": ["ETH-USD", "BTC-EUR"],
                "account_ids": None,
            },
            {"name": "heartbeat", "product_ids": ["ETH-USD"], "account_ids": None},
        ]
        snaps = {_recv(ws)["product_id"], _recv(ws)["product_id"]}
        assert snaps == {"ETH-USD", "BTC-EUR"}
        beats = []
        while len(beats) < 2:
            msg = _recv(ws)
            if msg["type"] == "heartbeat":
                beats.append(msg)
        for beat in beats:
            assert list(beat) == [
                "type",
                "sequence",
                "last_trade_id",
                "product_id",
                "time",
            ]
            assert beat["product_id"] == "ETH-USD"
            assert isinstance(beat["sequence"], int) and isinstance(
                beat["last_trade_id"], int
            )
        assert beats[1]["sequence"] > beats[0]["sequence"]


def test_exchange_stream_rebuilds_true_book_for_every_client(
    exchange: LocalExchange,
) -> None:
    products = ["BTC-USD", "ETH-USD"]
    sub = json.dumps(
        {"type": "subscribe", "product_ids": products, "channels": ["level2_batch"]}
    )
    with _open(exchange) as ws1, _open(exchange) as ws2:
        ws1.send(sub)
        time.sleep(
            0.3
        )  # the second client joins mid-stream: its snapshot must still fit
        ws2.send(sub)
        time.sleep(0.5)
        exchange.pause_market()
        books = [NaiveBook(), NaiveBook()]
        frames = [
            _drain_with_marker(exchange, ws, b.apply_exchange)
            for ws, b in zip((ws1, ws2), books)
        ]
        for book in books:
            for pid in products:
                assert book.books[pid] == exchange.true_book(pid)
        # Same batches, same order: the second client's updates are a suffix of the first's.
        updates = [[f for f in fs if f["type"] == "l2update"] for fs in frames]
        assert len(updates[1]) >= 10
        assert updates[0][-len(updates[1]) :] == updates[1]
        bid, bid_size, ask, _ask_size = exchange.true_top("BTC-USD")
        assert books[0].books["BTC-USD"][0][bid] == bid_size and bid < ask


def test_invalid_product_is_refused_and_valid_one_still_streams(
    exchange: LocalExchange,
) -> None:
    with _open(exchange) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["DOGE-XYZ", "ETH-EUR"],
                    "channels": ["level2_batch"],
                }
            )
        )
        assert _recv(ws) == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "DOGE-XYZ is not a valid product",
        }
        assert _recv(ws)["channels"][0]["product_ids"] == ["ETH-EUR"]
        assert _recv(ws)["type"] == "snapshot"
        update = _recv(ws)
        assert update["type"] == "l2update" and update["product_id"] == "ETH-EUR"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (
            {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": []},
            "No channels provided",
        ),
        ({"type": "subscribe", "product_ids": ["BTC-USD"]}, "No channels provided"),
        (
            {"type": "subscribe", "channels": ["heartbeat"]},
            "You need to specify at least one product ID for channel heartbeat",
        ),
        (
            {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2"]},
            LEVEL2_AUTH_REASON,
        ),
    ],
)
def test_exchange_subscribe_errors_in_coinbase_shape(
    exchange: LocalExchange, request_: dict, reason: str
) -> None:
    with _open(exchange) as ws:
        ws.send(json.dumps(request_))
        assert _recv(ws) == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": reason,
        }


def test_level2_with_valid_signature_streams_one_change_per_frame(
    exchange: LocalExchange,
) -> None:
    with _open(exchange) as ws:
        ws.send(
            json.dumps(
                _signed(
                    {
                        "type": "subscribe",
                        "channels": [{"name": "level2", "product_ids": ["BTC-USD"]}],
                    }
                )
            )
        )
        assert _recv(ws)["channels"][0]["name"] == "level2"
        book = NaiveBook()
        book.apply_exchange(_recv(ws))
        for _ in range(20):
            msg = _recv(ws)
            assert msg["type"] == "l2update" and len(msg["changes"]) == 1
            book.apply_exchange(msg)
        exchange.pause_market()
        _drain_with_marker(exchange, ws, book.apply_exchange)
        assert book.books["BTC-USD"] == exchange.true_book("BTC-USD")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"key": "someone-else"}, "invalid API key"),
        ({"passphrase": "wrong phrase"}, "invalid passphrase"),
        ({"secret": base64.b64encode(b"not the secret").decode()}, "invalid signature"),
        ({"ts": str(time.time() - 120)}, "request timestamp expired"),
        ({"ts": "yesterday"}, "invalid timestamp"),
    ],
)
def test_level2_bad_credentials_are_refused_saying_why(
    exchange: LocalExchange, overrides: dict, reason: str
) -> None:
    msg = _signed(
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2"]},
        **overrides,
    )
    with _open(exchange) as ws:
        ws.send(json.dumps(msg))
        reply = _recv(ws)
        assert reply == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": reason,
        }
        raw = json.dumps(reply)
        for secret in (SECRET, PASSPHRASE, msg["signature"], "wrong phrase"):
            assert secret not in raw
    assert exchange.stats["auth_failures"] == 1
    assert SECRET not in repr(exchange) and PASSPHRASE not in repr(exchange)


def test_level2_without_configured_credentials_needs_auth() -> None:
    with LocalExchange(["BTC-USD"], depth=20) as ex, _open(ex) as ws:
        ws.send(
            json.dumps(
                _signed(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channels": ["level2"],
                    }
                )
            )
        )
        assert _recv(ws)["reason"] == LEVEL2_AUTH_REASON


def test_unsubscribe_stops_only_that_channel_and_product(
    exchange: LocalExchange,
) -> None:
    both = ["BTC-USD", "ETH-USD"]
    with _open(exchange) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": both,
                    "channels": ["level2_batch", "heartbeat"],
                }
            )
        )
        _recv_until(ws, lambda m: m["type"] == "l2update")
        ws.send(
            json.dumps(
                {
                    "type": "unsubscribe",
                    "product_ids": ["BTC-USD"],
                    "channels": ["level2_batch"],
                }
            )
        )
        ack, _ = _recv_until(ws, lambda m: m["type"] == "subscriptions")
        assert ack["channels"] == [
            {"name": "level2_batch", "product_ids": ["ETH-USD"], "account_ids": None},
            {"name": "heartbeat", "product_ids": both, "account_ids": None},
        ]
        after = [_recv(ws) for _ in range(30)]
        updates = {m["product_id"] for m in after if m["type"] == "l2update"}
        beats = {m["product_id"] for m in after if m["type"] == "heartbeat"}
        assert updates == {"ETH-USD"} and beats == set(both)
    assert exchange.stats["unsubscribes"] == 1


def test_client_that_never_subscribes_is_disconnected() -> None:
    with (
        LocalExchange(["BTC-USD"], depth=10, subscribe_timeout=0.3) as ex,
        _open(ex) as ws,
    ):
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


# --------------------------------------------------------------------------- Advanced Trade
def test_advanced_trade_shapes_sequence_and_true_book(exchange: LocalExchange) -> None:
    with _open(exchange, "advanced-trade") as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD", "ETH-USD"],
                    "channel": "level2",
                }
            )
        )
        ws.send(json.dumps({"type": "subscribe", "channel": "heartbeats"}))
        book = NaiveBook()
        frames = []
        while sum(f["channel"] == "heartbeats" for f in frames) < 2:
            frames.append(_recv(ws))
            book.apply_at(frames[-1])
        exchange.pause_market()
        frames += _drain_with_marker(exchange, ws, book.apply_at)
        for pid in ("BTC-USD", "ETH-USD"):
            assert book.books[pid] == exchange.true_book(pid)
    assert [f["sequence_num"] for f in frames] == list(
        range(len(frames))
    )  # marker is frame n
    assert all(AT_TIMESTAMP.match(f["timestamp"]) for f in frames)
    first = frames[0]
    assert first["channel"] == "l2_data" and first["events"][0]["type"] == "snapshot"
    assert set(first["events"][0]["updates"][0]) == {
        "side",
        "event_time",
        "price_level",
        "new_quantity",
    }
    acks = [f for f in frames if f["channel"] == "subscriptions"]
    assert acks[-1]["events"] == [
        {
            "subscriptions": {
                "level2": ["BTC-USD", "ETH-USD"],
                "heartbeats": ["heartbeats"],
            }
        }
    ]
    updates = [
        u
        for f in frames
        if f["channel"] == "l2_data"
        for e in f["events"]
        if e["type"] == "update"
        for u in e["updates"]
    ]
    assert updates and {u["side"] for u in updates} == {"bid", "offer"}
    beat = next(f for f in frames if f["channel"] == "heartbeats")["events"][0]
    assert (
        isinstance(beat["heartbeat_counter"], int)
        and " +0000 UTC m=+" in beat["current_time"]
    )


def test_skip_sequence_makes_exactly_one_gap(exchange: LocalExchange) -> None:
    with _open(exchange, "advanced-trade") as ws:
        ws.send(
            json.dumps(
                {"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "level2"}
            )
        )
        seqs = [_recv(ws)["sequence_num"] for _ in range(5)]
        exchange.skip_sequence()
        seqs += [_recv(ws)["sequence_num"] for _ in range(15)]
    gaps = [b - a for a, b in itertools.pairwise(seqs) if b - a != 1]
    assert seqs[0] == 0 and gaps == [2]
    assert exchange.stats["faults"]["skip_sequence"] == 1


def test_too_many_l2_streams_and_bad_at_requests() -> None:
    with (
        LocalExchange(
            ["BTC-USD", "ETH-USD", "SOL-USD"], depth=10, max_l2_streams=2
        ) as ex,
        _open(ex, "advanced-trade") as ws,
    ):
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD", "ETH-USD", "SOL-USD"],
                    "channel": "level2",
                }
            )
        )
        assert _recv(ws) == {"type": "error", "message": TOO_MANY_L2_STREAMS}
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD", "NOPE-USD"],
                    "channel": "level2",
                }
            )
        )
        err = _recv(ws)
        assert (
            err["type"] == "error"
            and "NOPE-USD is not a valid product" in err["message"]
        )
        assert _recv(ws)["events"][0]["type"] == "snapshot"
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["ETH-USD", "SOL-USD"],
                    "channel": "level2",
                }
            )
        )
        msg, _ = _recv_until(ws, lambda m: m.get("type") == "error")
        assert msg["message"] == TOO_MANY_L2_STREAMS
        ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"]}))
        msg, _ = _recv_until(ws, lambda m: m.get("type") == "error")
        assert "channel" in msg["message"]


# --------------------------------------------------------------------------- faults
def test_drop_connections_aborts_clients_and_new_ones_work(
    exchange: LocalExchange,
) -> None:
    sub = json.dumps(
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch"]}
    )
    with _open(exchange) as ws:
        ws.send(sub)
        _recv(ws)
        exchange.drop_connections()
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=5)
        assert info.value.rcvd is None  # abrupt: no close frame
    with _open(exchange) as ws:
        ws.send(sub)
        assert _recv(ws)["type"] == "subscriptions"
    stats = exchange.stats
    assert (
        stats["faults"]["drop_connections"] == 1 and stats["connections_accepted"] == 2
    )


def test_go_silent_sends_nothing_then_resumes(exchange: LocalExchange) -> None:
    with _open(exchange) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD"],
                    "channels": ["level2_batch", "heartbeat"],
                }
            )
        )
        _recv_until(ws, lambda m: m["type"] == "heartbeat")
        exchange.go_silent(2.0)
        # A frame already on the wire may still arrive; after that, silence.
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            try:
                ws.recv(timeout=0.1)
            except TimeoutError:
                break
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.6)
        kinds = {_recv(ws, 3)["type"] for _ in range(20)}
        assert "l2update" in kinds


@pytest.mark.parametrize("protocol", ["exchange", "advanced-trade"])
def test_send_malformed_injects_each_kind_without_changing_truth(
    exchange: LocalExchange, protocol: str
) -> None:
    if protocol == "exchange":
        sub = {
            "type": "subscribe",
            "product_ids": ["ETH-USD"],
            "channels": ["level2_batch"],
        }
    else:
        sub = {"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "level2"}
    book, raw, bad, parsed = NaiveBook(), [], 0, []
    apply = book.apply_exchange if protocol == "exchange" else book.apply_at
    with _open(exchange, protocol) as ws:
        ws.send(json.dumps(sub))
        snapshot, parsed = _recv_until(ws, _is_snapshot)
        parsed.append(snapshot)
        apply(snapshot)
        exchange.send_malformed(count=1)
        exchange.pause_market()
        exchange.send_malformed(
            kinds=["unknown_type"]
        )  # marker: behind everything else
        markers = 0
        while markers < 2:
            text = ws.recv(timeout=5)
            raw.append(text)
            try:
                msg = json.loads(text)
                parsed.append(msg)
                if (
                    msg.get("type") == "sim_unknown"
                    or msg.get("channel") == "sim_unknown"
                ):
                    markers += 1
                apply(msg)  # a strict client: skips what it cannot apply whole
            except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError):
                bad += 1
        assert book.books["ETH-USD"] == exchange.true_book("ETH-USD")
    assert bad == 6  # all kinds but bad_timestamp (restates a level) and unknown_type
    assert any('"0.-10000"' in t for t in raw) and any('"abc"' in t for t in raw)
    assert any('"-1.5"' in t for t in raw)
    assert any("0001-01-01T00:00:00.000000Z" in t for t in raw)
    assert sum(not _is_json(t) for t in raw) == 1  # only bad_json is not JSON at all
    if protocol == "advanced-trade":  # bad_json consumed no sequence_num
        seqs = [m["sequence_num"] for m in parsed]
        assert seqs == list(range(len(seqs)))
    faults = exchange.stats["faults"]
    assert all(faults[f"malformed:{k}"] >= 1 for k in MALFORMED_KINDS)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _is_snapshot(m: dict) -> bool:
    return m.get("type") == "snapshot" or (
        m.get("channel") == "l2_data" and m["events"][0]["type"] == "snapshot"
    )


def test_client_too_far_behind_is_dropped_as_slow_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_exchange.connections, "MAX_BACKLOG", 30)
    with LocalExchange(["BTC-USD"], depth=20, rate=100) as ex:
        with _open(ex) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channels": ["level2_batch"],
                    }
                )
            )
            _recv(ws)
            ex.go_silent(0.6)  # nothing leaves while 60 batches pile up
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=5)
        deadline = (
            time.monotonic() + 3
        )  # the server notices its side of the abort a bit later
        while ex.stats["slow_consumer_drops"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ex.stats["slow_consumer_drops"] == 1
        with _open(ex) as ws:  # the server itself is fine
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channels": ["level2_batch"],
                    }
                )
            )
            assert _recv(ws, 3)["type"] == "subscriptions"


def test_fail_next_subscribe_refuses_once(exchange: LocalExchange) -> None:
    exchange.fail_next_subscribe("service is upgrading")
    sub = json.dumps(
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch"]}
    )
    with _open(exchange) as ws:
        ws.send(sub)
        assert _recv(ws) == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "service is upgrading",
        }
        ws.send(sub)
        assert _recv(ws)["type"] == "subscriptions"


# --------------------------------------------------------------------------- big books
def test_real_sized_snapshot_46000_levels_over_4_mb() -> None:
    with LocalExchange(
        ["BTC-USD"],
        depth=100,
        rate=5,
        snapshot_depth_override={"BTC-USD": (18_000, 28_000)},
    ) as ex:
        with _open(ex, "advanced-trade") as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channel": "level2",
                    }
                )
            )
            text = ws.recv(timeout=20)
            assert len(text) > 4_000_000
            snap = json.loads(text)["events"][0]
            assert snap["type"] == "snapshot" and len(snap["updates"]) == 46_000
        with _open(ex) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channels": ["level2_batch"],
                    }
                )
            )
            _recv(ws)
            snap = _recv(ws, 20)
            assert (
                len(snap["bids"]) + len(snap["asks"]) >= 46_000 - 50
            )  # market moved a little


def test_default_client_size_limit_rejects_big_snapshot() -> None:
    """Pitfall 4 is real here too: a client keeping max_size=1 MiB cannot take the snapshot."""
    with (
        LocalExchange(["BTC-USD"], depth=20_000, rate=1) as ex,
        connect(ex.url("advanced-trade")) as ws,
    ):
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD"],
                    "channel": "level2",
                }
            )
        )
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)


# --------------------------------------------------------------------------- replay
def _recording(tmp_path: Path) -> Path:
    path = tmp_path / "rec.jsonl.gz"
    base = 1_700_000_000_000_000_000
    frames = [(base, "BTC-USD", json.dumps({"type": "subscriptions", "channels": []}))]
    for i in range(6):
        pid = "BTC-USD" if i % 2 == 0 else "ETH-USD"
        frame = {
            "type": "l2update",
            "product_id": pid,
            "changes": [["buy", f"{100 + i}.00", "1"]],
            "time": "x",
        }
        frames.append(
            (base + (i + 1) * 100_000_000, pid, json.dumps(frame))
        )  # 100 ms apart
    writer = RecordingWriter(
        path,
        {
            "protocol": "exchange",
            "url": "wss://ws-feed",
            "products": ["BTC-USD", "ETH-USD"],
            "started": "2026-01-01T00:00:00Z",
        },
    )
    for t_ns, pid, frame in frames:
        writer.frame(pid, frame, t_ns)
    writer.close()
    return path


def test_replay_sends_recorded_frames_in_order_paced_by_speed(tmp_path: Path) -> None:
    path = _recording(tmp_path)
    assert Recording.open(path).protocol == "exchange"
    recorded = [r["frame"] for _, r in Recording.open(path).records()]
    with LocalExchange(recording=path, replay_speed=2.0) as ex, _open(ex) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD"],
                    "channels": ["level2_batch"],
                }
            )
        )
        got, arrived = [], []
        for _ in range(4):
            got.append(ws.recv(timeout=5))
            arrived.append(time.monotonic())
        with pytest.raises(ConnectionClosed) as info:  # the recording's end: closed
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    expected = [f for f in recorded if '"ETH-USD"' not in f]
    # The recorded subscriptions reply says it is replayed; nothing else is touched.
    assert got[0] == expected[0][:-1] + ',"local_exchange":"replay"}'
    assert got[1:] == expected[1:]
    # Recorded at +0, +100, +300, +500 ms; at speed 2 they are 50, 100, 100 ms apart.
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert gaps[0] >= 0.03 and gaps[1] >= 0.08 and gaps[2] >= 0.08


def test_replay_as_fast_as_possible_and_refusals(tmp_path: Path) -> None:
    path = _recording(tmp_path)
    with LocalExchange(recording=path) as ex:
        with _open(ex) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "channels": [
                            {
                                "name": "level2_batch",
                                "product_ids": ["ETH-USD", "BTC-USD", "SOL-USD"],
                            }
                        ],
                    }
                )
            )
            got = [json.loads(ws.recv(timeout=5)) for _ in range(8)]
        assert got[0] == {
            "type": "error",
            "message": "Failed to subscribe",
            "reason": "SOL-USD is not a valid product",
        }
        # Both products merged in recorded order.
        assert [m.get("changes", [[None, None]])[0][1] for m in got[1:]] == [None] + [
            f"{100 + i}.00" for i in range(6)
        ]
        with _open(ex, "advanced-trade") as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channel": "level2",
                    }
                )
            )
            assert "exchange feed" in _recv(ws)["message"]
        with pytest.raises(RuntimeError, match="replays a recording"):
            ex.true_book("BTC-USD")


def test_bad_recording_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write('{"format":"something-else"}\n')
    with pytest.raises(ValueError, match="header"):
        LocalExchange(recording=path)


# --------------------------------------------------------------------------- settings, lifecycle, CLI
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rate": 0}, "rate"),
        ({"depth": 0}, "depth"),
        ({"products": ["btc usd"]}, "products"),
        ({"port": 70000}, "port"),
        ({"max_l2_streams": 0}, "max_l2_streams"),
        ({"heartbeat_interval": -1}, "heartbeat_interval"),
        ({"api_key": "k"}, "api_key, api_secret and passphrase"),
        (
            {"api_key": "k", "api_secret": "%%%not base64", "passphrase": "p"},
            "api_secret",
        ),
        ({"replay_speed": -2}, "replay_speed"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        LocalExchange(**kwargs)
    assert "%%%not base64" not in str(info.value)


def test_stop_is_idempotent_and_closes_clients() -> None:
    ex = LocalExchange(["BTC-USD"], depth=10).start()
    with _open(ex) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "product_ids": ["BTC-USD"],
                    "channels": ["level2_batch"],
                }
            )
        )
        _recv(ws)
        ex.stop()
        ex.stop()
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=5)
        assert (
            info.value.rcvd is not None and info.value.rcvd.code == 1001
        )  # going away


def _cli(*args: str, **kw) -> subprocess.Popen:
    here = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-m", "local_exchange", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(here)},
        **kw,
    )


def test_cli_help_and_bad_options() -> None:
    proc = _cli("--help")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "--products" in out and "--replay" in out
    proc = _cli("--rate", "-3")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--rate='-3' is not allowed: expected a number in (0, 10000]" in err
    proc = _cli("--products", "btc usd")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--products" in err
    proc = _cli("--speed", "2")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--speed only applies with --replay" in err


def test_cli_serves_and_stops_on_ctrl_c() -> None:
    proc = _cli("--port", "0", "--products", "BTC-USD", "--depth", "20", "--rate", "10")
    try:
        url = None
        for _ in range(5):
            line = proc.stdout.readline()
            if "Exchange feed:" in line:
                url = line.split()[-1]
                break
        assert url and url.startswith("ws://127.0.0.1:")
        with connect(url, max_size=None) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "product_ids": ["BTC-USD"],
                        "channels": ["level2_batch"],
                    }
                )
            )
            assert _recv(ws)["type"] == "subscriptions"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
