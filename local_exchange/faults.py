"""The fault catalogue: ways the local exchange breaks its feed on purpose, and their state.

* ``drop``: abort every connection (TCP reset style, no close frame);
* ``silence``: send nothing to anyone for a while; what was queued follows afterwards;
* ``malformed``: frames of the kinds in :data:`MALFORMED_KINDS`, on every subscribed
  connection (each protocol encodes them in its own dialect);
* ``skip_sequence``: the next frame on each sequenced (Advanced Trade) connection skips
  one ``sequence_num``;
* ``fail_next_subscribe``: the next subscribe, on any connection, is refused;
* ``corrupt``: a silent corruption (:data:`CORRUPT_KINDS`): one true change of one
  product's shallow level (best-first index 2 to 8) is never sent (``skip``) or sent with
  a wrong size (``wrong_size``), with no sign on the stream (Advanced Trade's
  ``sequence_num`` stays contiguous); the market then leaves that level alone for
  ``hold`` seconds (:meth:`local_exchange.market.Market.corrupt_level`), so every client
  subscribed at the time holds a wrong level until it resyncs, while the true book and the
  REST books stay right. Clients subscribing later get a right snapshot;
* ``rest_errors``: the next REST book requests fail (:data:`local_exchange.rest.REST_ERROR_KINDS`:
  429, 500, a ``timeout`` (held past the client's patience, then 504), or ``not_json``).

None of them changes the true book if a client applies what it can parse:
``bad_timestamp`` restates the current best bid. On Advanced Trade ``bad_json`` consumes no
``sequence_num`` (the number is unreadable); every other kind consumes one. All methods
run on the exchange's event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from common import validation

if TYPE_CHECKING:
    from local_exchange.connections import Registry, Stats
    from local_exchange.market import RawChange

MALFORMED_KINDS = (
    "bad_json",  # not JSON at all: the frame is cut off
    "missing_fields",  # an update without its changes
    "non_numeric_size",  # "abc"
    "negative_size",  # "-1.5"
    "malformed_size",  # "0.-10000"
    "bad_timestamp",  # year 1, restating the best bid (valid otherwise)
    "unknown_type",  # a message type no client knows (the tests' end-of-stream marker)
    "wrong_types",  # numbers where strings belong and the reverse
)

CORRUPT_KINDS = ("skip", "wrong_size")
CORRUPT_HOLD_DEFAULT = 30.0
"""Seconds the market leaves a corrupted level alone: two audit intervals of a test (a
few seconds each) with room to spare; the live default of 60 s per audit is not meant to
be waited for in a test."""
CORRUPT_HOLD_MAX = 3600.0


@dataclass(frozen=True, slots=True)
class Corruption:
    """What a silent corruption injected: the level a subscribed client now has wrong.

    ``sent_size`` is the size on the wire (None: the change was never sent);
    ``client_size`` the size a client that applied the stream holds at ``price``
    (``true_size`` is what the true book and REST hold)."""

    product_id: str
    kind: str
    side: str  # "bid" | "ask"
    price: Decimal
    true_size: Decimal
    sent_size: Decimal | None
    client_size: Decimal

    def as_json(self) -> dict[str, Any]:
        def text(d: Decimal | None) -> str | None:
            return None if d is None else str(d)

        return {
            "product_id": self.product_id,
            "kind": self.kind,
            "side": self.side,
            "price": text(self.price),
            "true_size": text(self.true_size),
            "sent_size": text(self.sent_size),
            "client_size": text(self.client_size),
        }


def wrong_units(old: int, new: int) -> int:
    """A size that is neither the level's old nor its new size (units of 1e-8)."""
    wrong = new * 2 + 1_000_000
    return wrong + 1 if wrong == old else wrong


def check_kinds(kinds: Sequence[str] | None) -> list[str]:
    chosen = list(MALFORMED_KINDS if kinds is None else kinds)
    if not chosen or any(k not in MALFORMED_KINDS for k in chosen):
        raise validation.refuse(
            "kinds", kinds, "a non-empty list drawn from " + ", ".join(MALFORMED_KINDS)
        )
    return chosen


class Faults:
    """The armed faults and the actions that inject them into ``registry``'s clients."""

    def __init__(self, registry: Registry, stats: Stats) -> None:
        self._registry = registry
        self._stats = stats
        self._silent_until = 0.0
        self._fail_next: str | None = None

    def silent_for(self) -> float:
        """Seconds of silence left (the senders wait this long before each frame)."""
        return self._silent_until - time.monotonic()

    def drop(self) -> None:
        conns = list(self._registry.conns)
        for conn in conns:
            conn.ws.transport.abort()
        self._stats.count("faults", "drop_connections", len(conns))

    def silence(self, seconds: float) -> None:
        self._silent_until = max(self._silent_until, time.monotonic() + seconds)
        self._stats.count("faults", "go_silent")

    def end_silence(self) -> None:
        self._silent_until = 0.0

    def malformed(
        self,
        count: int,
        kinds: list[str],
        restate: Callable[[str], list[RawChange]],
    ) -> None:
        now = time.time_ns()
        for conn in list(self._registry.conns):
            if not conn.subs and not conn.at_heartbeats:
                continue
            products = conn.subscribed_products()
            pid = products[0] if products else self._registry.products[0]
            changes = restate(pid)
            for _ in range(count):
                for kind in kinds:
                    conn.put(
                        "malformed", conn.protocol.malformed(kind, pid, changes, now)
                    )
                    self._stats.count("faults", f"malformed:{kind}")

    def skip_sequence(self) -> None:
        n = 0
        for conn in self._registry.conns:
            if conn.protocol.sequenced:
                conn.skip_pending = True
                n += 1
        self._stats.count("faults", "skip_sequence", n)

    def arm_fail_next(self, reason: str) -> None:
        self._fail_next = reason

    def take_fail_next(self) -> Any:
        """The armed refusal reason, once (then disarmed), or None."""
        reason, self._fail_next = self._fail_next, None
        if reason is not None:
            self._stats.count("faults", "fail_next_subscribe")
        return reason
