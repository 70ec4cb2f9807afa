"""The project's own local Coinbase exchange: a real WebSocket server on 127.0.0.1.

It speaks both public level-2 protocols on one port, chosen by URL path:
``/advanced-trade`` (and below) is the Advanced Trade feed, every other path the Exchange
feed (``ws-feed``). Books come from :mod:`local_exchange.market` (the TRUE book, which
tests compare against) or, with ``recording=``, from a recorded session replayed
(:mod:`local_exchange.replay`). Subscriptions replies carry ``"local_exchange": "sim"`` or
``"local_exchange": "replay"`` (see :mod:`local_exchange.protocol`).

Why a server and not mocks: every socket test, the offline demo (``ORDERBOOK_FEED=sim``) and
the CLI use the same code path as production against a real socket, including multi-MB
snapshot frames, slow readers, abrupt drops and malformed frames (:mod:`local_exchange.faults`).

Design: one asyncio loop on a daemon thread. This module is the lifecycle, the connection
handler and the public API (ground truth, faults), and delegates the rest: requests and
encoders to the connection's protocol object, queues and subscriptions to
:mod:`local_exchange.connections`, the clocks to :mod:`local_exchange.loops`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Self

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from coinbase.feeds import ADVANCED_TRADE, DEFAULT_PRODUCTS, EXCHANGE, PROTOCOLS
from common import validation
from local_exchange.advanced_trade_protocol import AdvancedTradeProtocol
from local_exchange.config import ExchangeConfig
from local_exchange.connections import Connection, Registry, Stats, send_loop
from local_exchange.exchange_protocol import ExchangeProtocol
from local_exchange.faults import Faults, check_kinds
from local_exchange.loops import Heartbeats, MarketLoop, SharedMarket
from local_exchange.market import Market
from local_exchange.protocol import Protocol, protocol_name_for_path
from local_exchange.replay import ReplayServer

log = logging.getLogger("local_exchange")


class LocalExchange:
    """A local Coinbase (Exchange + Advanced Trade level-2 feeds) with a true book and faults.

    (About 310 lines: the public API of the exchange, one thin method per fault and
    query, each handing its work to the module that owns it.)

    ``LocalExchange(products, depth=..., rate=..., seed=..., ...)``: the keywords are the
    fields of :class:`~local_exchange.config.ExchangeConfig` (or pass ``config=``).
    ``start()`` runs it on its own thread; ``url()`` gives the address; ``true_book()`` /
    ``true_top()`` the ground truth; the fault methods break the feed on purpose. With
    ``recording=`` it serves a recording instead (no true book: ``true_book`` raises).
    """

    def __init__(
        self,
        products: Sequence[str] = DEFAULT_PRODUCTS,
        *,
        config: ExchangeConfig | None = None,
        **options: Any,
    ) -> None:
        if config is None:
            config = ExchangeConfig(products=products, **options)
        elif options:
            raise TypeError("pass either config= or keyword options, not both")
        self.config = config
        self._stats = Stats()
        self._market: SharedMarket | None = None
        self._replay: ReplayServer | None = None
        if config.recording is not None:
            self._replay = ReplayServer(
                config.recording, config.replay_speed, self._stats, config.announce
            )
            self._products = self._replay.products
        else:
            self._market = SharedMarket(
                Market(
                    list(config.products),
                    depth=config.depth,
                    rate=config.rate,
                    changes_per_batch=config.changes_per_batch,
                    seed=config.seed,
                    depth_override=config.snapshot_depth_override,
                )
            )
            self._products = config.products
        self._registry = Registry(
            self._products, self._market.copy_book if self._market else None
        )
        self._protocols: dict[str, Protocol] = {
            EXCHANGE: ExchangeProtocol(
                self._registry, config.marker, config.credentials, self._stats
            ),
            ADVANCED_TRADE: AdvancedTradeProtocol(
                self._registry, config.marker, config.max_l2_streams
            ),
        }
        self._faults = Faults(self._registry, self._stats)
        self._market_loop = (
            MarketLoop(self._market, self._registry, config.rate)
            if self._market
            else None
        )
        self._heartbeats = Heartbeats(
            self._registry, config.heartbeat_interval, self._market
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port = 0
        self._stopped = False

    def __repr__(self) -> str:
        return f"LocalExchange({self.config.mode}, products={list(self._products)}, port={self._port})"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalExchange:
        """Start the server thread; returns once it is listening (raises if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("LocalExchange.start() called twice")
        self._thread = threading.Thread(
            target=self._run_thread, name="local-exchange", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise RuntimeError(
                f"local exchange failed to start: {self._startup_error}"
            ) from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and stop the thread. Safe to call twice."""
        if self._stopped or self._thread is None:
            self._stopped = True
            return
        self._stopped = True
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        self._thread.join(timeout=timeout)

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

    @property
    def level2_auth(self) -> bool:
        """True when level2 subscribes can be signed (credentials configured)."""
        return self.config.credentials is not None

    def url(self, protocol: str = EXCHANGE) -> str:
        protocol = validation.choice("protocol", protocol, PROTOCOLS)
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self._port}{self._protocols[protocol].path}"

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
            self.config.host,
            self.config.port,
            compression="deflate" if self.config.compression else None,
            ping_interval=None,
            max_queue=64,
        )
        self._port = next(iter(server.sockets)).getsockname()[1]
        background = [asyncio.create_task(self._heartbeats.run())]
        if self._market_loop is not None:
            background.append(asyncio.create_task(self._market_loop.run()))
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            for task in background:
                task.cancel()
            server.close(close_connections=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

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

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws: ServerConnection) -> None:
        name = protocol_name_for_path(ws.request.path if ws.request else "/")
        conn = Connection(ws, self._protocols[name])
        self._registry.conns.add(conn)
        self._stats.bump("connections_accepted")
        self._stats.bump("connections_open")
        sender = asyncio.create_task(
            send_loop(conn, self._stats, self._faults.silent_for)
        )
        try:
            if await self._first_subscribe(conn):
                while True:
                    self._on_message(conn, await ws.recv())
                    await asyncio.sleep(0)  # let big snapshots start formatting
        except ConnectionClosed:
            pass
        finally:
            self._registry.forget(conn)
            if conn.overflowed:
                self._stats.bump("slow_consumer_drops")
            sender.cancel()
            for task in conn.tasks:
                task.cancel()
            self._stats.bump("connections_open", -1)

    async def _first_subscribe(self, conn: Connection) -> bool:
        """Read until a subscribe arrives; a client silent that long is closed (1008)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.subscribe_timeout
        while not conn.subscribe_seen:
            try:
                raw = await asyncio.wait_for(
                    conn.ws.recv(), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                await conn.ws.close(1008, "no subscribe received in time")
                return False
            self._on_message(conn, raw)
            await asyncio.sleep(0)
        return True

    def _on_message(self, conn: Connection, raw: str | bytes) -> None:
        protocol = conn.protocol
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            conn.put("error", protocol.parse_error())
            return
        kind = msg.get("type")
        if kind not in ("subscribe", "unsubscribe"):
            conn.put("error", protocol.invalid_type(kind))
            return
        subscribe = kind == "subscribe"
        self._stats.bump("subscribes" if subscribe else "unsubscribes")
        if subscribe:
            conn.subscribe_seen = True
            reason = self._faults.take_fail_next()
            if reason is not None:
                conn.put("error", protocol.error(reason))
                return
        handler = self._replay or protocol
        handler.handle(conn, msg, subscribe=subscribe)

    # ------------------------------------------------------------------ ground truth
    def _need_market(self) -> SharedMarket:
        if self._market is None:
            raise RuntimeError(
                "no simulated market: this LocalExchange replays a recording"
            )
        return self._market

    def true_top(self, product_id: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        shared = self._need_market()
        with shared.lock:
            return shared.market.top(product_id)

    def true_book(
        self, product_id: str
    ) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        shared = self._need_market()
        with shared.lock:
            return shared.market.book(product_id)

    @property
    def stats(self) -> dict:
        return self._stats.snapshot()

    # ------------------------------------------------------------------ market control
    def pause_market(self) -> None:
        """Stop generating; on return every generated change is in every send queue."""
        if self._market_loop is not None:
            self._on_loop(lambda: setattr(self._market_loop, "paused", True))

    def resume_market(self) -> None:
        if self._market_loop is not None:
            self._on_loop(lambda: setattr(self._market_loop, "paused", False))

    # ------------------------------------------------------------------ faults
    def drop_connections(self) -> None:
        """Abort every client connection (TCP reset style: no close frame)."""
        self._on_loop(self._faults.drop)

    def go_silent(self, seconds: float) -> None:
        """Send nothing at all, to anyone, for ``seconds``; queued frames follow afterwards."""
        seconds = validation.number("seconds", seconds, high=3600, low_open=False)
        self._on_loop(lambda: self._faults.silence(seconds))

    def send_malformed(
        self, count: int = 1, kinds: Sequence[str] | None = None
    ) -> None:
        """Queue ``count`` rounds of each malformed kind (all of ``MALFORMED_KINDS`` when
        ``kinds`` is None) on every subscribed connection; see :mod:`local_exchange.faults`."""
        count = validation.integer("count", count, 1, 100_000)
        chosen = check_kinds(kinds)
        restate = self._market.restate if self._market else lambda _: []
        self._on_loop(lambda: self._faults.malformed(count, chosen, restate))

    def skip_sequence(self) -> None:
        """The next Advanced Trade frame on each open connection skips one sequence_num."""
        self._on_loop(self._faults.skip_sequence)

    def fail_next_subscribe(self, reason: str) -> None:
        """The next subscribe (any connection) is refused with this reason."""
        if not isinstance(reason, str) or not reason:
            raise validation.refuse("reason", reason, "a non-empty string")
        self._on_loop(lambda: self._faults.arm_fail_next(reason))
