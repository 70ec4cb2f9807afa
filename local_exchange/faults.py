"""The fault catalogue: ways the local exchange breaks its feed on purpose, and their state.

* ``drop``: abort every connection (TCP reset style, no close frame);
* ``silence``: send nothing to anyone for a while; what was queued follows afterwards;
* ``malformed``: frames of the kinds in :data:`MALFORMED_KINDS`, on every subscribed
  connection (each protocol encodes them in its own dialect);
* ``skip_sequence``: the next frame on each sequenced (Advanced Trade) connection skips
  one ``sequence_num``;
* ``fail_next_subscribe``: the next subscribe, on any connection, is refused.

None of them changes the true book if a client applies what it can parse:
``bad_timestamp`` restates the current best bid. On Advanced Trade ``bad_json`` consumes no
``sequence_num`` (the number is unreadable); every other kind consumes one. All methods
run on the exchange's event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
