"""Both protocols of the local exchange, over real loopback WebSockets."""

from __future__ import annotations

import base64
import itertools
import json
import time
from decimal import Decimal

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from local_exchange.advanced_trade_protocol import TOO_MANY_L2_STREAMS
from local_exchange.auth import LEVEL2_AUTH_REASON
from local_exchange.server import LocalExchange
from tests.support import exchange_client
from tests.support.exchange_client import (
    AT_TIMESTAMP,
    EX_TIME,
    PASSPHRASE,
    SECRET,
    drain_with_marker,
    open_ws,
    recv,
    recv_until,
    signed,
)
from tests.support.frames import (
    at_error,
    at_subscribe,
    exchange_error,
    exchange_subscribe,
    exchange_subscribe_channels,
    exchange_subscribe_root,
    exchange_unsubscribe,
    text,
)
from tests.support.reference_book import ReferenceBooks

pytestmark = pytest.mark.slow
exchange = exchange_client.exchange  # the fixture: a started exchange with auth


# --------------------------------------------------------------------------- Exchange feed
def test_exchange_root_form_handshake_and_exact_snapshot_shape(
    exchange: LocalExchange,
) -> None:
    with open_ws(exchange) as ws:
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        assert recv(ws) == {
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
        snap = recv(ws)
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
        update = recv(ws)
        assert list(update) == ["type", "product_id", "changes", "time"]
        assert update["type"] == "l2update" and EX_TIME.match(update["time"])
        assert len(update["changes"]) >= 5  # level2_batch: several changes per frame
        assert {c[0] for c in update["changes"]} <= {"buy", "sell"}


def test_exchange_per_channel_form_and_heartbeats(exchange: LocalExchange) -> None:
    with open_ws(exchange) as ws:
        ws.send(
            text(
                exchange_subscribe_channels(
                    {"level2_batch": ["ETH-USD", "BTC-EUR"], "heartbeat": ["ETH-USD"]}
                )
            )
        )
        ack = recv(ws)
        assert ack["channels"] == [
            {
                "name": "level2_batch",
                "product_ids": ["ETH-USD", "BTC-EUR"],
                "account_ids": None,
            },
            {"name": "heartbeat", "product_ids": ["ETH-USD"], "account_ids": None},
        ]
        snaps = {recv(ws)["product_id"], recv(ws)["product_id"]}
        assert snaps == {"ETH-USD", "BTC-EUR"}
        beats = []
        while len(beats) < 2:
            msg = recv(ws)
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
    sub = text(exchange_subscribe_root(products, ["level2_batch"]))
    books, seen = [ReferenceBooks(), ReferenceBooks()], [[], []]

    def read_updates(ws, n: int, k: int) -> None:
        while sum(m["type"] == "l2update" for m in seen[k]) < n:
            seen[k].append(recv(ws))
            books[k].apply_exchange(seen[k][-1])

    with open_ws(exchange) as ws1, open_ws(exchange) as ws2:
        ws1.send(sub)
        read_updates(ws1, 10, 0)  # the second client joins mid-stream: its
        ws2.send(sub)  # snapshot must still fit the changes after it
        read_updates(ws2, 10, 1)
        exchange.pause_market()
        frames = [
            seen[k] + drain_with_marker(exchange, ws, books[k].apply_exchange)
            for k, ws in enumerate((ws1, ws2))
        ]
        for book in books:
            for pid in products:
                assert book.true_book_form(pid) == exchange.true_book(pid)
        # Same batches, same order: the second client's updates are a suffix of the first's.
        updates = [[f for f in fs if f["type"] == "l2update"] for fs in frames]
        assert len(updates[1]) >= 10
        assert updates[0][-len(updates[1]) :] == updates[1]
        bid, bid_size, ask, _ask_size = exchange.true_top("BTC-USD")
        assert books[0]["BTC-USD"].bids[bid] == bid_size and bid < ask


def test_invalid_product_is_refused_and_valid_one_still_streams(
    exchange: LocalExchange,
) -> None:
    with open_ws(exchange) as ws:
        ws.send(text(exchange_subscribe_root(["DOGE-XYZ", "ETH-EUR"])))
        assert recv(ws) == exchange_error(
            "Failed to subscribe", "DOGE-XYZ is not a valid product"
        )
        assert recv(ws)["channels"][0]["product_ids"] == ["ETH-EUR"]
        assert recv(ws)["type"] == "snapshot"
        update = recv(ws)
        assert update["type"] == "l2update" and update["product_id"] == "ETH-EUR"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (exchange_subscribe_root(["BTC-USD"], []), "No channels provided"),
        # Malformed on purpose, so literal: a key is missing (channels, product_ids).
        ({"type": "subscribe", "product_ids": ["BTC-USD"]}, "No channels provided"),
        (
            {"type": "subscribe", "channels": ["heartbeat"]},
            "You need to specify at least one product ID for channel heartbeat",
        ),
        (exchange_subscribe_root(["BTC-USD"], ["level2"]), LEVEL2_AUTH_REASON),
    ],
)
def test_exchange_subscribe_errors_in_coinbase_shape(
    exchange: LocalExchange, request_: dict, reason: str
) -> None:
    with open_ws(exchange) as ws:
        ws.send(text(request_))
        assert recv(ws) == exchange_error("Failed to subscribe", reason)


