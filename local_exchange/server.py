"""The project's own local Coinbase exchange: a real WebSocket server on 127.0.0.1.

It speaks both public level-2 protocols byte for byte (see shared/coinbase-protocol.md) on one
port, chosen by URL path: ``/advanced-trade`` (and below) is the Advanced Trade feed, every
other path is the Exchange feed (``ws-feed``). Books come from :mod:`sim_market` (the TRUE
book, which tests compare against) or, with ``recording=``, from a recorded session replayed.

Why a server and not mocks: every socket test, the offline demo (``ORDERBOOK_FEED=sim``) and
the CLI use the same code path as production against a real socket, including multi-MB
snapshot frames, slow readers, abrupt drops and malformed frames (fault injection below).

Design: one asyncio loop on a daemon thread. The market task generates one batch per product
every ``1/rate`` s and hands each batch, synchronously, to every subscribed connection's own
send queue (one sender task per connection, so a slow client stalls nobody else). Snapshots
are copied and subscribers registered in the same synchronous step, so a snapshot is always
consistent with the changes queued after it; formatting a snapshot (up to ~5 MB of JSON) runs
in a worker thread. Advanced Trade envelopes get their ``sequence_num`` when they are sent, so
the counter is per connection across channels and contiguous from 0.

Run ``python coinbase_sim.py --help`` for the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import heapq
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Self

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from events import PRODUCT_ID
from local_exchange.market import (
    ASK,
    BID,
    Market,
    RawChange,
    RawLevel,
    format_levels,
    format_size,
    format_ticks,
)
from recording.format import Recording, RecordingError

log = logging.getLogger("coinbase_sim")

EXCHANGE = "exchange"
ADVANCED_TRADE = "advanced-trade"
ADVANCED_TRADE_PATH = "/advanced-trade"
PROTOCOLS = (EXCHANGE, ADVANCED_TRADE)


LEVEL2_AUTH_REASON = (
    "level2, level3, and full channels now require authentication. "
    "https://docs.cloud.coinbase.com/exchange/docs/websocket-auth"
)
TOO_MANY_L2_STREAMS = "too many L2 streams requested in a single session"
AUTH_MAX_SKEW_S = 30.0

EXCHANGE_CHANNELS = ("level2_batch", "level2", "heartbeat")
_EXCHANGE_L2 = ("level2_batch", "level2")
_EX_SIDE = {BID: "buy", ASK: "sell"}
_AT_SIDE = {BID: "bid", ASK: "offer"}

MALFORMED_KINDS = (
    "bad_json",
    "missing_fields",
    "non_numeric_size",
    "negative_size",
    "malformed_size",
    "bad_timestamp",
    "unknown_type",
    "wrong_types",
)

MAX_BACKLOG = 100_000
"""Frames a connection may have queued unsent before it is dropped as a slow consumer."""


# --------------------------------------------------------------------------- time formats
def iso_us(ns: int) -> str:
    """``2026-08-25T03:35:57.300000Z``: Exchange ``time`` and AT ``event_time``."""
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem // 1000:06d}Z"


def iso_ns(ns: int) -> str:
    """``2026-08-09T21:05:48.629706932Z``: the AT envelope ``timestamp`` (9 digits)."""
    sec, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rem:09d}Z"


def _go_time(ns: int, uptime_s: float) -> str:
    """The AT heartbeat ``current_time`` (Go's ``time.Time.String()`` with monotonic part)."""
    sec, rem = divmod(ns, 1_000_000_000)
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
        + f".{rem:09d} +0000 UTC m=+{uptime_s:.9f}"
    )


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# --------------------------------------------------------------------------- auth
def sign_level2(secret_b64: str, timestamp: str) -> str:
    """The Exchange WebSocket signature: base64(HMAC-SHA256(b64decode(secret), ts+GET+path))."""
    key = base64.b64decode(secret_b64)
    msg = f"{timestamp}GET/users/self/verify".encode()
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class _Credentials:
    api_key: str
    api_secret: str
    passphrase: str

    def __repr__(self) -> str:  # never leak secrets through a repr
        return "_Credentials(<redacted>)"


def _check_level2_auth(msg: dict, creds: _Credentials | None, now: float) -> str | None:
    """None when the subscribe is correctly signed, else the error reason (no secrets)."""
    fields = ("signature", "key", "passphrase", "timestamp")
    present = [f for f in fields if msg.get(f) not in (None, "")]
    if creds is None or not present:
        return LEVEL2_AUTH_REASON
    missing = [f for f in fields if f not in present]
    if missing:
        return f"missing authentication field(s): {', '.join(missing)}"
    key, passphrase, signature, ts = (
        msg[f] for f in ("key", "passphrase", "signature", "timestamp")
    )
    if not all(isinstance(v, str) for v in (key, passphrase, signature)):
        return "authentication fields key, passphrase and signature must be strings"
    if isinstance(ts, bool) or not isinstance(ts, (str, int, float)):
        return "invalid timestamp"
    ts_text = ts if isinstance(ts, str) else str(ts)
    try:
        ts_value = float(ts_text)
    except ValueError:
        return "invalid timestamp"
    if not hmac.compare_digest(key.encode(), creds.api_key.encode()):
        return "invalid API key"
    if abs(now - ts_value) > AUTH_MAX_SKEW_S:
        return "request timestamp expired"
    if not hmac.compare_digest(passphrase.encode(), creds.passphrase.encode()):
        return "invalid passphrase"
    expected = sign_level2(creds.api_secret, ts_text)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "invalid signature"
    return None


