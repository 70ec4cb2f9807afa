"""Resync requests from the book step back to the source partition of the same product.

A book that stays crossed or locked is wrong in a way the feed will not repair by itself
(the Exchange feed has no sequence numbers): only a fresh snapshot does. The book step
sees it; the source partition that reads the product's socket can get a snapshot (by
resubscribing or reconnecting). This module is the channel between the two: a
process-local, thread-safe registry keyed by product id.

Why process-local is enough: ``service/placement.py`` routes every product's book to the
worker that reads that product's socket, so the book step and the partition of one
product run in one process (for every worker count that divides 840, see the placement
docs). Where they do not (a replay, or a layout the placement cannot serve), a request is
simply never taken: it costs one dictionary entry per product, and the book still waits
for the next snapshot as before.

Book step side::

    request_resync("BTC-USD", "crossed for 3.2 s of feed time")

Source partition side, e.g. once per ``next_batch``::

    reason = take_resync_request(self.product_id)
    if reason is not None:
        ...  # emit a BookReset(product, "resync: " + reason), then get a fresh snapshot

At most one request is pending per product: a second request before the first is taken
keeps the first reason (a resync serves both).
"""

from __future__ import annotations

import threading

_pending: dict[str, str] = {}
_lock = threading.Lock()


def request_resync(product_id: str, reason: str) -> bool:
    """Ask the partition reading ``product_id`` for a fresh snapshot, saying why.

    Returns True when this is a new request, False when one was already pending (its
    reason is kept). Safe from any thread; never blocks for long.
    """
    if not isinstance(product_id, str) or not product_id:
        raise ValueError(f"product_id must be a product id, not {product_id!r}")
    with _lock:
        if product_id in _pending:
            return False
        _pending[product_id] = str(reason)
        return True


def take_resync_request(product_id: str) -> str | None:
    """The pending request's reason for ``product_id``, removed; None if there is none.

    Cheap enough to call on every poll of the partition (one dict lookup under a lock).
    """
    if not _pending:  # the common case, without taking the lock
        return None
    with _lock:
        return _pending.pop(product_id, None)


def pending_resyncs() -> dict[str, str]:
    """A copy of the pending requests, product id -> reason (diagnostics and tests)."""
    with _lock:
        return dict(_pending)


def clear_resync_requests() -> None:
    """Forget every pending request (tests; a process starting a new dataflow)."""
    with _lock:
        _pending.clear()
