"""``ORDERBOOK_DASHBOARD=HOST:PORT``: a web page of every product of this process, live.

One server per process, started when the dataflow is built (:func:`views.wiring.attach`,
so an address it cannot listen on is a one-line error at start, not a traceback from a
worker): every worker thread of the process feeds it (``-w N``), so the page shows every
product this process holds. Under ``-p``/``-i`` each process serves its own page (its
log says where; a port in use makes it try the next ones).

The page (``views/static/dashboard.html``, with uPlot vendored beside it, nothing from
the network) shows per product a depth chart (cumulative size against price, both
sides), spread and mid over the last minutes, imbalance, and feed health, pushed over a
WebSocket at ``/ws``; plain HTTP for the page comes from the same port.

The dataflow never waits for a browser: a sink partition only updates the latest state
per product (:class:`views.state.MarketBoard`) and a bounded history. Each client's
sender wakes every ``PUSH_INTERVAL`` and sends what changed since its last message,
built fresh from the latest state; a slow or closed tab only delays its own sender, and
what it missed is conflated, never queued.

Only the dashboard's own address is answered (same origin): a request whose ``Host``
is not one of the names the server was bound as (``127.0.0.1:PORT``, ``localhost:PORT``
for loopback, the configured host) or whose ``Origin``, when present, is not one of those
as ``http://`` origins gets a 403 and no data, so a web page elsewhere can neither read
the WebSocket (cross-site WebSocket hijacking) nor reach the server through a name of
its own that resolves to this machine (DNS rebinding). ``ORDERBOOK_DASHBOARD_ORIGINS``
allows more (a LAN address, a reverse proxy).

At most ``MAX_CONNECTIONS`` connections are open at once, and one that has not sent
its request after ``HANDSHAKE_TIMEOUT`` seconds is closed: a client that opens
connections and never writes cannot take the process's file descriptors (which the
outputs need to open their files). When the cap is reached, the oldest connection that
has not sent its request yet makes room for the new one; when every connection is a
live page, the new one gets a 503.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import json
import logging
import mimetypes
import secrets
import socket
import threading
import time
from collections import deque
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from websockets.asyncio.server import ServerConnection

from common.logs import RateLimitedLog
from common.text import shown
from views.records import SUMMARY, as_record, epoch_seconds, kind, num, spread_bps
from views.state import REPLAY, MarketBoard

log = logging.getLogger(__name__)
_refusals = RateLimitedLog(log, 10.0)

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
MAX_CONNECTIONS = 64
"""Open connections at most. A tab holds one WebSocket, and opens up to 6 more for a
moment while it loads the page (Chromium's limit per host): 64 serve about ten tabs
loading at once. A flood then holds at most about 128 descriptors (see
``ACCEPT_BACKLOG``), an eighth of the 1024 a process gets by default (``ulimit -n``):
the rest stays free for the outputs' files and sockets (before the cap, 200 half-open
connections under a low limit made the Parquet output's open fail with EMFILE)."""
HANDSHAKE_TIMEOUT = 5.0
"""Seconds a connection may take to send its request (page or WebSocket handshake);
a browser on this machine or a LAN sends it within milliseconds. An open WebSocket
whose peer stops answering pings is closed after 20 + 20 s (websockets' keepalive)."""
ACCEPT_BACKLOG = 32
"""Connections the kernel queues before the server accepts them, which is also how many
asyncio accepts in one go: while a flood is turned away, a batch just accepted and the
batch it evicts are open for a moment, so the server's descriptors peak under
``MAX_CONNECTIONS`` + 2 x 32 (measured: 88 to 127 under floods of 200 to 800
connections; 16 made a loopback client wait out 1 s SYN retries)."""
REFUSED_LINGER = 1.0
"""Seconds a refused connection (503 at the cap) is kept for its client to read the 503
and close; at most ``ACCEPT_BACKLOG`` of them at once, beyond that they are reset."""
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""The names a loopback (or every-interface) dashboard answers to besides its own."""
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections, try later\n"
)
_FORBIDDEN = (
    "forbidden: this dashboard answers its own address only "
    "(ORDERBOOK_DASHBOARD_ORIGINS allows more)\n"
)
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


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_local(host: str) -> bool:
    if host in WILDCARD_HOSTS or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Connection(ServerConnection):
    """A connection counted against the dashboard's cap (see :meth:`DashboardServer._admit`)."""

    def __init__(self, *args, dashboard: DashboardServer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._dashboard = dashboard
        self._admitted = False
        self._lingering = False

    def connection_made(self, transport) -> None:
        if self._dashboard._admit(self):
            self._admitted = True
            super().connection_made(transport)
            return
        # refused: a 503, then the client's request is read and dropped until it
        # closes (closing first would reset the connection, and the 503 with it)
        transport.write(_BUSY)  # a few bytes: the socket buffer takes them at once
        if self._dashboard._linger(self):
            self._lingering = True
            transport.write_eof()
            self.loop.call_later(REFUSED_LINGER, transport.abort)
        else:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._admitted:
            return super().eof_received()
        return None  # a refused connection: closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._dashboard._release(self)
            super().connection_lost(exc)
        elif self._lingering:
            self._dashboard._lingering -= 1


class DashboardServer:
    """The WebSocket + HTTP server, on its own thread and event loop.

    ``origins``: web origins allowed besides the server's own (``http://host:port``);
    ``max_connections`` and ``handshake_timeout``: see ``MAX_CONNECTIONS`` and
    ``HANDSHAKE_TIMEOUT``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        board: MarketBoard,
        history: History | None = None,
        *,
        origins: tuple[str, ...] = (),
        max_connections: int = MAX_CONNECTIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.board = board
        self.history = history or History()
        self.origins = tuple(o.lower().rstrip("/") for o in origins)
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._open: dict[_Connection, None] = {}
        """Open connections, oldest first (the loop's thread only)."""
        self._lingering = 0
        """Refused connections waiting for their client to close (``REFUSED_LINGER``)."""
        self.accepted = 0
        """Connections accepted so far (each then served, closed or refused)."""
        self.peak_connections = 0
        """The most connections open at once so far."""
        self.evicted = 0
        """Connections closed before their request to make room for a new one."""
        self.expired = 0
        """Connections closed before their request otherwise: the handshake timeout, or
        the client gave up."""
        self.refused = 0
        """Connections refused (503) at the cap, every one a live page."""
        self.forbidden = 0
        """Requests refused (403) for a foreign Host or Origin."""
        self._allowed_hosts: frozenset[str] = frozenset()
        self._allowed_origins: frozenset[str] = frozenset()
        self.clients = 0
        self.run = secrets.token_hex(8)
        """This server's run, in every hello: a page that reconnects and finds another
        run knows the process restarted, and that its cards hold the run before's."""
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
        return f"http://{_netloc(self.host, self.port)}/"

    @property
    def connections(self) -> int:
        """Connections open now (pages, WebSockets, requests not yet sent)."""
        return len(self._open)

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
        attempts = 1 if first == 0 else min(PORT_ATTEMPTS, 65536 - first)
        for attempt in range(attempts):
            try:
                server = await serve(
                    self._client,
                    self.host,
                    first + attempt if first else 0,
                    process_request=self._http,
                    max_size=2**16,
                    compression=None,
                    open_timeout=self.handshake_timeout,
                    create_connection=functools.partial(_Connection, dashboard=self),
                    backlog=ACCEPT_BACKLOG,
                )
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if attempt == attempts - 1:
                    last = first + attempts - 1
                    ports = f"{first}..{last}" if last > first else str(first)
                    raise OSError(
                        errno.EADDRINUSE, f"ports {ports} are all in use"
                    ) from None
        async with server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._allow()
            self._ready.set()
            await self._stop.wait()

    def _allow(self) -> None:
        """The ``Host`` values and origins this server answers, now that its port is
        known: its own address, the loopback names when it listens on loopback or on
        every interface (plus the machine's name then), and ``origins``."""
        names = {self.host.lower()}
        if _is_local(self.host):
            names.update(LOOPBACK_NAMES)
        if self.host in WILDCARD_HOSTS:
            names.add(socket.gethostname().lower())
        names.discard("")
        hosts = {_netloc(n, self.port) for n in names}
        if self.port == 80:  # browsers leave the default port out
            hosts |= {f"[{n}]" if ":" in n else n for n in names}
        origins = {f"http://{h}" for h in hosts} | set(self.origins)
        hosts |= {o.partition("://")[2] for o in self.origins}  # a proxy keeping Host
        self._allowed_hosts = frozenset(hosts)
        self._allowed_origins = frozenset(origins)

    def _admit(self, connection: _Connection) -> bool:
        """Count a new connection; at the cap, close the oldest that has not sent its
        request yet, or refuse the new one when every connection is a live page."""
        self.accepted += 1
        if len(self._open) >= self.max_connections:
            waiting = next((c for c in self._open if c.request is None), None)
            if waiting is None:
                self.refused += 1
                return False
            del self._open[waiting]
            waiting.transport.abort()
            self.evicted += 1
        self._open[connection] = None
        self.peak_connections = max(self.peak_connections, len(self._open))
        return True

    def _linger(self, connection: _Connection) -> bool:
        """Room for one more refused connection to linger (see ``REFUSED_LINGER``)?"""
        if self._lingering >= ACCEPT_BACKLOG:
            return False
        self._lingering += 1
        return True

    def _release(self, connection: _Connection) -> None:
        if connection in self._open:  # not evicted
            del self._open[connection]
            if connection.request is None:
                self.expired += 1

    def _foreign(self, request) -> bool:
        """A request for another name than this server's, or from another site's page."""
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or hosts[0].lower() not in self._allowed_hosts:
            return True
        origins = request.headers.get_all("Origin")
        return len(origins) > 1 or any(
            o.lower() not in self._allowed_origins for o in origins
        )

    def _http(self, connection, request):
        if self._foreign(request):
            self.forbidden += 1
            _refusals.warning(
                "dashboard: refused a request for Host %s from Origin %s "
                "(ORDERBOOK_DASHBOARD_ORIGINS allows more origins)",
                shown(", ".join(request.headers.get_all("Host")) or "-"),
                shown(", ".join(request.headers.get_all("Origin")) or "-"),
            )
            return connection.respond(403, _FORBIDDEN)
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
                        "run": self.run,
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
                try:  # a closed tab ends its sender even when there is nothing to send
                    await asyncio.wait_for(ws.wait_closed(), PUSH_INTERVAL)
                    return
                except TimeoutError:
                    pass
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
    host: str, port: int, threshold_pct: float, products=(), origins=()
) -> DashboardServer:
    """This process's server for (host, port), started on first use.

    Raises :class:`OSError` when it cannot listen (a host name that does not resolve,
    an address of another machine, ports in use, a port below 1024 without the right)."""
    with _servers_lock:
        server = _servers.get((host, port))
        if server is None:
            board = MarketBoard(products, threshold_pct=threshold_pct)
            server = DashboardServer(host, port, board, origins=tuple(origins)).start()
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
        if items:  # (received_ns, record) pairs
            records = [r for _, item in items if (r := as_record(item)) is not None]
            self._board.update(records)
            for record in records:
                if kind(record) == SUMMARY:
                    self._history.add(record)

    def close(self) -> None:
        _partition_closed(self._server)


class DashboardSink(DynamicSink):
    """``(received_ns, record)`` pairs into the process's dashboard."""

    def __init__(
        self,
        host: str,
        port: int,
        threshold_pct: float = 0.1,
        products=(),
        origins=(),
    ) -> None:
        self.host = host
        self.port = port
        self.threshold_pct = float(threshold_pct)
        self.products = tuple(products)
        self.origins = tuple(origins)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        server = shared_server(
            self.host, self.port, self.threshold_pct, self.products, self.origins
        )
        with _servers_lock:
            server.local_workers += 1
            server.worker_count = worker_count
        return _DashboardPartition(server)
