"""Resync requests from the book step back to the source partition of the same product.

A book that stays crossed or locked is wrong in a way the feed will not repair by itself
(the Exchange feed has no sequence numbers): only a fresh snapshot does. The book step
sees it; the source partition that reads the product's socket can get a snapshot (by
resubscribing or reconnecting). :class:`ResyncRequests` is the channel between the two,
one per dataflow: the source the flow reads owns it (``CoinbaseSource`` and
``ReplaySource`` create one, ``source.resync_requests``) and ``dataflow.get_flow`` hands
the same object to the book step, so two flows in one process never take each other's
requests. Thread-safe: keyed by product id.

Why process-local is enough: ``service/placement.py`` routes every product's book to the
worker that reads that product's socket, so the book step and the partition of one
product run in one process (for every worker count that divides 840, see the placement
docs). Where they do not (a replay, or a layout the placement cannot serve), a request is
simply never taken: it costs one dictionary entry per product, and the book still waits
for the next snapshot as before.

Book step side::

    requests.request("BTC-USD", "crossed for 3.2 s of feed time")

Source partition side, e.g. once per ``next_batch``::

    reason = requests.take(self.product_id)
    if reason is not None:
        ...  # emit a BookReset(product, "resync: " + reason), then get a fresh snapshot

At most one request is pending per product: a second request before the first is taken
keeps the first reason (a resync serves both).
"""

from __future__ import annotations

import threading
import uuid
import weakref


class ResyncRequests:
    """One flow's pending resync requests, product id -> reason.

    A copy (``pickle``, ``copy.deepcopy``: Bytewax may copy the objects a flow is built
    from) made in the same process is the same channel: it is looked up by a key unique
    to this channel. A copy unpickled in another process is that process's channel of
    this key, where every copy of it meets.
    """

    __slots__ = ("__weakref__", "_lock", "_pending", "key")

    def __init__(self) -> None:
        self._start(uuid.uuid4().hex)
        with _channels_lock:
            _channels[self.key] = self

    def _start(self, key: str) -> None:
        self.key = key
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()

    def request(self, product_id: str, reason: str) -> bool:
        """Ask the partition reading ``product_id`` for a fresh snapshot, saying why.

        Returns True when this is a new request, False when one was already pending (its
        reason is kept). Safe from any thread; never blocks for long.
        """
        if not isinstance(product_id, str) or not product_id:
            raise ValueError(f"product_id must be a product id, not {product_id!r}")
        with self._lock:
            if product_id in self._pending:
                return False
            self._pending[product_id] = str(reason)
            return True

    def take(self, product_id: str) -> str | None:
        """The pending request's reason for ``product_id``, removed; None if there is none.

        Cheap enough to call on every poll of the partition (one dict lookup under a lock).
        """
        if not self._pending:  # the common case, without taking the lock
            return None
        with self._lock:
            return self._pending.pop(product_id, None)

    def pending(self) -> dict[str, str]:
        """A copy of the pending requests, product id -> reason (diagnostics and tests)."""
        with self._lock:
            return dict(self._pending)

    def clear(self) -> None:
        """Forget every pending request."""
        with self._lock:
            self._pending.clear()

    def __reduce__(self) -> tuple:
        return _channel, (self.key,)

    def __repr__(self) -> str:
        return f"ResyncRequests({self.key!r}, pending={len(self._pending)})"


_channels: weakref.WeakValueDictionary[str, ResyncRequests] = (
    weakref.WeakValueDictionary()
)
"""Every live channel of the process by key: process-wide by nature, since it is what
lets a copy of a channel find the original (entries go with their channel)."""
_channels_lock = threading.Lock()


def _channel(key: str) -> ResyncRequests:
    """The channel of ``key`` in this process (unpickling): the original, or a new one."""
    with _channels_lock:
        found = _channels.get(key)
        if found is None:
            found = ResyncRequests.__new__(ResyncRequests)
            found._start(key)
            _channels[key] = found
    return found
