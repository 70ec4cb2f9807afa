"""Reconnect pacing: jittered exponential backoff and a process-wide connection pacer.

Backoff spreads the reconnects of many partitions after an outage; the pacer keeps the
whole process under Coinbase's limit of 8 new connections per second per IP, whichever
thread asks.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Callable

__all__ = ["CONNECTION_PACER", "MESSAGE_PACER", "Backoff", "ConnectionPacer"]

_CLOCK_SLACK = 1e-3
"""asyncio may wake a sleeper up to its clock resolution early: do not sleep again."""


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, drawn from the upper half (jitter).

    Call :meth:`reset` after a connection that proved healthy (delivered a snapshot), so
    one drop after hours of service reconnects quickly while a flapping server does not
    get hammered.
    """

    def __init__(
        self,
        initial: float = 0.25,
        maximum: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if not initial > 0:
            raise ValueError(f"backoff_initial must be > 0 seconds; got {initial!r}")
        if not maximum >= initial:
            raise ValueError(
                f"backoff_max must be >= backoff_initial ({initial}); got {maximum!r}"
            )
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The next wait in seconds; each call doubles the ceiling until the cap."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class ConnectionPacer:
    """Thread-safe minimum interval between connection attempts (a 1-token bucket).

    ``reserve()`` books the next free slot and returns how long the caller must wait for
    it, so callers sleep in their own event loop instead of holding a lock.

    ``clock`` (seconds, monotonic) is injectable so that tests can freeze time: the
    spacing is then exact whatever the thread scheduling (a wall-clock test of it failed
    9 runs in 15 on a loaded machine).
    """

    def __init__(
        self, per_second: float = 7.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not per_second > 0:
            raise ValueError(f"per_second must be > 0; got {per_second!r}")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._next_slot = -math.inf
        self._last_taken = -math.inf

    def reserve(self) -> float:
        """Book the next free slot; returns the seconds to wait for it (0 if free now)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
            return slot - now

    def take(self) -> float:
        """Take the turn now if an interval has passed since the last one actually taken
        (returns 0), else return how long to wait before asking again.

        Slots booked by :meth:`reserve` are spaced, but a caller woken late (its event
        loop was busy, say parsing a 5 MB snapshot) would send together with the next
        one; checking the actual previous turn keeps what leaves the process spaced.
        """
        with self._lock:
            now = self._clock()
            due = self._last_taken + self.interval - _CLOCK_SLACK
            if now >= due:
                self._last_taken = now
                return 0.0
            return due - now

    async def turn(self) -> None:
        """Wait for a booked slot, then for the actual turn (use right before sending)."""
        await asyncio.sleep(self.reserve())
        while (wait := self.take()) > 0:
            await asyncio.sleep(wait)


CONNECTION_PACER = ConnectionPacer()
"""Shared by every source in the process: Coinbase counts connections per IP."""

MESSAGE_PACER = ConnectionPacer()
"""Subscribe and unsubscribe messages, also per IP, shared by every connection of the
process: Advanced Trade allows 8 unauthenticated messages a second. One message carries
every product of a connection (Advanced Trade sends two: level2, heartbeats); a product
resynced alone costs two more (unsubscribe, subscribe), batched per connection."""
