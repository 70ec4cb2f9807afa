"""``ORDERBOOK_DASHBOARD=HOST:PORT``: a web page of every product of this process, live.

One server per process, started by the first sink partition: every worker thread of the
process feeds it (``-w N``), so the page shows every product this process holds. Under
``-p``/``-i`` each process serves its own page (its log says where; a port in use makes
it try the next ones).

The page (``views/static/dashboard.html``, with uPlot vendored beside it, nothing from
the network) shows per product a depth chart (cumulative size against price, both
sides), spread and mid over the last minutes, imbalance, and feed health, pushed over a
WebSocket at ``/ws``; plain HTTP for the page comes from the same port.

The dataflow never waits for a browser: a sink partition only updates the latest state
per product (:class:`views.state.MarketBoard`) and a bounded history. Each client's
sender wakes every ``PUSH_INTERVAL`` and sends what changed since its last message,
built fresh from the latest state; a slow or closed tab only delays its own sender, and
what it missed is conflated, never queued.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import mimetypes
import threading
import time
from collections import deque
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from views.records import SUMMARY, as_record, epoch_seconds, kind, num, spread_bps
from views.state import REPLAY, MarketBoard

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PUSH_INTERVAL = 0.25
"""Seconds between two messages to one client (at most)."""
HISTORY_SECONDS = 600.0
SAMPLE_INTERVAL = 0.25
"""Seconds between two history points of one product (the last one is always sent)."""
RESET_AFTER = 5.0
"""A product's history starts again when its time goes back by more than this."""
DEPTH_LEVELS = 50
PORT_ATTEMPTS = 16
"""Ports tried from the configured one when it is in use (other local processes)."""
FILES = {
    "/": "dashboard.html",
    "/index.html": "dashboard.html",
    "/static/dashboard.js": "dashboard.js",
    "/static/dashboard.css": "dashboard.css",
    "/static/uplot/uPlot.iife.min.js": "uplot/uPlot.iife.min.js",
    "/static/uplot/uPlot.min.css": "uplot/uPlot.min.css",
    "/static/uplot/LICENSE": "uplot/LICENSE",
}
"""Everything the server serves over plain HTTP, and nothing else."""


class History:
    """Per product, (seq, time, mid, spread bps, imbalance) of the last minutes.

    Times are the records' exchange times (the wall clock for records without one), so
    a replay run as fast as possible still gives its whole history, point by point.
    """

    def __init__(
        self, seconds: float = HISTORY_SECONDS, interval: float = SAMPLE_INTERVAL
    ):
        self.interval = interval
        self._maxlen = max(10, int(seconds / interval))
        self._lock = threading.Lock()
        self._points: dict[str, deque] = {}
        self._last: dict[str, float] = {}
        self.seq = 0

    def add(self, record: dict) -> None:
        """One summary: a point unless the product's last is under ``interval`` old."""
        product = record.get("product_id")
        mid = num(record.get("mid"))
        if not product or mid is None:
            return
        t = epoch_seconds(record.get("time")) or time.time()
        last = self._last.get(product, -1e18)
        if last - RESET_AFTER < t < last + self.interval:
            return
        point_spread = spread_bps(record)
        with self._lock:
            self._last[product] = t
            self.seq += 1
            points = self._points.setdefault(product, deque(maxlen=self._maxlen))
            if t < last:  # another clock (a snapshot's receive time, then the
                points.clear()  # exchange's): start again rather than go back
            points.append(
                (self.seq, round(t, 3), mid, point_spread, num(record.get("imbalance")))
            )

    def since(self, product: str, seq: int) -> list:
        with self._lock:
            points = self._points.get(product)
            if not points:
                return []
            if points[0][0] > seq:
                return list(points)
            return [p for p in points if p[0] > seq]


