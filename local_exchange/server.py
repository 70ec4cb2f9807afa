"""The project's own local Coinbase exchange: a real WebSocket server on 127.0.0.1.

It speaks both public level-2 protocols on one port, chosen by URL path:
``/advanced-trade`` (and below) is the Advanced Trade feed, every other path the Exchange
feed (``ws-feed``). Books come from :mod:`local_exchange.market` (the TRUE book, which
tests compare against) or, with ``recording=``, from a recorded session replayed
(:mod:`local_exchange.replay`). Subscriptions replies carry ``"local_exchange": "sim"`` or
``"local_exchange": "replay"`` (see :mod:`local_exchange.protocol`). Plain HTTP GETs of
Coinbase's REST book paths and of ``/_local/`` (request log, faults) on the same port are
answered from websockets' ``process_request`` hook (:mod:`local_exchange.rest`).

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
import email.utils
import http
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from coinbase.feeds import ADVANCED_TRADE, DEFAULT_PRODUCTS, EXCHANGE, PROTOCOLS
from common import validation
from local_exchange import rest
from local_exchange.advanced_trade_protocol import AdvancedTradeProtocol
from local_exchange.config import ExchangeConfig
from local_exchange.connections import Connection, Registry, Stats, send_loop
from local_exchange.exchange_protocol import ExchangeProtocol
from local_exchange.faults import (
    CORRUPT_HOLD_DEFAULT,
    CORRUPT_HOLD_MAX,
    CORRUPT_KINDS,
    Corruption,
    Faults,
    check_kinds,
    wrong_units,
)
from local_exchange.loops import Heartbeats, MarketLoop, SharedMarket
from local_exchange.market import Market, format_size
from local_exchange.protocol import Protocol, protocol_name_for_path
from local_exchange.replay import ReplayServer

log = logging.getLogger("local_exchange")


class LocalExchange:
    """A local Coinbase (Exchange + Advanced Trade level-2 feeds) with a true book and faults.

    (About 480 lines: the public API of the exchange, one thin method per fault and
    query, each handing its work to the module that owns it, and the plain-HTTP routing
    of the REST books, :mod:`local_exchange.rest`.)

    ``LocalExchange(products, depth=..., rate=..., seed=..., ...)``: the keywords are the
    fields of :class:`~local_exchange.config.ExchangeConfig` (or pass ``config=``).
    ``start()`` runs it on its own thread; ``url()`` gives a feed's address and
    ``rest_url()`` the REST books'; ``true_book()`` / ``true_top()`` the ground truth;
    ``rest_requests()`` the REST request log; the fault methods break the feed on purpose.
    With ``recording=`` it serves a recording instead (no true book: ``true_book``
    raises, REST books answer 501).
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
            MarketLoop(self._market, self._registry, config.rate, config.socket_lag)
            if self._market
            else None
        )
        self._rest_log = rest.RestLog()
        self._rest_faults = rest.RestFaults()
        self._corruptions = 0
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

    def rest_url(self) -> str:
        """``http://HOST:PORT``: the base of the REST books and the ``/_local/`` endpoints
        (the feeds' port)."""
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

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
            process_request=self._process_request,
            # Above a REST ``timeout`` fault's longest hold (the handshake timeout
            # covers process_request).
            open_timeout=rest.TIMEOUT_HOLD_MAX + 10,
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

    # ------------------------------------------------------------------ plain HTTP (REST)
    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """websockets' hook: a WebSocket upgrade goes on; a REST or ``/_local/`` GET is
        answered here (see :mod:`local_exchange.rest`); any other plain GET gets
        websockets' own 426."""
        path = request.path
        upgrade = ",".join(request.headers.get_all("Upgrade")).lower()
        if "websocket" in upgrade or not rest.is_http(path):
            return None
        if urlsplit(path).path.startswith(rest.CONTROL_PREFIX):
            reply = self._control(path)
        else:
            reply = await self._rest_book(connection, path)
        return _response(reply)

    async def _rest_book(self, connection: ServerConnection, path: str) -> rest.Reply:
        arrived = time.monotonic()
        parsed = rest.parse_book_request(path, self._registry.is_product)
        if isinstance(parsed, rest.Reply):
            reply = parsed
        elif self._market is None:
            reply = rest.exchange_error(
                501, "this local exchange replays a recording: it has no REST book"
            )
        else:
            fault = self._rest_faults.take()
            if fault is not None:
                kind, hold = fault
                self._stats.count("faults", f"rest_error:{kind}")
                reply = rest.fault_reply(kind, parsed.dialect)
                self._rest_log.record(arrived, path, reply.status)
                if kind == "timeout":
                    await self._hold(connection, hold)
                return reply
            reply = await self._book_reply(parsed)
        self._rest_log.record(arrived, path, reply.status)
        return reply

    async def _book_reply(self, req: rest.BookRequest) -> rest.Reply:
        """The book copied now (ahead of the socket), formatted off the loop."""
        assert self._market is not None
        bids, asks, decimals, sequence = self._market.rest_view(
            req.product_id, req.levels
        )
        now_ns = time.time_ns()
        loop = asyncio.get_running_loop()
        if req.dialect == "exchange":
            return await loop.run_in_executor(
                None,
                rest.exchange_book,
                bids,
                asks,
                decimals,
                req.levels,
                sequence,
                now_ns,
            )
        return await loop.run_in_executor(
            None, rest.at_book, req.product_id, bids, asks, decimals, req.levels, now_ns
        )

    async def _hold(self, connection: ServerConnection, seconds: float) -> None:
        """Wait until ``seconds`` pass, the client hangs up or the exchange stops."""
        assert self._stop_event is not None
        stopping = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait(
                [connection.connection_lost_waiter, stopping],
                timeout=seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stopping.cancel()

    def _control(self, path: str) -> rest.Reply:
        """``/_local/rest-requests`` (the log), ``/_local/corrupt?product_id=&kind=&hold=``,
        ``/_local/rest-errors?kind=&count=&hold=``: for an exchange run as a process."""
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        name = parts.path[len(rest.CONTROL_PREFIX) :].rstrip("/")
        try:
            if name == "rest-requests":
                return rest.json_reply(200, self._rest_log.as_json())
            if name == "corrupt":
                hold = float(query.get("hold", CORRUPT_HOLD_DEFAULT))
                done = self.corrupt(
                    query.get("product_id", ""), query.get("kind", "skip"), hold=hold
                )
                return rest.json_reply(200, done.as_json())
            if name == "rest-errors":
                count = int(query.get("count", "1"))
                hold = float(query.get("hold", rest.TIMEOUT_HOLD_DEFAULT))
                self.rest_errors(query.get("kind", ""), count, hold=hold)
                return rest.json_reply(200, {"armed": self._rest_faults.pending()})
        except (ValueError, RuntimeError) as exc:
            return rest.json_reply(400, {"message": str(exc)})
        return rest.json_reply(404, {"message": "NotFound"})

    def rest_requests(self) -> list[tuple[float, str, int]]:
        """Every REST book request so far: ``(time.monotonic() at arrival, path,
        status)``, oldest first (the last 100,000; ``/_local/`` requests are not in it).
        A ``timeout`` fault's request is logged at arrival with the 504 it ends with."""
        return self._rest_log.entries()

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

    def open_frames(self) -> tuple[int, int]:
        """``(queued, sent)``: frames queued for and written to the connections open
        now, summed. Equal when nothing waits to be sent; a test compares ``sent`` with
        what its clients received on their live connections to know, exactly, when all
        was read (instead of waiting for a quiet second: tests/support/source_partitions.py).
        Closed connections leave the sums, as they leave the clients'."""

        def sums() -> tuple[int, int]:
            conns = self._registry.conns
            return sum(c.queued for c in conns), sum(c.sent for c in conns)

        return self._on_loop(sums)

    # ------------------------------------------------------------------ market control
    def pause_market(self) -> None:
        """Stop generating; on return every generated change is in every send queue."""
        if self._market_loop is not None:
            self._on_loop(self._market_loop.pause)

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

    def end_silence(self) -> None:
        """End a silence now: queued frames follow within :data:`SILENCE_STEP` s. A test
        silences the exchange with a generous bound and ends it once it saw what the
        silence was for, instead of waiting out a fixed window."""
        self._on_loop(self._faults.end_silence)

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

    def corrupt(
        self, product_id: str, kind: str = "skip", *, hold: float = CORRUPT_HOLD_DEFAULT
    ) -> Corruption:
        """Silently corrupt one shallow level of ``product_id`` for every client subscribed
        now; returns what was injected. See :mod:`local_exchange.faults` (``corrupt``)."""
        shared = self._need_market()
        product_id = validation.product_id("product_id", product_id)
        if not self._registry.is_product(product_id):
            raise validation.refuse(
                "product_id", product_id, "one of " + ", ".join(self._products)
            )
        kind = validation.choice("kind", kind, CORRUPT_KINDS)
        hold = validation.number("hold", hold, high=CORRUPT_HOLD_MAX)
        hold_batches = max(1, round(hold * self.config.rate))

        def inject() -> Corruption:
            self._corruptions += 1
            rng = random.Random(
                f"{self.config.seed}/{product_id}/corrupt/{self._corruptions}"
            )
            side, price, old, new = shared.corrupt_level(product_id, hold_batches, rng)
            sent = None
            if kind == "wrong_size":
                sent = wrong_units(old, new)
                assert self._market_loop is not None
                self._market_loop.inject(product_id, [(side, price, format_size(sent))])
            self._stats.count("faults", f"corrupt:{kind}")
            return Corruption(
                product_id,
                kind,
                side,
                Decimal(price),
                _size(new),
                None if sent is None else _size(sent),
                _size(old if sent is None else sent),
            )

        return self._on_loop(inject)

    def rest_errors(
        self, kind: str, count: int = 1, *, hold: float = rest.TIMEOUT_HOLD_DEFAULT
    ) -> None:
        """The next ``count`` REST book requests fail with ``kind`` (429, 500, timeout:
        held ``hold`` s or until the client hangs up, then 504; not_json: a 200 HTML
        page). Armed errors queue up in order."""
        kind = validation.choice("kind", str(kind), rest.REST_ERROR_KINDS)
        count = validation.integer("count", count, 1, 100_000)
        hold = validation.number("hold", hold, high=rest.TIMEOUT_HOLD_MAX)
        self._rest_faults.arm(kind, count, hold)

    def fail_next_subscribe(self, reason: str) -> None:
        """The next subscribe (any connection) is refused with this reason."""
        if not isinstance(reason, str) or not reason:
            raise validation.refuse("reason", reason, "a non-empty string")
        self._on_loop(lambda: self._faults.arm_fail_next(reason))


def _size(units: int) -> Decimal:
    """The size as the feed prints it (``"0.5"``, not ``"0.50000000"``)."""
    return Decimal(format_size(units))


def _response(reply: rest.Reply) -> Response:
    status = http.HTTPStatus(reply.status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(reply.body))),
            ("Content-Type", reply.content_type),
        ]
    )
    return Response(status.value, status.phrase, headers, reply.body)
