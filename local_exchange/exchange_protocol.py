"""The Exchange feed (``ws-feed``) dialect, served on every path but ``/advanced-trade``.

Channels ``level2_batch`` (one frame per batch), ``level2`` (one frame per change, signed
subscribe required, see :mod:`local_exchange.auth`) and ``heartbeat`` (per product, once a
heartbeat interval). Requests in both of Coinbase's forms: root ``product_ids`` with channel
names, or per-channel ``{"name", "product_ids"}``. Errors follow Coinbase's shape,
``{"type": "error", "message": "Failed to subscribe", "reason": ...}``; an invalid product
gets one error each while the valid ones in the request are subscribed; a level2 auth
failure refuses the whole request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from coinbase.feeds import EXCHANGE
from local_exchange.auth import Credentials, check_level2_auth
from local_exchange.market import BID, RawChange, RawLevel, format_levels
from local_exchange.protocol import (
    BAD_SIZES,
    BAD_TIMESTAMP,
    MARKER_FIELD,
    Protocol,
    dumps,
    iso_us,
)

if TYPE_CHECKING:
    from local_exchange.connections import Connection, Registry, Stats

CHANNELS = ("level2_batch", "level2", "heartbeat")
SIDE = {BID: "buy", "ask": "sell"}

Request = list[tuple[str, list[str]]]
"""``[(channel, product ids), ...]`` as a subscribe names them."""


def error(reason: str, message: str = "Failed to subscribe") -> str:
    return dumps({"type": "error", "message": message, "reason": reason})


def heartbeat_frame(pid: str, sequence: int, t: str) -> str:
    return dumps(
        {
            "type": "heartbeat",
            "sequence": sequence,
            "last_trade_id": sequence // 7,
            "product_id": pid,
            "time": t,
        }
    )


def _l2update(pid: str, changes: list, t: Any, product_id: Any = None) -> str:
    return dumps(
        {
            "type": "l2update",
            "product_id": pid if product_id is None else product_id,
            "changes": changes,
            "time": t,
        }
    )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(p, str) for p in value)


def parse_request(msg: dict) -> Request | str:
    """The channels and products a request names, or the error reason."""
    root = msg.get("product_ids") or []
    channels = msg.get("channels")
    if not channels:
        return "No channels provided"
    if not _is_str_list(root):
        return "product_ids must be a list of strings"
    if not isinstance(channels, list):
        return "channels must be a list"
    request: Request = []
    for ch in channels:
        if isinstance(ch, str):
            name, pids = ch, root
        elif isinstance(ch, dict) and isinstance(ch.get("name"), str):
            name, pids = ch["name"], ch.get("product_ids") or root
        else:
            return f"{ch!r} is not a valid channel"
        if name not in CHANNELS:
            return f"{name} is not a valid channel"
        if not _is_str_list(pids):
            return f"product_ids for channel {name} must be a list of strings"
        if not pids:
            return f"You need to specify at least one product ID for channel {name}"
        request.append((name, pids))
    return request


class ExchangeProtocol(Protocol):
    name = EXCHANGE
    path = "/"
    snapshot_label = "snapshot"
    update_label = "l2update"

    def __init__(
        self,
        registry: Registry,
        feed: str | None,
        credentials: Credentials | None,
        stats: Stats,
    ) -> None:
        super().__init__(registry, feed)
        self._credentials = credentials
        self._stats = stats

    # -- requests ---------------------------------------------------------------------
    def error(self, text: str) -> str:
        return error(text)

    def parse_error(self) -> str:
        return error("Malformed JSON", message="Failed to parse message")

    def invalid_type(self, kind: Any) -> str:
        return error(f"{kind!r} is not a valid message type", message="Invalid message")

    def handle(self, conn: Connection, msg: dict, *, subscribe: bool) -> None:
        request = parse_request(msg)
        if isinstance(request, str):
            conn.put("error", error(request))
            return
        if subscribe and any(name == "level2" for name, _ in request):
            reason = check_level2_auth(msg, self._credentials, time.time())
            if reason is not None:
                self._stats.bump("auth_failures")
                conn.put("error", error(reason))
                return
        invalid = dict.fromkeys(
            p for _, pids in request for p in pids if not self.registry.is_product(p)
        )
        for pid in invalid:
            conn.put("error", error(f"{pid} is not a valid product"))
        if subscribe:
            added = self._subscribe(conn, request, invalid)
            changed = bool(added)
        else:
            added, changed = [], self._unsubscribe(conn, request, invalid)
        if not changed and invalid:
            return
        conn.put("subscriptions", self.subscriptions(conn))
        for name, pid in added:
            if name == "heartbeat":
                self.registry.subscribe_heartbeat(conn, pid)
            else:
                self.registry.subscribe_l2(conn, name, pid)

    def _subscribe(
        self, conn: Connection, request: Request, invalid: dict
    ) -> list[tuple[str, str]]:
        added = []
        for name, pids in request:
            current = conn.subs.setdefault(name, [])
            for pid in dict.fromkeys(pids):
                if pid not in invalid and pid not in current:
                    current.append(pid)
                    added.append((name, pid))
        return added

    def _unsubscribe(self, conn: Connection, request: Request, invalid: dict) -> bool:
        changed = False
        for name, pids in request:
            current = conn.subs.setdefault(name, [])
            for pid in dict.fromkeys(pids):
                if pid in invalid or pid not in current:
                    continue
                current.remove(pid)
                changed = True
                if name == "heartbeat":
                    self.registry.unsubscribe_heartbeat(conn, pid)
                else:
                    self.registry.unsubscribe_l2(conn, name, pid)
        return changed

    def subscriptions(self, conn: Connection) -> str:
        channels = [
            {"name": name, "product_ids": list(pids), "account_ids": None}
            for name, pids in conn.subs.items()
            if pids
        ]
        reply: dict[str, Any] = {"type": "subscriptions", "channels": channels}
        if self.feed:
            reply[MARKER_FIELD] = self.feed
        return dumps(reply)

    # -- encoders ---------------------------------------------------------------------
    def snapshot(
        self,
        pid: str,
        bids: list[RawLevel],
        asks: list[RawLevel],
        decimals: int,
        now_ns: int,
    ) -> str:
        return dumps(
            {
                "type": "snapshot",
                "product_id": pid,
                "asks": format_levels(asks, decimals),
                "bids": format_levels(bids, decimals),
            }
        )

    def updates(
        self, pid: str, changes: list[RawChange], t: str, channel: str
    ) -> list[str]:
        wire = [[SIDE[s], p, z] for s, p, z in changes]
        if channel == "level2_batch":
            return [_l2update(pid, wire, t)]
        return [_l2update(pid, [change], t) for change in wire]  # level2: one each

    def malformed(
        self, kind: str, pid: str, restate: list[RawChange], now_ns: int
    ) -> str:
        t = iso_us(now_ns)
        if kind == "bad_json":
            return '{"type":"l2update","product_id":"' + pid + '","changes":[["buy","1'
        if kind == "missing_fields":
            return dumps({"type": "l2update", "product_id": pid, "time": t})
        if kind in BAD_SIZES:
            top_price = restate[0][1] if restate else "1.00"
            return _l2update(pid, [["buy", top_price, BAD_SIZES[kind]]], t)
        if kind == "bad_timestamp":
            return _l2update(
                pid, [[SIDE[s], p, z] for s, p, z in restate], BAD_TIMESTAMP
            )
        if kind == "unknown_type":
            return dumps({"type": "sim_unknown", "product_id": pid, "time": t})
        return _l2update(pid, {"buy": "1"}, 17, product_id=12345)  # wrong_types  # type: ignore[arg-type]
