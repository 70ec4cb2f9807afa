"""The exchange's two clocks: the market loop and the heartbeat loop.

The market loop generates one batch per product every ``1/rate`` s and applies it to the
true book at once, but hands it to the subscribed connections' send queues only
``socket_lag`` steps later (default 1: at the default 20 batches a second, 50 ms, the
batching delay of Coinbase's ``level2_batch``), encoded once per (protocol, channel)
however many clients read it. So the REST book (read from the true book) runs a few
updates ahead of the socket, as a real exchange's does. A loop that fell far behind (a
busy machine) resynchronises instead of bursting. Heartbeats: the Exchange feed's per product (its
``sequence`` grows with the product's changes), Advanced Trade's per connection.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from local_exchange import advanced_trade_protocol, exchange_protocol
from local_exchange.connections import Connection, Registry
from local_exchange.market import (
    BID,
    Market,
    RawChange,
    RawLevel,
    format_size,
    format_ticks,
)
from local_exchange.protocol import iso_us


class SharedMarket:
    """The market and the lock that lets tests read its true book from other threads."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.lock = threading.Lock()

    def next_batches(
        self, products: tuple[str, ...]
    ) -> list[tuple[str, list[RawChange]]]:
        with self.lock:
            return [(pid, self.market.next_batch(pid)) for pid in products]

    def copy_book(self, pid: str) -> tuple[list[RawLevel], list[RawLevel], int]:
        """Best-first raw levels and the price decimals, to format off the lock."""
        with self.lock:
            bids, asks = self.market.raw_levels(pid)
            return bids, asks, self.market.price_decimals(pid)

    def restate(self, pid: str) -> list[RawChange]:
        """The best bid as a change (what a ``bad_timestamp`` fault frame carries)."""
        with self.lock:
            price, size = self.market.raw_top_bid(pid)
            decimals = self.market.price_decimals(pid)
        return [(BID, format_ticks(price, decimals), format_size(size))]

    def heartbeat_sequence(self, pid: str) -> int:
        with self.lock:
            return self.market.changes_generated(pid) + 1_000_000

    def rest_view(
        self, pid: str, limit: int | None
    ) -> tuple[list[RawLevel], list[RawLevel], int, int]:
        """The best ``limit`` raw levels per side (None: all), price decimals and the
        Exchange ``sequence``, at once."""
        with self.lock:
            bids, asks = self.market.raw_levels(pid, limit)
            decimals = self.market.price_decimals(pid)
            return bids, asks, decimals, self.market.changes_generated(pid) + 1_000_000

    def corrupt_level(
        self, pid: str, hold_batches: int, rng: random.Random
    ) -> tuple[str, str, int, int]:
        """The true change of a silent corruption: ``(side, price text, old, new)``."""
        with self.lock:
            side, ticks, old, new = self.market.corrupt_level(pid, hold_batches, rng)
            return side, format_ticks(ticks, self.market.price_decimals(pid)), old, new


async def every(interval: float, tick: Callable[[], None], *, catch_up: float) -> None:
    """Call ``tick`` every ``interval`` s; more than ``catch_up`` intervals late, resync."""
    loop = asyncio.get_running_loop()
    next_t = loop.time()
    while True:
        next_t += interval
        delay = next_t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -catch_up * interval:
            next_t = loop.time()
        tick()


def dispatch(
    pid: str,
    changes: list[RawChange],
    now_ns: int,
    subs: list[tuple[Connection, str]],
) -> None:
    """Queue one batch on every subscriber, encoding it once per protocol and channel."""
    t = iso_us(now_ns)
    encoded: dict[tuple[str, str], list] = {}
    for conn, channel in subs:
        protocol = conn.protocol
        key = (protocol.name, channel)
        frames = encoded.get(key)
        if frames is None:
            frames = encoded[key] = protocol.updates(pid, changes, t, channel)
        for frame in frames:
            conn.put(protocol.update_label, frame)


Step = tuple[int, int, list[tuple[str, list[RawChange]]]]
"""``(generation, time.time_ns() when made, [(product, changes), ...])``: one market
step not yet on the socket."""


class MarketLoop:
    """Advances the true book and streams every change to its subscribers, ``lag`` steps
    behind the true book (the REST book runs ahead, as a real exchange's does).

    A step goes only to subscribers whose snapshot predates it (their snapshot, copied
    from the true book, already holds it). Its frames carry the time it was made, not
    sent (a client's frame times then never predate what its snapshot holds; a client
    measuring feed lag sees the lag too). :meth:`pause` sends what is held back.
    """

    def __init__(
        self, market: SharedMarket, registry: Registry, rate: float, lag: int = 0
    ) -> None:
        self._market = market
        self._registry = registry
        self._interval = 1.0 / rate
        self._lag = lag
        self._held: deque[Step] = deque()
        self.paused = False

    async def run(self) -> None:
        await every(self._interval, self.tick, catch_up=5)

    def tick(self) -> None:
        if self.paused:
            return
        batches = self._market.next_batches(self._registry.products)
        self._hold(batches)

    def _hold(self, batches: list[tuple[str, list[RawChange]]]) -> None:
        self._registry.generation += 1
        self._held.append((self._registry.generation, time.time_ns(), batches))
        lag = 0 if self.paused else self._lag
        while len(self._held) > lag:
            self._send(*self._held.popleft())

    def _send(
        self, generation: int, made_ns: int, batches: list[tuple[str, list[RawChange]]]
    ) -> None:
        for pid, changes in batches:
            subs = self._registry.l2[pid]
            if subs:
                targets = [key for key, since in subs.items() if since < generation]
                if targets:
                    dispatch(pid, changes, made_ns, targets)

    def pause(self) -> None:
        """Stop generating; every change generated so far is queued on return."""
        self.paused = True
        while self._held:
            self._send(*self._held.popleft())

    def inject(self, pid: str, changes: list[RawChange]) -> None:
        """Queue ``changes`` of ``pid`` as a step of their own, behind every earlier one
        (a silent corruption's wrong size)."""
        self._hold([(pid, changes)])


class Heartbeats:
    """Both feeds' heartbeats; the Exchange ones only when there is a market."""

    def __init__(
        self,
        registry: Registry,
        interval: float,
        market: SharedMarket | None,
    ) -> None:
        self._registry = registry
        self._interval = interval
        self._market = market
        self._counter = 0
        self._started = time.monotonic()

    async def run(self) -> None:
        await every(self._interval, self.tick, catch_up=0)

    def tick(self) -> None:
        self._counter += 1
        now = time.time_ns()
        if self._market is not None:
            self._exchange(iso_us(now))
        at_conns = [c for c in self._registry.conns if c.at_heartbeats]
        if at_conns:
            frame = advanced_trade_protocol.heartbeat_frame(
                now, time.monotonic() - self._started, self._counter
            )
            for conn in at_conns:
                conn.put("heartbeats", frame)

    def _exchange(self, t: str) -> None:
        assert self._market is not None
        for pid, subs in self._registry.heartbeat.items():
            if not subs:
                continue
            seq = self._market.heartbeat_sequence(pid)
            frame = exchange_protocol.heartbeat_frame(pid, seq, t)
            for conn in subs:
                conn.put("heartbeat", frame)
