"""The one builder of Coinbase frames for the tests, in the exact shapes the feeds send.

Every builder returns the frame as a ``dict``; :func:`text` turns it into the JSON text a
socket carries (``ScriptedConnection.send`` takes either). Prices and sizes are passed as
the feeds send them, as text ("65000.01000000"); anything else is converted with ``str``.

Exchange feed (``wss://ws-feed.exchange.coinbase.com``): :func:`exchange_snapshot`,
:func:`exchange_l2update`, :func:`exchange_heartbeat`, :func:`exchange_subscriptions`,
:func:`exchange_error`; what a client sends: :func:`exchange_subscribe` (per-channel form),
:func:`exchange_subscribe_root` (one product list for every channel),
:func:`exchange_subscribe_channels` (each channel its own products),
:func:`exchange_unsubscribe`.

Advanced Trade (``wss://advanced-trade-ws.coinbase.com``), every message numbered by
``sequence_num``: :func:`at_level`, :func:`at_l2_data` (any events),
:func:`at_snapshot`, :func:`at_update`, :func:`at_heartbeats`, :func:`at_subscriptions`,
:func:`at_error`; what a client sends: :func:`at_subscribe`.

:func:`ladder` makes snapshot levels around a mid price.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from coinbase.feeds import subscribe_messages

__all__ = [
    "AT_TIME",
    "EXCHANGE_TIME",
    "at_heartbeats",
    "at_l2_data",
    "at_error",
    "at_level",
    "at_snapshot",
    "at_subscribe",
    "at_subscriptions",
    "at_update",
    "exchange_error",
    "exchange_heartbeat",
    "exchange_l2update",
    "exchange_snapshot",
    "exchange_subscribe",
    "exchange_subscribe_channels",
    "exchange_subscribe_root",
    "exchange_subscriptions",
    "exchange_unsubscribe",
    "ladder",
    "subscribe_messages",
    "text",
]

EXCHANGE_TIME = "2026-08-25T03:35:57.300000Z"
AT_TIME = "2026-08-09T21:05:48.483587501Z"
AT_EVENT_TIME = "2026-08-09T21:05:48.170326Z"

Level = Sequence[Any]
"""``(price, size)``."""
Change = Sequence[Any]
"""``(side, price, size)``, side as the feed spells it (buy/sell, bid/offer)."""


def text(frame: Any) -> str:
    """The frame as the socket carries it: JSON text (a str is returned unchanged)."""
    return frame if isinstance(frame, str) else json.dumps(frame)


def _levels(levels: Iterable[Level]) -> list[list[str]]:
    return [[str(p), str(s)] for p, s in levels]


def ladder(
    mid: int | float = 100,
    levels: int = 3,
    *,
    step: int | float = 1,
    size: str = "1.50000000",
    ask_size: str = "2.50000000",
) -> tuple[list[list[str]], list[list[str]]]:
    """``(bids, asks)``: ``levels`` prices each side of ``mid``, ``step`` apart, best first."""
    bids = [[f"{mid - step * (1 + i)}", size] for i in range(levels)]
    asks = [[f"{mid + step * (1 + i)}", ask_size] for i in range(levels)]
    return bids, asks


# -- Exchange feed ------------------------------------------------------------------------


def exchange_snapshot(
    product_id: str = "BTC-USD",
    bids: Iterable[Level] | None = None,
    asks: Iterable[Level] | None = None,
) -> dict:
    """``type: snapshot`` (no time: the Exchange feed's snapshot carries none)."""
    if bids is None and asks is None:
        bids, asks = ladder()
    return {
        "type": "snapshot",
        "product_id": product_id,
        "bids": _levels(bids or []),
        "asks": _levels(asks or []),
    }


def exchange_l2update(
    product_id: str = "BTC-USD",
    changes: Iterable[Change] = (("buy", "99", "3"),),
    time: str | None = EXCHANGE_TIME,
) -> dict:
    """``type: l2update``: ``changes`` are ``(side, price, new size)``, side buy/sell."""
    frame: dict[str, Any] = {
        "type": "l2update",
        "product_id": product_id,
        "changes": [[side, str(p), str(s)] for side, p, s in changes],
    }
    if time is not None:
        frame["time"] = time
    return frame


def exchange_heartbeat(
    product_id: str = "BTC-USD", sequence: int = 1, time: str = EXCHANGE_TIME
) -> dict:
    return {
        "type": "heartbeat",
        "sequence": sequence,
        "last_trade_id": 1000 + sequence,
        "product_id": product_id,
        "time": time,
    }


def exchange_subscriptions(
    product_ids: Sequence[str] = ("BTC-USD",),
    channels: Sequence[str] = ("level2_batch", "heartbeat"),
) -> dict:
    """The reply to a subscribe: every channel with its products."""
    return {
        "type": "subscriptions",
        "channels": [{"name": c, "product_ids": list(product_ids)} for c in channels],
    }


def exchange_error(message: str, reason: str = "") -> dict:
    """Coinbase's error reply, e.g. ``exchange_error("Failed to subscribe",
    "BTC-NOPE is not a valid product")``."""
    return {"type": "error", "message": message, "reason": reason}


def exchange_subscribe(
    product_ids: Sequence[str] = ("BTC-USD",),
    channel: str = "level2_batch",
    heartbeat: bool = True,
) -> dict:
    """What a client sends (unsigned); for one product, :func:`subscribe_messages`
    (the service's own builder) gives the same."""
    channels = [{"name": channel, "product_ids": list(product_ids)}]
    if heartbeat:
        channels.append({"name": "heartbeat", "product_ids": list(product_ids)})
    return {"type": "subscribe", "channels": channels}


def exchange_subscribe_root(
    product_ids: Sequence[str] = ("BTC-USD",),
    channels: Sequence[str] = ("level2_batch",),
    *,
    kind: str = "subscribe",
) -> dict:
    """The root form: one ``product_ids`` for every channel, ``channels`` by name
    (``kind="unsubscribe"``: see :func:`exchange_unsubscribe`)."""
    return {"type": kind, "product_ids": list(product_ids), "channels": list(channels)}


def exchange_subscribe_channels(channels: Mapping[str, Sequence[str]]) -> dict:
    """The per-channel form with each channel's own products, e.g.
    ``{"level2_batch": ["ETH-USD", "BTC-EUR"], "heartbeat": ["ETH-USD"]}``."""
    return {
        "type": "subscribe",
        "channels": [{"name": c, "product_ids": list(p)} for c, p in channels.items()],
    }


def exchange_unsubscribe(
    product_ids: Sequence[str] = ("BTC-USD",),
    channels: Sequence[str] = ("level2_batch",),
) -> dict:
    """Stop ``channels`` for ``product_ids`` (root form), the rest keeps streaming."""
    return exchange_subscribe_root(product_ids, channels, kind="unsubscribe")


# -- Advanced Trade -------------------------------------------------------------------------


def at_level(
    side: str, price: Any, quantity: Any, event_time: str = AT_EVENT_TIME
) -> dict:
    """One entry of ``updates``: side ``bid`` or ``offer``."""
    return {
        "side": side,
        "event_time": event_time,
        "price_level": str(price),
        "new_quantity": str(quantity),
    }


def at_l2_data(
    sequence_num: int,
    events: list[dict],
    channel: str = "l2_data",
    timestamp: str = AT_TIME,
) -> dict:
    """An Advanced Trade message of ``channel`` holding ``events``."""
    return {
        "channel": channel,
        "client_id": "",
        "timestamp": timestamp,
        "sequence_num": sequence_num,
        "events": events,
    }


def _at_book_event(kind: str, product_id: str, updates: Iterable[dict]) -> dict:
    return {"type": kind, "product_id": product_id, "updates": list(updates)}


def at_snapshot(
    sequence_num: int,
    product_id: str = "BTC-USD",
    bids: Iterable[Level] | None = None,
    asks: Iterable[Level] | None = None,
) -> dict:
    """``l2_data`` with one ``snapshot`` event (bids and offers in one ``updates``)."""
    if bids is None and asks is None:
        bids, asks = ladder()
    updates = [at_level("bid", p, s) for p, s in bids or []]
    updates += [at_level("offer", p, s) for p, s in asks or []]
    return at_l2_data(sequence_num, [_at_book_event("snapshot", product_id, updates)])


def at_update(
    sequence_num: int,
    product_id: str = "BTC-USD",
    changes: Iterable[Change] = (("bid", "99", "1"),),
) -> dict:
    """``l2_data`` with one ``update`` event: ``changes`` are ``(side, price, qty)``."""
    updates = [at_level(side, p, q) for side, p, q in changes]
    return at_l2_data(sequence_num, [_at_book_event("update", product_id, updates)])


def at_heartbeats(sequence_num: int, counter: int = 1) -> dict:
    return at_l2_data(
        sequence_num,
        [
            {
                "current_time": "2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.26",
                "heartbeat_counter": counter,
            }
        ],
        channel="heartbeats",
    )


def at_subscriptions(
    sequence_num: int,
    product_ids: Sequence[str] = ("BTC-USD",),
    channel: str = "level2",
) -> dict:
    """The reply to a subscribe (Advanced Trade names ``level2`` ``l2_data`` in data)."""
    return at_l2_data(
        sequence_num,
        [{"subscriptions": {channel: list(product_ids)}}],
        channel="subscriptions",
    )


def at_error(message: str) -> dict:
    """Advanced Trade's error reply: a message, no reason (e.g. too many L2 streams)."""
    return {"type": "error", "message": message}


def at_subscribe(
    product_ids: Sequence[str] = ("BTC-USD",), channel: str = "level2"
) -> dict:
    """What a client sends: one channel per subscribe message on Advanced Trade."""
    message: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if channel != "heartbeats":
        message["product_ids"] = list(product_ids)
    return message


def write_exchange_recording(
    path: Any,
    products: Sequence[str] = ("BTC-USD", "ETH-USD"),
    updates: int = 50,
    *,
    start_ns: int = 1_780_000_000_000_000_000,
) -> Any:
    """A small deterministic Exchange-feed recording (``python -m recording`` format):
    per product a connection, a snapshot around 100, then ``updates`` l2updates 1 ms
    apart (their ``time`` is their receive time) that move the best bid and ask.
    Returns ``path``."""
    from recording.writer import RecordingWriter

    writer = RecordingWriter(
        path,
        {
            "protocol": "exchange",
            "feed": "exchange",
            "url": "ws://127.0.0.1:1/",
            "products": list(products),
            "started": "2026-06-01T00:00:00Z",
        },
    )
    t = start_ns
    try:
        for product in products:
            t += 1_000
            writer.connected(product, t_ns=t)
            t += 1_000
            writer.frame(product, text(exchange_snapshot(product)), t_ns=t)
        for i in range(updates):
            for product in products:
                t += 1_000_000
                side, price = (
                    ("buy", f"99.{i % 90 + 1:02d}")
                    if i % 2
                    else (
                        "sell",
                        f"101.{i % 90 + 1:02d}",
                    )
                )
                when = datetime.fromtimestamp(t / 1e9, UTC).strftime(
                    "%Y-%m-%dT%H:%M:%S.%fZ"
                )
                update = exchange_l2update(product, [(side, price, "0.5")], when)
                writer.frame(product, text(update), t_ns=t)
    finally:
        writer.close()
    return path