def test_level2_with_valid_signature_streams_one_change_per_frame(
    exchange: LocalExchange,
) -> None:
    with open_ws(exchange) as ws:
        ws.send(
            text(signed(exchange_subscribe(["BTC-USD"], "level2", heartbeat=False)))
        )
        assert recv(ws)["channels"][0]["name"] == "level2"
        book = ReferenceBooks()
        book.apply_exchange(recv(ws))
        for _ in range(20):
            msg = recv(ws)
            assert msg["type"] == "l2update" and len(msg["changes"]) == 1
            book.apply_exchange(msg)
        exchange.pause_market()
        drain_with_marker(exchange, ws, book.apply_exchange)
        assert book.true_book_form("BTC-USD") == exchange.true_book("BTC-USD")


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
    msg = signed(exchange_subscribe_root(["BTC-USD"], ["level2"]), **overrides)
    with open_ws(exchange) as ws:
        ws.send(text(msg))
        reply = recv(ws)
        assert reply == exchange_error("Failed to subscribe", reason)
        raw = json.dumps(reply)
        for secret in (SECRET, PASSPHRASE, msg["signature"], "wrong phrase"):
            assert secret not in raw
    assert exchange.stats["auth_failures"] == 1
    assert SECRET not in repr(exchange) and PASSPHRASE not in repr(exchange)


def test_level2_without_configured_credentials_needs_auth() -> None:
    with LocalExchange(["BTC-USD"], depth=20) as ex, open_ws(ex) as ws:
        ws.send(text(signed(exchange_subscribe_root(["BTC-USD"], ["level2"]))))
        assert recv(ws)["reason"] == LEVEL2_AUTH_REASON


def test_unsubscribe_stops_only_that_channel_and_product(
    exchange: LocalExchange,
) -> None:
    both = ["BTC-USD", "ETH-USD"]
    with open_ws(exchange) as ws:
        ws.send(text(exchange_subscribe_root(both, ["level2_batch", "heartbeat"])))
        recv_until(ws, lambda m: m["type"] == "l2update")
        ws.send(text(exchange_unsubscribe(["BTC-USD"], ["level2_batch"])))
        ack, _ = recv_until(ws, lambda m: m["type"] == "subscriptions")
        assert ack["channels"] == [
            {"name": "level2_batch", "product_ids": ["ETH-USD"], "account_ids": None},
            {"name": "heartbeat", "product_ids": both, "account_ids": None},
        ]
        after = [recv(ws) for _ in range(30)]
        updates = {m["product_id"] for m in after if m["type"] == "l2update"}
        beats = {m["product_id"] for m in after if m["type"] == "heartbeat"}
        assert updates == {"ETH-USD"} and beats == set(both)
    assert exchange.stats["unsubscribes"] == 1


def test_client_that_never_subscribes_is_disconnected() -> None:
    with (
        LocalExchange(["BTC-USD"], depth=10, subscribe_timeout=0.3) as ex,
        open_ws(ex) as ws,
    ):
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008


