"""The local exchange's faults, over real loopback WebSockets."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed

import local_exchange.connections
from local_exchange.faults import MALFORMED_KINDS
from local_exchange.server import LocalExchange
from tests.support import exchange_client
from tests.support.exchange_client import (
    open_ws,
    recv,
    recv_until,
)
from tests.support.flow import wait_until
from tests.support.frames import (
    at_subscribe,
    exchange_error,
    exchange_subscribe_root,
    text,
)
from tests.support.reference_book import ReferenceBooks

pytestmark = pytest.mark.slow
exchange = exchange_client.exchange  # the fixture: a started exchange with auth


# --------------------------------------------------------------------------- faults
def test_drop_connections_aborts_clients_and_new_ones_work(
    exchange: LocalExchange,
) -> None:
    sub = text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"]))
    with open_ws(exchange) as ws:
        ws.send(sub)
        recv(ws)
        exchange.drop_connections()
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=5)
        assert info.value.rcvd is None  # abrupt: no close frame
    with open_ws(exchange) as ws:
        ws.send(sub)
        assert recv(ws)["type"] == "subscriptions"
    stats = exchange.stats
    assert (
        stats["faults"]["drop_connections"] == 1 and stats["connections_accepted"] == 2
    )


def _silenced(exchange: LocalExchange, ws, seconds: float) -> None:
    """Subscribe, see the feed flow, silence the exchange for ``seconds`` and read what
    was already on the wire (a frame may still arrive; after that, silence)."""
    ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch", "heartbeat"])))
    recv_until(ws, lambda m: m["type"] == "heartbeat")
    exchange.go_silent(seconds)
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=0.1)
        except TimeoutError:
            break


def test_go_silent_sends_nothing_then_resumes(exchange: LocalExchange) -> None:
    with open_ws(exchange) as ws:
        _silenced(exchange, ws, 2.0)
        with pytest.raises(TimeoutError):  # the silence itself is under test: no wait
            ws.recv(timeout=0.6)  # for a condition can replace these 0.6 s
        kinds = {recv(ws, 3)["type"] for _ in range(20)}
        assert "l2update" in kinds


def test_end_silence_ends_a_long_silence_at_once(exchange: LocalExchange) -> None:
    """Tests silence the exchange with a generous bound and end it once they saw what
    the silence was for: the queued frames follow at once, not after the hour."""
    with open_ws(exchange) as ws:
        _silenced(exchange, ws, 3600)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        exchange.end_silence()
        kinds = {recv(ws, 10)["type"] for _ in range(20)}
        assert "l2update" in kinds


@pytest.mark.parametrize("protocol", ["exchange", "advanced-trade"])
def test_send_malformed_injects_each_kind_without_changing_truth(
    exchange: LocalExchange, protocol: str
) -> None:
    if protocol == "exchange":
        sub = exchange_subscribe_root(["ETH-USD"], ["level2_batch"])
    else:
        sub = at_subscribe(["ETH-USD"])
    book, raw, bad, parsed = ReferenceBooks(), [], 0, []
    apply = book.apply_exchange if protocol == "exchange" else book.apply_at
    with open_ws(exchange, protocol) as ws:
        ws.send(text(sub))
        snapshot, parsed = recv_until(ws, _is_snapshot)
        parsed.append(snapshot)
        apply(snapshot)
        exchange.send_malformed(count=1)
        exchange.pause_market()
        exchange.send_malformed(
            kinds=["unknown_type"]
        )  # marker: behind everything else
        markers = 0
        while markers < 2:
            received = ws.recv(timeout=5)
            raw.append(received)
            try:
                msg = json.loads(received)
                parsed.append(msg)
                if (
                    msg.get("type") == "sim_unknown"
                    or msg.get("channel") == "sim_unknown"
                ):
                    markers += 1
                apply(msg)  # a strict client: skips what it cannot apply whole
            except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError):
                bad += 1
        assert book.true_book_form("ETH-USD") == exchange.true_book("ETH-USD")
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


def _is_json(raw_text: str) -> bool:
    try:
        json.loads(raw_text)
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
        with open_ws(ex) as ws:
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            recv(ws)
            ex.go_silent(0.6)  # nothing leaves while 60 batches pile up
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=5)
        # the server notices its side of the abort a bit later
        wait_until(
            lambda: ex.stats["slow_consumer_drops"] > 0, 10, "the slow consumer drop"
        )
        assert ex.stats["slow_consumer_drops"] == 1
        with open_ws(ex) as ws:  # the server itself is fine
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            assert recv(ws, 3)["type"] == "subscriptions"


def test_fail_next_subscribe_refuses_once(exchange: LocalExchange) -> None:
    exchange.fail_next_subscribe("service is upgrading")
    sub = text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"]))
    with open_ws(exchange) as ws:
        ws.send(sub)
        assert recv(ws) == exchange_error("Failed to subscribe", "service is upgrading")
        ws.send(sub)
        assert recv(ws)["type"] == "subscriptions"
