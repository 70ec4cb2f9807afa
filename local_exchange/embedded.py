"""The one hook production code uses: the in-process local exchange of ``ORDERBOOK_FEED=sim``.

One exchange per process, started on first use and kept until the process ends: every
partition of the process reads its product from it, so a product's book and the changes
after it come from one market. Under ``-p``/``-i`` each process starts its own exchange,
and each product's book still comes from exactly one (the one of the process that owns
the product's partition). The exchange thread is a daemon: it ends with the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from local_exchange.server import LocalExchange

log = logging.getLogger(__name__)

_lock = threading.Lock()
_exchange: LocalExchange | None = None


def exchange_url(products: Sequence[str], depth: int, rate: float) -> str:
    """The Exchange-feed URL of this process's local exchange, started on first call.

    Later calls return the same URL whatever they ask for: the first caller's products,
    depth and rate define the market.
    """
    global _exchange
    with _lock:
        if _exchange is None:
            _exchange = LocalExchange(
                products, depth=depth, rate=rate, announce=True
            ).start()
            log.warning(
                "ORDERBOOK_FEED=sim: simulated market data from the local exchange at %s "
                "(summaries say feed=sim)",
                _exchange.url(),
            )
        return _exchange.url()


def rest_url() -> str | None:
    """``http://127.0.0.1:PORT``, the REST books of this process's local exchange, or None
    before :func:`exchange_url` started it (the ``sim`` feed audits against it)."""
    with _lock:
        return None if _exchange is None else _exchange.rest_url()