class DashboardServer:
    """The WebSocket + HTTP server, on its own thread and event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        board: MarketBoard,
        history: History | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.board = board
        self.history = history or History()
        self.clients = 0
        self.local_workers = 0
        self.worker_count = 1
        """Sink partitions of this process, of all workers: equal when every product
        is this process's (one process); otherwise products it holds show up with
        their first record, not before."""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> DashboardServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the dashboard server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=5)

    # -- the server thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        first = self.port
        attempts = 1 if first == 0 else PORT_ATTEMPTS
        for attempt in range(attempts):
            try:
                server = await serve(
                    self._client,
                    self.host,
                    first + attempt if first else 0,
                    process_request=self._http,
                    max_size=2**16,
                    compression=None,
                )
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
        async with server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _http(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # the WebSocket handshake goes on
        if path == "/favicon.ico":
            response = connection.respond(204, "")
            return response
        name = FILES.get(path)
        if name is None:
            return connection.respond(404, "not found\n")
        body = (STATIC / name).read_bytes()
        response = connection.respond(200, "")
        kind = mimetypes.guess_type(name)[0] or "text/plain"
        if name.endswith(".js"):
            kind = "text/javascript"
        for header, value in (
            ("Content-Type", f"{kind}; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
        ):
            if header in response.headers:  # a multidict: replace, not add
                del response.headers[header]
            response.headers[header] = value
        response.body = body
        return response

    async def _client(self, ws) -> None:
        self.clients += 1
        seen_version: dict[str, int] = {}
        seen_seq: dict[str, int] = {}
        try:
            await ws.send(
                json.dumps(
                    {
                        "type": "hello",
                        "products": self.board.products(),
                        "threshold_pct": self.board.threshold_pct,
                        "history_seconds": HISTORY_SECONDS,
                    }
                )
            )
            while True:
                message = self._changes(seen_version, seen_seq)
                if message is not None:
                    await ws.send(message)  # a slow tab waits here, alone
                await asyncio.sleep(PUSH_INTERVAL)
        except Exception:  # closed tab, network gone: nothing to clean up
            pass
        finally:
            self.clients -= 1

    def _changes(self, seen_version: dict, seen_seq: dict) -> str | None:
        """What changed since this client's last message, from the latest state only."""
        products = []
        for product in self.board.products():
            row = self.board.row(product, depth_levels=DEPTH_LEVELS)
            if row is None:
                continue
            if not row["version"] and self.local_workers < self.worker_count:
                continue  # maybe another process's product
            points = self.history.since(product, seen_seq.get(product, 0))
            # state and age change with time alone: resend every product each push
            seen_version[product] = row["version"]
            if points:
                seen_seq[product] = points[-1][0]
            row.pop("raw", None)
            row["history"] = points
            products.append(row)
        if not products:
            return None
        return json.dumps(
            {"type": "update", "now": time.time(), "products": products},
            separators=(",", ":"),
        )


# -- the sink: every worker of the process feeds one server ----------------------------

_servers: dict[tuple[str, int], DashboardServer] = {}
_servers_lock = threading.Lock()


def shared_server(
    host: str, port: int, threshold_pct: float, products=()
) -> DashboardServer:
    """This process's server for (host, port), started on first use."""
    with _servers_lock:
        server = _servers.get((host, port))
        if server is None:
            board = MarketBoard(products, threshold_pct=threshold_pct)
            server = DashboardServer(host, port, board).start()
            _servers[(host, port)] = server
            log.warning("dashboard: %s (the products of this process)", server.url)
        server.board.add_products(products)
        return server


def _partition_closed(server: DashboardServer) -> None:
    """The run ended for this partition. After the last, a replay's final state stays
    on the page until Ctrl-C (a replay run as fast as possible ends in a second)."""
    with _servers_lock:
        server.local_workers -= 1
        last = server.local_workers <= 0
    if not last:
        return
    server.board.finished = True
    if REPLAY in server.board.feeds():
        log.warning(
            "dashboard: the replay ended; %s keeps showing it until Ctrl-C", server.url
        )
        threading.Event().wait()  # the signal handler ends the process


class _DashboardPartition(StatelessSinkPartition):
    def __init__(self, server: DashboardServer) -> None:
        self._server = server
        self._board = server.board
        self._history = server.history

    def write_batch(self, items: list) -> None:
        if items:
            records = [r for r in map(as_record, items) if r is not None]
            self._board.update(records)
            for record in records:
                if kind(record) == SUMMARY:
                    self._history.add(record)

    def close(self) -> None:
        _partition_closed(self._server)


class DashboardSink(DynamicSink):
    """Summaries and depth records (dicts or objects) into the process's dashboard."""

    def __init__(
        self, host: str, port: int, threshold_pct: float = 0.1, products=()
    ) -> None:
        self.host = host
        self.port = port
        self.threshold_pct = float(threshold_pct)
        self.products = tuple(products)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        server = shared_server(self.host, self.port, self.threshold_pct, self.products)
        with _servers_lock:
            server.local_workers += 1
            server.worker_count = worker_count
        return _DashboardPartition(server)