# --------------------------------------------------------------------------- connections
@dataclass(eq=False, slots=True)
class _AtFrame:
    """An Advanced Trade payload; the envelope (timestamp, sequence_num) is added on send."""

    channel: str
    events_json: str


class _Conn:
    """One client connection: its protocol, subscriptions and private send queue."""

    __slots__ = (
        "at_heartbeats",
        "max_backlog",
        "overflowed",
        "protocol",
        "queue",
        "seq",
        "skip_pending",
        "subs",
        "subscribe_seen",
        "tasks",
        "ws",
    )

    def __init__(self, ws: ServerConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.subs: dict[
            str, list[str]
        ] = {}  # channel -> product ids, in subscribe order
        self.at_heartbeats = False
        self.seq = 0
        self.skip_pending = False
        self.subscribe_seen = False
        self.tasks: list[asyncio.Task] = []
        self.max_backlog = MAX_BACKLOG
        self.overflowed = False

    def put(self, label: str, payload: Any) -> None:
        """Queue a frame; a client this far behind is cut off, as Coinbase does
        (``ErrSlowConsume``), instead of growing memory without bound."""
        if self.overflowed:
            return
        if self.queue.qsize() >= self.max_backlog:
            self.overflowed = True
            self.ws.transport.abort()
            return
        self.queue.put_nowait((label, payload))

    def l2_products(self) -> list[str]:
        seen: dict[str, None] = {}
        for channel in ("level2_batch", "level2"):
            seen.update(dict.fromkeys(self.subs.get(channel, ())))
        return list(seen)


def _protocol_for_path(path: str) -> str:
    path = path.split("?", 1)[0].rstrip("/")
    if path == ADVANCED_TRADE_PATH or path.startswith(ADVANCED_TRADE_PATH + "/"):
        return ADVANCED_TRADE
    return EXCHANGE


def _ex_error(reason: str, message: str = "Failed to subscribe") -> str:
    return _dumps({"type": "error", "message": message, "reason": reason})


def _at_error(message: str) -> str:
    return _dumps({"type": "error", "message": message})


def _build_exchange_snapshot(
    pid: str, bids: list[RawLevel], asks: list[RawLevel], decimals: int
) -> str:
    return _dumps(
        {
            "type": "snapshot",
            "product_id": pid,
            "asks": format_levels(asks, decimals),
            "bids": format_levels(bids, decimals),
        }
    )


def _build_at_snapshot(
    pid: str, bids: list[RawLevel], asks: list[RawLevel], decimals: int, event_time: str
) -> _AtFrame:
    updates = [
        {"side": "bid", "event_time": event_time, "price_level": p, "new_quantity": s}
        for p, s in format_levels(bids, decimals)
    ]
    updates += [
        {"side": "offer", "event_time": event_time, "price_level": p, "new_quantity": s}
        for p, s in format_levels(asks, decimals)
    ]
    return _AtFrame(
        "l2_data", _dumps([{"type": "snapshot", "product_id": pid, "updates": updates}])
    )


# --------------------------------------------------------------------------- validation
def _refuse(name: str, allowed: str, value: Any) -> ValueError:
    shown = "<redacted>" if name in ("api_secret", "passphrase") else repr(value)
    return ValueError(f"{name} must be {allowed}, got {shown}")


def _check_number(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = True
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(name, f"a number in {'(' if lo_open else '['}{lo}, {hi}]", value)
    if (value <= lo if lo_open else value < lo) or value > hi:
        raise _refuse(name, f"a number in {'(' if lo_open else '['}{lo}, {hi}]", value)
    return float(value)


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _refuse(name, f"an int in {lo}..{hi}", value)
    return value


# --------------------------------------------------------------------------- the exchange
class LocalExchange:
    """A local Coinbase (Exchange + Advanced Trade level-2 feeds) with a true book and faults.

    ``start()`` runs it on its own thread; ``url()`` gives the address; ``true_book()`` /
    ``true_top()`` the ground truth; the fault methods break the feed on purpose. Extra
    keyword options beyond the common ones: ``subscribe_timeout`` (seconds a client has to
    send its first subscribe, 5 like Coinbase) and ``compression`` (offer permessage-deflate).

    Replay mode (``recording=``): the products are the recording's (``products`` and the
    market settings are ignored); a subscribe for P on the recording's protocol path gets P's
    recorded frames verbatim, in order, paced by ``replay_speed`` (None/0 = at once); then the
    connection stays open and silent. There is no true book (``true_book`` raises).

    Errors that Coinbase documents differently per case are chosen here: an invalid product
    gets one error each while the valid ones in the request are subscribed; a level2 auth
    failure refuses the whole request; a client more than ``MAX_BACKLOG`` frames behind is
    dropped (like ``ErrSlowConsume``).
    """

    def __init__(
        self,
        products: Sequence[str] = ("BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"),
        *,
        depth: int = 1000,
        rate: float = 20.0,
        changes_per_batch: int = 5,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        api_secret: str | None = None,
        passphrase: str | None = None,
        heartbeat_interval: float = 1.0,
        snapshot_depth_override: dict[str, int] | None = None,
        max_l2_streams: int = 16,
        recording: str | os.PathLike | None = None,
        replay_speed: float | None = None,
        subscribe_timeout: float = 5.0,
        compression: bool = False,
    ) -> None:
        if (
            isinstance(products, str)
            or not isinstance(products, Sequence)
            or not products
        ):
            raise _refuse(
                "products", "a non-empty list of product ids like 'BTC-USD'", products
            )
        bad = [
            p for p in products if not isinstance(p, str) or not PRODUCT_ID.fullmatch(p)
        ]
        if bad:
            raise _refuse(
                "products", "product ids like 'BTC-USD' (uppercase BASE-QUOTE)", bad
            )
        if len(set(products)) != len(products):
            raise _refuse("products", "a list without repeats", list(products))
        self._rate = _check_number("rate", rate, 0, 10_000)
        self._heartbeat_interval = _check_number(
            "heartbeat_interval", heartbeat_interval, 0, 3600
        )
        self._subscribe_timeout = _check_number(
            "subscribe_timeout", subscribe_timeout, 0, 3600
        )
        self._max_l2_streams = _check_int("max_l2_streams", max_l2_streams, 1, 10_000)
        self._port_requested = _check_int("port", port, 0, 65535)
        if not isinstance(host, str) or not host:
            raise _refuse("host", "a host name or IP address", host)
        self._host = host
        if replay_speed is not None:
            _check_number("replay_speed", replay_speed, 0, 1e9, lo_open=False)
        self._replay_speed = float(replay_speed) if replay_speed else None
        creds = (api_key, api_secret, passphrase)
        if any(v is not None for v in creds):
            if not all(isinstance(v, str) and v for v in creds):
                raise ValueError(
                    "api_key, api_secret and passphrase must be given together, as non-empty strings"
                )
            try:
                base64.b64decode(api_secret, validate=True)  # type: ignore[arg-type]
            except (binascii.Error, ValueError):
                raise _refuse(
                    "api_secret", "base64 text (as Coinbase issues it)", api_secret
                ) from None
            self._creds: _Credentials | None = _Credentials(
                api_key, api_secret, passphrase
            )  # type: ignore[arg-type]
        else:
            self._creds = None
        self._compression = bool(compression)

        self._recording: Recording | None = None
        self._market: Market | None = None
        if recording is not None:
            try:
                self._recording = Recording.open(recording)
            except RecordingError as exc:
                raise ValueError(str(exc)) from None
            self._replay_by_product: dict[str, list[tuple[int, int, str]]] = {}
            for i, row in self._recording.records():
                frame, pid = row.get("frame"), row.get("product_id")
                if isinstance(frame, str) and isinstance(pid, str):
                    self._replay_by_product.setdefault(pid, []).append(
                        (int(row.get("t_ns") or 0), i, frame)
                    )
            self._products = tuple(
                dict.fromkeys([*self._recording.products, *self._replay_by_product])
            )
        else:
            self._market = Market(
                list(products),
                depth=depth,
                rate=self._rate,
                changes_per_batch=changes_per_batch,
                seed=seed,
                depth_override=snapshot_depth_override,
            )
            self._products = tuple(products)

        self._lock = threading.Lock()  # guards the market (true book) and the stats
        self._stats: dict[str, Any] = {
            "connections_accepted": 0,
            "connections_open": 0,
            "subscribes": 0,
            "unsubscribes": 0,
            "auth_failures": 0,
            "slow_consumer_drops": 0,
            "frames_sent": {},
            "bytes_sent": 0,
            "faults": {},
        }
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port = 0
        self._stopped = False
        self._conns: set[_Conn] = set()
        # product -> ordered {(conn, channel): None}; channel is the Exchange channel name
        # or "level2" for Advanced Trade.
        self._l2_subs: dict[str, dict[tuple[_Conn, str], None]] = {
            p: {} for p in self._products
        }
        self._hb_subs: dict[str, dict[_Conn, None]] = {p: {} for p in self._products}
        self._paused = False
        self._silent_until = 0.0
        self._fail_next_reason: str | None = None
        self._heartbeat_counter = 0
        self._started_mono = time.monotonic()

    def __repr__(self) -> str:
        mode = "replay" if self._recording else "sim"
        return (
            f"LocalExchange({mode}, products={list(self._products)}, port={self._port})"
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalExchange:
        """Start the server thread; returns once it is listening (raises if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("LocalExchange.start() called twice")
        self._thread = threading.Thread(
            target=self._run_thread, name="coinbase-sim", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise RuntimeError(
                f"local exchange failed to start: {self._startup_error}"
            ) from self._startup_error
        return self

    def stop(self) -> None:
        """Close every connection and stop the thread. Safe to call twice."""
        if self._stopped or self._thread is None:
            self._stopped = True
            return
        self._stopped = True
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def products(self) -> tuple[str, ...]:
        return self._products

    def url(self, protocol: str = EXCHANGE) -> str:
        if protocol not in PROTOCOLS:
            raise _refuse("protocol", f"one of {list(PROTOCOLS)}", protocol)
        host = f"[{self._host}]" if ":" in self._host else self._host
        path = ADVANCED_TRADE_PATH if protocol == ADVANCED_TRADE else "/"
        return f"ws://{host}:{self._port}{path}"

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("local exchange thread crashed")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await serve(
            self._handle,
            self._host,
            self._port_requested,
            compression="deflate" if self._compression else None,
            ping_interval=None,
            max_queue=64,
        )
        self._port = next(iter(server.sockets)).getsockname()[1]
        background = [asyncio.create_task(self._heartbeat_loop())]
        if self._market is not None:
            background.append(asyncio.create_task(self._market_loop()))
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            for task in background:
                task.cancel()
            server.close(close_connections=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    # ------------------------------------------------------------------ cross-thread helpers
    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server loop and wait for it (direct call if not running)."""
        loop = self._loop
        if loop is None or self._stopped or loop.is_closed() or not loop.is_running():
            return fn()
        if threading.current_thread() is self._thread:
            return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return done.result(timeout=30)

    def _count(self, group: str, key: str, n: int = 1) -> None:
        with self._lock:
            bucket = self._stats[group]
            bucket[key] = bucket.get(key, 0) + n

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    # ------------------------------------------------------------------ ground truth
    def _need_market(self) -> Market:
        if self._market is None:
            raise RuntimeError(
                "no simulated market: this LocalExchange replays a recording"
            )
        return self._market

    def true_top(self, product_id: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        market = self._need_market()
        with self._lock:
            return market.top(product_id)

    def true_book(
        self, product_id: str
    ) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        market = self._need_market()
        with self._lock:
            return market.book(product_id)

    @property
    def stats(self) -> dict:
        with self._lock:
            out = dict(self._stats)
            out["frames_sent"] = dict(self._stats["frames_sent"])
            out["faults"] = dict(self._stats["faults"])
            return out

    # ------------------------------------------------------------------ market control
    def pause_market(self) -> None:
        """Stop generating; on return every generated change is in every send queue."""

        def pause() -> None:
            self._paused = True

        self._on_loop(pause)

    def resume_market(self) -> None:
        def resume() -> None:
            self._paused = False

        self._on_loop(resume)

    # ------------------------------------------------------------------ faults
    def drop_connections(self) -> None:
        """Abort every client connection (TCP reset style: no close frame)."""

        def drop() -> int:
            conns = list(self._conns)
            for conn in conns:
                conn.ws.transport.abort()
            return len(conns)

        self._count("faults", "drop_connections", self._on_loop(drop))

    def go_silent(self, seconds: float) -> None:
        """Send nothing at all, to anyone, for ``seconds``; queued frames follow afterwards."""
        seconds = _check_number("seconds", seconds, 0, 3600, lo_open=False)

        def silence() -> None:
            until = time.monotonic() + seconds
            self._silent_until = max(self._silent_until, until)

        self._on_loop(silence)
        self._count("faults", "go_silent")

    def send_malformed(
        self, count: int = 1, kinds: Sequence[str] | None = None
    ) -> None:
        """Queue ``count`` rounds of each malformed kind on every subscribed connection.

        Kinds: see ``MALFORMED_KINDS`` (all of them when ``kinds`` is None). None of them
        changes the true book if a client applies what it can parse: ``bad_timestamp``
        restates the current best bid. On Advanced Trade ``bad_json`` consumes no
        ``sequence_num`` (the number is unreadable), every other kind consumes one.
        """
        count = _check_int("count", count, 1, 100_000)
        chosen = list(MALFORMED_KINDS if kinds is None else kinds)
        unknown = [k for k in chosen if k not in MALFORMED_KINDS]
        if unknown or not chosen:
            raise _refuse(
                "kinds", f"a non-empty list drawn from {list(MALFORMED_KINDS)}", kinds
            )

        def inject() -> None:
            for conn in list(self._conns):
                if not conn.subs and not conn.at_heartbeats:
                    continue
                products = conn.l2_products() or [
                    p for ps in conn.subs.values() for p in ps
                ]
                pid = products[0] if products else self._products[0]
                for _ in range(count):
                    for kind in chosen:
                        conn.put("malformed", self._malformed(conn.protocol, kind, pid))
                        self._count("faults", f"malformed:{kind}")

        self._on_loop(inject)

    def skip_sequence(self) -> None:
        """The next Advanced Trade frame on each open connection skips one sequence_num."""

        def skip() -> int:
            n = 0
            for conn in self._conns:
                if conn.protocol == ADVANCED_TRADE:
                    conn.skip_pending = True
                    n += 1
            return n

        self._count("faults", "skip_sequence", self._on_loop(skip))

    def fail_next_subscribe(self, reason: str) -> None:
        """The next subscribe (any connection) is refused with this reason."""
        if not isinstance(reason, str) or not reason:
            raise _refuse("reason", "a non-empty string", reason)

        def arm() -> None:
            self._fail_next_reason = reason

        self._on_loop(arm)

    def _malformed(self, protocol: str, kind: str, pid: str) -> Any:
        now = time.time_ns()
        t = iso_us(now)
        restate: list[RawChange] = []
        if self._market is not None:
            with self._lock:
                price, size = self._market.raw_top_bid(pid)
                decimals = self._market.price_decimals(pid)
            restate = [(BID, format_ticks(price, decimals), format_size(size))]
        bad_size = {
            "non_numeric_size": "abc",
            "negative_size": "-1.5",
            "malformed_size": "0.-10000",
        }
        if protocol == EXCHANGE:
            top_price = restate[0][1] if restate else "1.00"
            if kind == "bad_json":
                return (
                    '{"type":"l2update","product_id":"' + pid + '","changes":[["buy","1'
                )
            if kind == "missing_fields":
                return _dumps({"type": "l2update", "product_id": pid, "time": t})
            if kind in bad_size:
                return _dumps(
                    {
                        "type": "l2update",
                        "product_id": pid,
                        "changes": [["buy", top_price, bad_size[kind]]],
                        "time": t,
                    }
                )
            if kind == "bad_timestamp":
                changes = [[_EX_SIDE[s], p, z] for s, p, z in restate]
                return _dumps(
                    {
                        "type": "l2update",
                        "product_id": pid,
                        "changes": changes,
                        "time": "0001-01-01T00:00:00.000000Z",
                    }
                )
            if kind == "unknown_type":
                return _dumps({"type": "sim_unknown", "product_id": pid, "time": t})
            return _dumps(
                {
                    "type": "l2update",
                    "product_id": 12345,
                    "changes": {"buy": "1"},
                    "time": 17,
                }
            )
        # Advanced Trade
        top_price = restate[0][1] if restate else "1.00"
        if kind == "bad_json":
            return (
                '{"channel":"l2_data","client_id":"","timestamp":"'
                + iso_ns(now)
                + '","sequence_num":'
            )
        if kind == "missing_fields":
            return _AtFrame("l2_data", _dumps([{"type": "update", "product_id": pid}]))
        if kind in bad_size:
            upd = {
                "side": "bid",
                "event_time": t,
                "price_level": top_price,
                "new_quantity": bad_size[kind],
            }
            return _AtFrame(
                "l2_data",
                _dumps([{"type": "update", "product_id": pid, "updates": [upd]}]),
            )
        if kind == "bad_timestamp":
            updates = [
                {
                    "side": "bid",
                    "event_time": "0001-01-01T00:00:00.000000Z",
                    "price_level": p,
                    "new_quantity": z,
                }
                for _, p, z in restate
            ]
            return _AtFrame(
                "l2_data",
                _dumps([{"type": "update", "product_id": pid, "updates": updates}]),
            )
        if kind == "unknown_type":
            return _AtFrame(
                "sim_unknown", _dumps([{"type": "mystery", "product_id": pid}])
            )
        return _AtFrame(
            "l2_data", _dumps({"type": "update", "product_id": 12345, "updates": "bid"})
        )

    # ------------------------------------------------------------------ connection handling
    async def _handle(self, ws: ServerConnection) -> None:
        protocol = _protocol_for_path(ws.request.path if ws.request else "/")
        conn = _Conn(ws, protocol)
        self._conns.add(conn)
        self._bump("connections_accepted")
        self._bump("connections_open")
        sender = asyncio.create_task(self._sender(conn))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._subscribe_timeout
        try:
            while True:
                if conn.subscribe_seen:
                    raw = await ws.recv()
                else:
                    try:
                        raw = await asyncio.wait_for(
                            ws.recv(), max(0.0, deadline - loop.time())
                        )
                    except TimeoutError:
                        await ws.close(1008, "no subscribe received in time")
                        return
                self._on_message(conn, raw)
                await asyncio.sleep(
                    0
                )  # let big snapshots start formatting between requests
        except ConnectionClosed:
            pass
        finally:
            self._forget(conn)
            if conn.overflowed:
                self._bump("slow_consumer_drops")
            sender.cancel()
            for task in conn.tasks:
                task.cancel()
            self._bump("connections_open", -1)

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        for subs in self._l2_subs.values():
            for key in [k for k in subs if k[0] is conn]:
                del subs[key]
        for subs in self._hb_subs.values():
            subs.pop(conn, None)

    async def _sender(self, conn: _Conn) -> None:
        ws = conn.ws
        try:
            while True:
                label, payload = await conn.queue.get()
                if isinstance(payload, asyncio.Future):
                    payload = await payload
                while (wait := self._silent_until - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if isinstance(payload, _AtFrame):
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
                        + "}"
                    )
                    conn.seq += 1
                else:
                    text = payload
                await ws.send(text)
                with self._lock:
                    frames = self._stats["frames_sent"]
                    frames[label] = frames.get(label, 0) + 1
                    self._stats["bytes_sent"] += len(text)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sender failed; closing the connection")
            conn.ws.transport.abort()

    def _on_message(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            if conn.protocol == EXCHANGE:
                conn.put(
                    "error",
                    _ex_error("Malformed JSON", message="Failed to parse message"),
                )
            else:
                conn.put("error", _at_error("failed to parse message: malformed JSON"))
            return
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            if conn.protocol == EXCHANGE:
                conn.put(
                    "error",
                    _ex_error(
                        f"{kind!r} is not a valid message type",
                        message="Invalid message",
                    ),
                )
            else:
                conn.put(
                    "error",
                    _at_error(
                        f"invalid message type {kind!r}: expected subscribe or unsubscribe"
                    ),
                )
            return
        if kind == "subscribe":
            conn.subscribe_seen = True
            self._bump("subscribes")
            if self._fail_next_reason is not None:
                reason, self._fail_next_reason = self._fail_next_reason, None
                self._count("faults", "fail_next_subscribe")
                conn.put("error", _ex_error(reason))
                return
        else:
            self._bump("unsubscribes")
        if self._recording is not None:
            self._on_replay_subscribe(conn, msg)
        elif conn.protocol == EXCHANGE:
            self._on_exchange_message(conn, msg, subscribe=kind == "subscribe")
        else:
            self._on_at_message(conn, msg, subscribe=kind == "subscribe")

    # ------------------------------------------------------------------ Exchange feed
    def _on_exchange_message(self, conn: _Conn, msg: dict, *, subscribe: bool) -> None:
        root = msg.get("product_ids") or []
        channels = msg.get("channels")
        if not channels:
            conn.put("error", _ex_error("No channels provided"))
            return
        if not isinstance(root, list) or not all(isinstance(p, str) for p in root):
            conn.put("error", _ex_error("product_ids must be a list of strings"))
            return
        if not isinstance(channels, list):
            conn.put("error", _ex_error("channels must be a list"))
            return
        requests: list[tuple[str, list[str]]] = []
        for ch in channels:
            if isinstance(ch, str):
                name, pids = ch, root
            elif isinstance(ch, dict) and isinstance(ch.get("name"), str):
                name, pids = ch["name"], ch.get("product_ids") or root
            else:
                conn.put("error", _ex_error(f"{ch!r} is not a valid channel"))
                return
            if name not in EXCHANGE_CHANNELS:
                conn.put("error", _ex_error(f"{name} is not a valid channel"))
                return
            if not isinstance(pids, list) or not all(isinstance(p, str) for p in pids):
                conn.put(
                    "error",
                    _ex_error(
                        f"product_ids for channel {name} must be a list of strings"
                    ),
                )
                return
            if not pids:
                conn.put(
                    "error",
                    _ex_error(
                        f"You need to specify at least one product ID for channel {name}"
                    ),
                )
                return
            requests.append((name, pids))
        if subscribe and any(name == "level2" for name, _ in requests):
            reason = _check_level2_auth(msg, self._creds, time.time())
            if reason is not None:
                self._bump("auth_failures")
                conn.put("error", _ex_error(reason))
                return
        invalid = dict.fromkeys(
            p for _, pids in requests for p in pids if p not in self._l2_subs
        )
        for pid in invalid:
            conn.put("error", _ex_error(f"{pid} is not a valid product"))
        added: list[tuple[str, str]] = []
        changed = False
        for name, pids in requests:
            current = conn.subs.setdefault(name, [])
            for pid in dict.fromkeys(pids):
                if pid in invalid:
                    continue
                if subscribe and pid not in current:
                    current.append(pid)
                    added.append((name, pid))
                    changed = True
                elif not subscribe and pid in current:
                    current.remove(pid)
                    if name == "heartbeat":
                        self._hb_subs[pid].pop(conn, None)
                    else:
                        self._l2_subs[pid].pop((conn, name), None)
                    changed = True
        if not changed and invalid:
            return
        ack = [
            {"name": name, "product_ids": list(pids), "account_ids": None}
            for name, pids in conn.subs.items()
            if pids
        ]
        conn.put("subscriptions", _dumps({"type": "subscriptions", "channels": ack}))
        for name, pid in added:
            if name == "heartbeat":
                self._hb_subs[pid][conn] = None
            else:
                self._register_l2(conn, name, pid)

    def _register_l2(self, conn: _Conn, channel: str, pid: str) -> None:
        """Copy the book and register the subscriber in one step (no await in between)."""
        assert self._market is not None and self._loop is not None
        with self._lock:
            bids, asks = self._market.raw_levels(pid)
            decimals = self._market.price_decimals(pid)
        self._l2_subs[pid][(conn, channel)] = None
        if conn.protocol == EXCHANGE:
            job = self._loop.run_in_executor(
                None, _build_exchange_snapshot, pid, bids, asks, decimals
            )
        else:
            job = self._loop.run_in_executor(
                None,
                _build_at_snapshot,
                pid,
                bids,
                asks,
                decimals,
                iso_us(time.time_ns()),
            )
        conn.put("snapshot" if conn.protocol == EXCHANGE else "l2_data", job)

    # ------------------------------------------------------------------ Advanced Trade feed
    def _on_at_message(self, conn: _Conn, msg: dict, *, subscribe: bool) -> None:
        channel = msg.get("channel")
        if not isinstance(channel, str) or not channel:
            conn.put(
                "error",
                _at_error("channel is required: one channel per subscribe message"),
            )
            return
        if channel == "heartbeats":
            conn.at_heartbeats = subscribe
            self._at_ack(conn)
            return
        if channel not in ("level2", "l2_data"):
            conn.put(
                "error",
                _at_error(
                    f"unsupported channel {channel!r}; this feed serves level2 and heartbeats"
                ),
            )
            return
        pids = msg.get("product_ids")
        if (
            not isinstance(pids, list)
            or not pids
            or not all(isinstance(p, str) for p in pids)
        ):
            conn.put(
                "error",
                _at_error(
                    "product_ids must be a non-empty list of product ids for channel level2"
                ),
            )
            return
        pids = list(dict.fromkeys(pids))
        invalid = [p for p in pids if p not in self._l2_subs]
        for pid in invalid:
            conn.put(
                "error", _at_error(f"Failed to subscribe: {pid} is not a valid product")
            )
        valid = [p for p in pids if p not in invalid]
        current = conn.subs.setdefault("level2", [])
        if subscribe:
            new = [p for p in valid if p not in current]
            if len(current) + len(new) > self._max_l2_streams:
                conn.put("error", _at_error(TOO_MANY_L2_STREAMS))
                return
            for pid in new:
                current.append(pid)
                self._register_l2(conn, "level2", pid)
        else:
            for pid in valid:
                if pid in current:
                    current.remove(pid)
                    self._l2_subs[pid].pop((conn, "level2"), None)
        if valid:
            self._at_ack(conn)

    def _at_ack(self, conn: _Conn) -> None:
        subs: dict[str, list[str]] = {}
        if conn.subs.get("level2"):
            subs["level2"] = list(conn.subs["level2"])
        if conn.at_heartbeats:
            subs["heartbeats"] = ["heartbeats"]
        conn.put(
            "subscriptions",
            _AtFrame("subscriptions", _dumps([{"subscriptions": subs}])),
        )

    # ------------------------------------------------------------------ replay
    def _on_replay_subscribe(self, conn: _Conn, msg: dict) -> None:
        assert self._recording is not None
        if msg.get("type") != "subscribe":
            return
        expected = self._recording.protocol
        if conn.protocol != expected:
            path = ADVANCED_TRADE_PATH if expected == ADVANCED_TRADE else "/"
            text = (
                f"this server replays a recording of the {expected} feed at path {path}"
            )
            conn.put(
                "error",
                _ex_error(text) if conn.protocol == EXCHANGE else _at_error(text),
            )
            return
        pids: list[str] = []
        if isinstance(msg.get("product_ids"), list):
            pids += [p for p in msg["product_ids"] if isinstance(p, str)]
        for ch in msg.get("channels") or []:
            if isinstance(ch, dict) and isinstance(ch.get("product_ids"), list):
                pids += [p for p in ch["product_ids"] if isinstance(p, str)]
        wanted = []
        for pid in dict.fromkeys(pids):
            if pid not in self._products:
                text = f"{pid} is not a valid product"
                conn.put(
                    "error",
                    _ex_error(text) if conn.protocol == EXCHANGE else _at_error(text),
                )
            elif pid not in conn.subs.setdefault("replay", []):
                conn.subs["replay"].append(pid)
                wanted.append(pid)
        if wanted:
            conn.tasks.append(asyncio.create_task(self._replay(conn, wanted)))

    async def _replay(self, conn: _Conn, pids: list[str]) -> None:
        frames = list(heapq.merge(*(self._replay_by_product.get(p, []) for p in pids)))
        if not frames:
            return
        loop = asyncio.get_running_loop()
        start, t0 = loop.time(), frames[0][0]
        speed = self._replay_speed
        for n, (t_ns, _, text) in enumerate(frames):
            if speed:
                wait = start + (t_ns - t0) / 1e9 / speed - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif n % 1000 == 999:
                await asyncio.sleep(0)
            conn.put("replay", text)

    # ------------------------------------------------------------------ periodic tasks
    async def _market_loop(self) -> None:
        assert self._market is not None
        loop = asyncio.get_running_loop()
        interval = 1.0 / self._rate
        next_t = loop.time()
        while True:
            next_t += interval
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif (
                delay < -5 * interval
            ):  # fell far behind (busy loop): don't burst, resync
                next_t = loop.time()
            if self._paused:
                continue
            self._market_tick()

    def _market_tick(self) -> None:
        assert self._market is not None
        with self._lock:
            batches = [(pid, self._market.next_batch(pid)) for pid in self._products]
        now = time.time_ns()
        for pid, changes in batches:
            subs = self._l2_subs[pid]
            if subs:
                self._dispatch(pid, changes, now, list(subs))

    def _dispatch(
        self,
        pid: str,
        changes: list[RawChange],
        now_ns: int,
        subs: list[tuple[_Conn, str]],
    ) -> None:
        t = iso_us(now_ns)
        batch_frame: str | None = None
        single_frames: list[str] | None = None
        at_frame: _AtFrame | None = None
        for conn, channel in subs:
            if conn.protocol == ADVANCED_TRADE:
                if at_frame is None:
                    updates = [
                        {
                            "side": _AT_SIDE[s],
                            "event_time": t,
                            "price_level": p,
                            "new_quantity": z,
                        }
                        for s, p, z in changes
                    ]
                    at_frame = _AtFrame(
                        "l2_data",
                        _dumps(
                            [{"type": "update", "product_id": pid, "updates": updates}]
                        ),
                    )
                conn.put("l2_data", at_frame)
            elif channel == "level2_batch":
                if batch_frame is None:
                    batch_frame = _dumps(
                        {
                            "type": "l2update",
                            "product_id": pid,
                            "changes": [[_EX_SIDE[s], p, z] for s, p, z in changes],
                            "time": t,
                        }
                    )
                conn.put("l2update", batch_frame)
            else:
                if single_frames is None:
                    single_frames = [
                        _dumps(
                            {
                                "type": "l2update",
                                "product_id": pid,
                                "changes": [[_EX_SIDE[s], p, z]],
                                "time": t,
                            }
                        )
                        for s, p, z in changes
                    ]
                for frame in single_frames:
                    conn.put("l2update", frame)

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += self._heartbeat_interval
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_t = loop.time()
            self._heartbeat_tick()

    def _heartbeat_tick(self) -> None:
        self._heartbeat_counter += 1
        now = time.time_ns()
        t = iso_us(now)
        if self._market is not None:
            for pid, subs in self._hb_subs.items():
                if not subs:
                    continue
                with self._lock:
                    seq = self._market.changes_generated(pid) + 1_000_000
                frame = _dumps(
                    {
                        "type": "heartbeat",
                        "sequence": seq,
                        "last_trade_id": seq // 7,
                        "product_id": pid,
                        "time": t,
                    }
                )
                for conn in subs:
                    conn.put("heartbeat", frame)
        at_conns = [c for c in self._conns if c.at_heartbeats]
        if at_conns:
            events = _dumps(
                [
                    {
                        "current_time": _go_time(
                            now, time.monotonic() - self._started_mono
                        ),
                        "heartbeat_counter": self._heartbeat_counter,
                    }
                ]
            )
            frame = _AtFrame("heartbeats", events)
            for conn in at_conns:
                conn.put("heartbeats", frame)


# --------------------------------------------------------------------------- CLI
def _positive_float(name: str, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value <= hi:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number in (0, {hi}], got {text!r}"
            )
        return value

    return parse


def _int_in(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer in {lo}..{hi}, got {text!r}"
            ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer in {lo}..{hi}, got {text!r}"
            )
        return value

    return parse


def _products_arg(text: str) -> list[str]:
    products = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in products if not PRODUCT_ID.fullmatch(p)]
    if not products or bad:
        raise argparse.ArgumentTypeError(
            f"--products must be a comma-separated list of ids like BTC-USD,ETH-USD; bad: {bad or text!r}"
        )
    return products


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coinbase_sim.py",
        description=(
            "Local Coinbase level-2 exchange: Exchange feed at ws://HOST:PORT/ and Advanced "
            "Trade feed at ws://HOST:PORT/advanced-trade, simulated or replayed from a recording. "
            "level2 auth credentials come from the environment variables COINBASE_SIM_API_KEY, "
            "COINBASE_SIM_API_SECRET (base64) and COINBASE_SIM_PASSPHRASE, never from the command line."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=_int_in("--port", 0, 65535),
        default=8765,
        help="0 = any free port (default 8765)",
    )
    parser.add_argument(
        "--products",
        type=_products_arg,
        default=["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"],
        help="comma-separated product ids (default BTC-USD,ETH-USD,BTC-EUR,ETH-EUR)",
    )
    parser.add_argument(
        "--depth",
        type=_int_in("--depth", 1, 100_000),
        default=1000,
        help="levels per side (default 1000)",
    )
    parser.add_argument(
        "--rate",
        type=_positive_float("--rate", 10_000),
        default=20.0,
        help="batches per second per product (default 20)",
    )
    parser.add_argument(
        "--changes-per-batch",
        type=_int_in("--changes-per-batch", 1, 10_000),
        default=5,
        help="changes per batch (default 5)",
    )
    parser.add_argument(
        "--seed",
        type=_int_in("--seed", -(2**63), 2**63 - 1),
        default=0,
        help="random seed (default 0)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive_float("--heartbeat-interval", 3600),
        default=1.0,
        help="seconds (default 1)",
    )
    parser.add_argument(
        "--max-l2-streams",
        type=_int_in("--max-l2-streams", 1, 10_000),
        default=16,
        help="Advanced Trade level2 products per connection (default 16)",
    )
    parser.add_argument(
        "--replay",
        metavar="PATH",
        help="serve this recording (.jsonl.gz) instead of simulating",
    )
    parser.add_argument(
        "--speed",
        type=_positive_float("--speed", 1e9),
        default=None,
        help="replay pacing: 1 = original, N = N times faster (default: as fast as possible)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.speed is not None and not args.replay:
        parser.error("--speed only applies with --replay PATH")
    if args.replay and not os.path.isfile(args.replay):
        parser.error(
            f"--replay must name an existing recording file, got {args.replay!r}"
        )
    env = os.environ
    try:
        exchange = LocalExchange(
            args.products,
            depth=args.depth,
            rate=args.rate,
            changes_per_batch=args.changes_per_batch,
            seed=args.seed,
            host=args.host,
            port=args.port,
            api_key=env.get("COINBASE_SIM_API_KEY"),
            api_secret=env.get("COINBASE_SIM_API_SECRET"),
            passphrase=env.get("COINBASE_SIM_PASSPHRASE"),
            heartbeat_interval=args.heartbeat_interval,
            max_l2_streams=args.max_l2_streams,
            recording=args.replay,
            replay_speed=args.speed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        exchange.start()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mode = (
        f"replaying {args.replay}"
        if args.replay
        else f"simulating {', '.join(exchange.products)}"
    )
    print(f"local Coinbase exchange {mode}")
    print(f"  Exchange feed:       {exchange.url(EXCHANGE)}")
    print(f"  Advanced Trade feed: {exchange.url(ADVANCED_TRADE)}")
    print(
        f"  level2 auth: {'enabled' if exchange._creds else 'not configured (level2 refused)'}"
    )
    print("Ctrl-C to stop", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    exchange.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