# --------------------------------------------------------------------------- Advanced Trade
def test_advanced_trade_shapes_sequence_and_true_book(exchange: LocalExchange) -> None:
    with open_ws(exchange, "advanced-trade") as ws:
        ws.send(text(at_subscribe(["BTC-USD", "ETH-USD"])))
        ws.send(text(at_subscribe(channel="heartbeats")))
        book = ReferenceBooks()
        frames = []
        while sum(f["channel"] == "heartbeats" for f in frames) < 2:
            frames.append(recv(ws))
            book.apply_at(frames[-1])
        exchange.pause_market()
        frames += drain_with_marker(exchange, ws, book.apply_at)
        for pid in ("BTC-USD", "ETH-USD"):
            assert book.true_book_form(pid) == exchange.true_book(pid)
    assert [f["sequence_num"] for f in frames] == list(
        range(len(frames))
    )  # marker is frame n
    assert all(AT_TIMESTAMP.match(f["timestamp"]) for f in frames)
    # The announcing exchange acks before the snapshot, so that a client labels the
    # snapshot too (Coinbase acks after it: see the byte-for-byte test).
    assert frames[0]["channel"] == "subscriptions"
    first = frames[1]
    assert first["channel"] == "l2_data" and first["events"][0]["type"] == "snapshot"
    assert set(first["events"][0]["updates"][0]) == {
        "side",
        "event_time",
        "price_level",
        "new_quantity",
    }
    acks = [f for f in frames if f["channel"] == "subscriptions"]
    assert all(ack["local_exchange"] == "sim" for ack in acks)
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
    with open_ws(exchange, "advanced-trade") as ws:
        ws.send(text(at_subscribe(["ETH-USD"])))
        seqs = [recv(ws)["sequence_num"] for _ in range(5)]
        exchange.skip_sequence()
        seqs += [recv(ws)["sequence_num"] for _ in range(15)]
    gaps = [b - a for a, b in itertools.pairwise(seqs) if b - a != 1]
    assert seqs[0] == 0 and gaps == [2]
    assert exchange.stats["faults"]["skip_sequence"] == 1


def test_too_many_l2_streams_and_bad_at_requests() -> None:
    with (
        LocalExchange(
            ["BTC-USD", "ETH-USD", "SOL-USD"], depth=10, max_l2_streams=2
        ) as ex,
        open_ws(ex, "advanced-trade") as ws,
    ):
        ws.send(text(at_subscribe(["BTC-USD", "ETH-USD", "SOL-USD"])))
        assert recv(ws) == at_error(TOO_MANY_L2_STREAMS)
        ws.send(text(at_subscribe(["BTC-USD", "NOPE-USD"])))
        err = recv(ws)
        assert (
            err["type"] == "error"
            and "NOPE-USD is not a valid product" in err["message"]
        )
        assert recv(ws)["channel"] == "subscriptions"  # announced: acked first
        assert recv(ws)["events"][0]["type"] == "snapshot"
        ws.send(text(at_subscribe(["ETH-USD", "SOL-USD"])))
        msg, _ = recv_until(ws, lambda m: m.get("type") == "error")
        assert msg["message"] == TOO_MANY_L2_STREAMS
        # Malformed on purpose: no channel.
        ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD"]}))
        msg, _ = recv_until(ws, lambda m: m.get("type") == "error")
        assert "channel" in msg["message"]


# --------------------------------------------------------------------------- big books
def test_real_sized_snapshot_46000_levels_over_4_mb() -> None:
    with LocalExchange(
        ["BTC-USD"],
        depth=100,
        rate=5,
        snapshot_depth_override={"BTC-USD": (18_000, 28_000)},
    ) as ex:
        ex.pause_market()  # a thin moment can sweep hundreds of levels in one batch
        with open_ws(ex, "advanced-trade") as ws:
            ws.send(text(at_subscribe(["BTC-USD"])))
            assert recv(ws)["channel"] == "subscriptions"  # announced: acked first
            raw = ws.recv(timeout=20)
            assert len(raw) > 4_000_000
            snap = json.loads(raw)["events"][0]
            assert snap["type"] == "snapshot" and len(snap["updates"]) == 46_000
        with open_ws(ex) as ws:
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            recv(ws)
            snap = recv(ws, 20)
            assert len(snap["bids"]) + len(snap["asks"]) == 46_000


def test_default_client_size_limit_rejects_big_snapshot() -> None:
    """Pitfall 4 is real here too: a client keeping max_size=1 MiB cannot take the snapshot."""
    with (
        LocalExchange(["BTC-USD"], depth=20_000, rate=1) as ex,
        connect(ex.url("advanced-trade")) as ws,
    ):
        ws.send(text(at_subscribe(["BTC-USD"])))
        assert json.loads(ws.recv(timeout=20))["channel"] == "subscriptions"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=20)


def test_without_announce_the_replies_are_coinbase_byte_for_byte() -> None:
    """``announce=False``: no ``local_exchange`` field, the replies are Coinbase's."""
    with LocalExchange(["BTC-USD"], depth=10, announce=False) as ex:
        with open_ws(ex) as ws:
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            assert "local_exchange" not in recv(ws)
        with open_ws(ex, "advanced-trade") as ws:
            ws.send(text(at_subscribe(channel="heartbeats")))
            assert "local_exchange" not in recv(ws)
            ws.send(text(at_subscribe(["BTC-USD"])))
            # As Coinbase does: the snapshot first, then the ack that lists level2.
            snapshot, ack = recv(ws), recv(ws)
            assert snapshot["channel"] == "l2_data"
            assert ack["channel"] == "subscriptions" and "local_exchange" not in ack
