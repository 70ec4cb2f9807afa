"""The Advanced Trade dialect, served on ``/advanced-trade`` (and paths below it).

One channel per subscribe message: ``level2`` (alias ``l2_data``; at most
``max_l2_streams`` products per connection) and ``heartbeats``. Every frame is an envelope
``{"channel", "client_id", "timestamp", "sequence_num", "events"}``; the envelope is added
when the frame is sent (:meth:`AdvancedTradeProtocol.frame_text`), so ``sequence_num`` is
per connection across channels and contiguous from 0 (a ``skip_sequence`` fault skips one).
Errors are ``{"type": "error", "message": ...}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coinbase.feeds import ADVANCED_TRADE
from local_exchange.market import BID, RawChange, RawLevel, format_levels
from local_exchange.protocol import (
    ADVANCED_TRADE_PATH,
    BAD_SIZES,
    BAD_TIMESTAMP,
    MARKER_FIELD,
    Protocol,
    dumps,
    iso_ns,
    iso_us,
)

if TYPE_CHECKING:
    from local_exchange.connections import Connection, Registry

TOO_MANY_L2_STREAMS = "too many L2 streams requested in a single session"
SIDE = {BID: "bid", "ask": "offer"}


@dataclass(eq=False, slots=True)
class AtFrame:
    """A payload waiting for its envelope; ``extra`` is raw JSON members to append."""

    channel: str
    events_json: str
    extra: str = ""


def error(message: str) -> str:
    return dumps({"type": "error", "message": message})


def go_time(ns: int, uptime_s: float) -> str:
    """The heartbeat ``current_time``: Go's ``time.Time.String()`` with monotonic part."""
    sec, rem = divmod(ns, 1_000_000_000)
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
        + f".{rem:09d} +0000 UTC m=+{uptime_s:.9f}"
    )


def heartbeat_frame(now_ns: int, uptime_s: float, counter: int) -> AtFrame:
    events = [{"current_time": go_time(now_ns, uptime_s), "heartbeat_counter": counter}]
    return AtFrame("heartbeats", dumps(events))


def _update(pid: str, updates: Any) -> AtFrame:
    return AtFrame(
        "l2_data", dumps([{"type": "update", "product_id": pid, "updates": updates}])
    )


def _levels(side: str, levels: list[list[str]], t: str) -> list[dict[str, str]]:
    return [
        {"side": side, "event_time": t, "price_level": p, "new_quantity": s}
        for p, s in levels
    ]


