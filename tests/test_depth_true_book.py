"""Depth records from a replay of a recording equal the top N levels of the local
exchange's true book at the same moments.

The recorder watches a running local exchange. Several times the market is paused, a
marker frame (``unknown_type``: decoded by no client) is queued behind every generated
change, and once the recorder has received the marker on every product's connection the
true book is captured along with the wall-clock time; then the market resumes. In the
replay (``depth_interval=0``: a depth record at every book change) the last depth record
of each product timed before such a moment must be the true book's top 10 levels.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bytewax.testing import TestingSink, run_main

from dataflow import get_flow
from local_exchange.server import LocalExchange
from recording import recorder as recorder_module
from recording.recorder import record
from recording.replay import ReplaySource
from records import OrderBookDepth
from service.settings import Settings
from tests.support.flow import wait_until

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR"]
LEVELS = 10
PAUSES = 3


def _top(book: tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]) -> tuple:
    bids, asks = book
    return (
        tuple(sorted(bids.items(), reverse=True)[:LEVELS]),
        tuple(sorted(asks.items())[:LEVELS]),
    )


@pytest.mark.slow
def test_replayed_depth_records_are_the_true_top_levels_at_each_pause(
    tmp_path, monkeypatch
):
    frames: Counter = Counter()
    markers: Counter = Counter()
    original = recorder_module._ProductRecorder.received

    def counting(self, frame, received_ns):
        result = original(self, frame, received_ns)
        text = frame.decode() if isinstance(frame, bytes) else frame
        frames[self._product_id] += 1
        if "sim_unknown" in text:
            markers[self._product_id] += 1
        return result

    monkeypatch.setattr(recorder_module._ProductRecorder, "received", counting)

    path = tmp_path / "true-book.jsonl.gz"
    moments: list[tuple[datetime, dict[str, tuple]]] = []
    # 100 update batches a second: the 30 frames per product before each pause come in
    # 0.3 s (0.75 s at 40)
    with LocalExchange(PRODUCTS, depth=50, rate=100, seed=17) as exchange:
        stop = threading.Event()
        failure: list[BaseException] = []

        async def record_until_stopped():
            done = asyncio.Event()
            task = asyncio.create_task(
                record(path, PRODUCTS, "exchange", exchange.url(), stop=done)
            )
            while not stop.is_set() and not task.done():
                await asyncio.sleep(0.02)
            done.set()
            await task

        def run_recorder():
            try:
                asyncio.run(record_until_stopped())
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)

        thread = threading.Thread(target=run_recorder, daemon=True)
        thread.start()
        try:
            for round_ in range(1, PAUSES + 1):
                goal = {p: frames[p] + 30 for p in PRODUCTS}
                wait_until(
                    lambda goal=goal: (
                        failure or all(frames[p] >= goal[p] for p in PRODUCTS)
                    ),
                    60,
                    f"30 more frames per product before pause {round_}",
                    poll=0.01,
                )
                assert not failure, failure
                exchange.pause_market()
                exchange.send_malformed(kinds=["unknown_type"])
                wait_until(
                    lambda n=round_: failure or all(markers[p] >= n for p in PRODUCTS),
                    60,
                    f"marker {round_} on every product",
                    poll=0.01,
                )
                assert not failure, failure
                assert all(markers[p] == round_ for p in PRODUCTS), markers
                books = {p: _top(exchange.true_book(p)) for p in PRODUCTS}
                moments.append((datetime.now(UTC), books))
                time.sleep(0.002)  # a clock margin (not a wait): later frames are later
                exchange.resume_market()
        finally:
            stop.set()
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert not failure, failure

    out: list = []
    run_main(
        get_flow(
            Settings(
                spread_threshold_pct=Decimal(0), depth_levels=LEVELS, depth_interval=0
            ),
            source=ReplaySource(path),
            products=PRODUCTS,
            sink=TestingSink(out),
        )
    )
    records = [record for _, record in out]  # the sink gets (received_ns, record) pairs
    depth = [r for r in records if isinstance(r, OrderBookDepth)]
    assert {r.product_id for r in depth} == set(PRODUCTS)
    assert all(r.time is not None for r in depth)

    for product in PRODUCTS:
        mine = [r for r in depth if r.product_id == product]
        assert mine == sorted(mine, key=lambda r: r.time), product
        seen_tops = []
        for i, (moment, books) in enumerate(moments):
            bids, asks = books[product]
            assert len(bids) == LEVELS and len(asks) == LEVELS, (product, i)
            before = [r for r in mine if r.time < moment]
            assert before, (product, i)
            last = before[-1]
            assert (last.bids, last.asks) == (bids, asks), (product, i)
            seen_tops.append((bids, asks))
        # the market moved between pauses: each moment checks a different book
        assert len(set(seen_tops)) == PAUSES, product
