"""A tiny loopback HTTP server answering Coinbase's two REST book requests.

For the audit scheduler's tests (:mod:`coinbase.audit`): it serves a fixed book per
product in both dialects, logs every request it gets (``time.monotonic()``, path,
status) so a test can count requests per one-second window as the server saw them,
and answers the next requests with faults when told (``429``, ``500``, ``timeout``,
``not_json``). Runs ``http.server`` on a daemon thread, 127.0.0.1, an ephemeral port.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

from tests.support.exchange_client import busiest_window

FAULTS = ("429", "500", "timeout", "not_json")


class RestBookServer:
    """``with RestBookServer({"BTC-USD": (bids, asks)}) as server: ... server.url``.

    ``bids``/``asks`` are ``(price, size)`` string pairs, best first.
    """

    def __init__(
        self, books: dict[str, tuple[list, list]], timeout_seconds: float = 3.0
    ) -> None:
        self.books = books
        self.timeout_seconds = timeout_seconds
        self.requests: list[tuple[float, str, int]] = []
        self._faults: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server._answer(self)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up (a timeout test) resets its connection

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fail_next(self, kind: str, count: int = 1) -> None:
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.extend([kind] * count)

    def windows(self, seconds: float = 1.0) -> int:
        """The most requests seen in any window of ``seconds`` (half-open)."""
        return busiest_window(sorted(t for t, _, _ in self.requests), seconds)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- the server's threads -----------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        status, body = self._reply(handler.path, fault)
        with self._lock:
            self.requests.append((time.monotonic(), handler.path, status))
        if fault == "timeout":
            self._stop.wait(self.timeout_seconds)
        payload = body.encode() if isinstance(body, str) else body
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        try:
            handler.wfile.write(payload)
        except OSError:  # the client gave up (a timeout)
            pass

    def _reply(self, path: str, fault: str | None) -> tuple[int, str]:
        if fault in ("429", "500"):
            return int(fault), json.dumps({"message": "fault"})
        if fault == "not_json":
            return 200, "<html>Bad gateway</html>"
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        if parts.path == "/api/v3/brokerage/market/product_book":
            product = query.get("product_id", [""])[0]
            if product not in self.books:
                return 404, json.dumps({"message": "NotFound"})
            limit = int(query.get("limit", ["50"])[0])
            bids, asks = self.books[product]
            pricebook = {
                "product_id": product,
                "bids": [{"price": p, "size": s} for p, s in bids[:limit]],
                "asks": [{"price": p, "size": s} for p, s in asks[:limit]],
                "time": "2026-12-05T00:00:00Z",
            }
            return 200, json.dumps({"pricebook": pricebook, "last": "1"})
        pieces = parts.path.split("/")
        if len(pieces) == 4 and pieces[1] == "products" and pieces[3] == "book":
            product = pieces[2]
            if product not in self.books:
                return 404, json.dumps({"message": "NotFound"})
            bids, asks = self.books[product]
            if query.get("level") == ["1"]:
                bids, asks = bids[:1], asks[:1]
            return 200, json.dumps(
                {
                    "bids": [[p, s, 1] for p, s in bids],
                    "asks": [[p, s, 1] for p, s in asks],
                    "sequence": 1,
                    "auction_mode": False,
                    "auction": None,
                    "time": "2026-12-05T00:00:00Z",
                }
            )
        return 404, json.dumps({"message": "NotFound"})


def ladder(mid: int, levels: int) -> tuple[list, list]:
    """A book of ``levels`` a side around ``mid``: bids mid-1, mid-2..., asks mid+1..."""
    bids = [(str(mid - i), str(Decimal(i) / 10)) for i in range(1, levels + 1)]
    asks = [(str(mid + i), str(Decimal(i) / 10)) for i in range(1, levels + 1)]
    return bids, asks