class AdvancedTradeProtocol(Protocol):
    name = ADVANCED_TRADE
    path = ADVANCED_TRADE_PATH
    snapshot_label = "l2_data"
    update_label = "l2_data"
    sequenced = True

    def __init__(
        self, registry: Registry, feed: str | None, max_l2_streams: int
    ) -> None:
        super().__init__(registry, feed)
        self._max_l2_streams = max_l2_streams

    # -- requests ---------------------------------------------------------------------
    def error(self, text: str) -> str:
        return error(text)

    def parse_error(self) -> str:
        return error("failed to parse message: malformed JSON")

    def invalid_type(self, kind: Any) -> str:
        return error(
            f"invalid message type {kind!r}: expected subscribe or unsubscribe"
        )

    def handle(self, conn: Connection, msg: dict, *, subscribe: bool) -> None:
        channel = msg.get("channel")
        if not isinstance(channel, str) or not channel:
            conn.put(
                "error", error("channel is required: one channel per subscribe message")
            )
        elif channel == "heartbeats":
            conn.at_heartbeats = subscribe
            conn.put("subscriptions", self.subscriptions(conn))
        elif channel in ("level2", "l2_data"):
            self._level2(conn, msg.get("product_ids"), subscribe)
        else:
            conn.put(
                "error",
                error(
                    f"unsupported channel {channel!r}; this feed serves level2 and heartbeats"
                ),
            )

    def _level2(self, conn: Connection, pids: Any, subscribe: bool) -> None:
        if (
            not isinstance(pids, list)
            or not pids
            or not all(isinstance(p, str) for p in pids)
        ):
            conn.put(
                "error",
                error(
                    "product_ids must be a non-empty list of product ids for channel level2"
                ),
            )
            return
        pids = list(dict.fromkeys(pids))
        valid = [p for p in pids if self.registry.is_product(p)]
        for pid in pids:
            if pid not in valid:
                conn.put(
                    "error", error(f"Failed to subscribe: {pid} is not a valid product")
                )
        current = conn.subs.setdefault("level2", [])
        if subscribe:
            new = [p for p in valid if p not in current]
            if len(current) + len(new) > self._max_l2_streams:
                conn.put("error", error(TOO_MANY_L2_STREAMS))
                return
            current.extend(new)
            if self.feed and valid:
                # Coinbase acks after the snapshot; the local exchange says who it is
                # first, so that a client labels even the snapshot sim or replay.
                conn.put("subscriptions", self.subscriptions(conn))
            for pid in new:
                self.registry.subscribe_l2(conn, "level2", pid)
        else:
            for pid in valid:
                if pid in current:
                    current.remove(pid)
                    self.registry.unsubscribe_l2(conn, "level2", pid)
        if valid and not (subscribe and self.feed):
            conn.put("subscriptions", self.subscriptions(conn))

    def subscriptions(self, conn: Connection) -> AtFrame:
        subs: dict[str, list[str]] = {}
        if conn.subs.get("level2"):
            subs["level2"] = list(conn.subs["level2"])
        if conn.at_heartbeats:
            subs["heartbeats"] = ["heartbeats"]
        marker = f",{dumps(MARKER_FIELD)}:{dumps(self.feed)}" if self.feed else ""
        return AtFrame("subscriptions", dumps([{"subscriptions": subs}]), marker)

    # -- encoders ---------------------------------------------------------------------
    def snapshot(
        self,
        pid: str,
        bids: list[RawLevel],
        asks: list[RawLevel],
        decimals: int,
        now_ns: int,
    ) -> AtFrame:
        t = iso_us(now_ns)
        updates = _levels("bid", format_levels(bids, decimals), t)
        updates += _levels("offer", format_levels(asks, decimals), t)
        return AtFrame(
            "l2_data",
            dumps([{"type": "snapshot", "product_id": pid, "updates": updates}]),
        )

    def updates(
        self, pid: str, changes: list[RawChange], t: str, channel: str
    ) -> list[AtFrame]:
        return [
            _update(
                pid,
                [
                    {
                        "side": SIDE[s],
                        "event_time": t,
                        "price_level": p,
                        "new_quantity": z,
                    }
                    for s, p, z in changes
                ],
            )
        ]

    def malformed(
        self, kind: str, pid: str, restate: list[RawChange], now_ns: int
    ) -> Any:
        t = iso_us(now_ns)
        if kind == "bad_json":  # cut inside the envelope: consumes no sequence_num
            return (
                '{"channel":"l2_data","client_id":"","timestamp":"'
                + iso_ns(now_ns)
                + '","sequence_num":'
            )
        if kind == "missing_fields":
            return AtFrame("l2_data", dumps([{"type": "update", "product_id": pid}]))
        if kind in BAD_SIZES:
            top_price = restate[0][1] if restate else "1.00"
            return _update(pid, _levels("bid", [[top_price, BAD_SIZES[kind]]], t))
        if kind == "bad_timestamp":
            return _update(
                pid, _levels("bid", [[p, z] for _, p, z in restate], BAD_TIMESTAMP)
            )
        if kind == "unknown_type":
            return AtFrame(
                "sim_unknown", dumps([{"type": "mystery", "product_id": pid}])
            )
        return AtFrame(  # wrong_types
            "l2_data", dumps({"type": "update", "product_id": 12345, "updates": "bid"})
        )

    def frame_text(self, conn: Connection, payload: Any) -> str:
        if not isinstance(payload, AtFrame):
            return payload  # bad_json and errors go out as they are
        if conn.skip_pending:
            conn.skip_pending = False
            conn.seq += 1
        text = (
            '{"channel":"'
            + payload.channel
            + '","client_id":"","timestamp":"'
            + iso_ns(time.time_ns())
            + '","sequence_num":'
            + str(conn.seq)
            + ',"events":'
            + payload.events_json
            + payload.extra
            + "}"
        )
        conn.seq += 1
        return text
