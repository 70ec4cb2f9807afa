"""Benchmark the order book on a BTC-USD-shaped book; prints one line per figure.

Run from the repository root: ``python bench/bench_orderbook.py`` (add ``--quick`` for
a smaller run). Not a test: figures depend on the machine. Every figure is the median
of several repeats timed with ``time.perf_counter_ns``. ``main()`` returns the figures.
"""

from __future__ import annotations

import copy
import gc
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from book_shape import (
    advanced_trade_snapshot_json,
    exchange_snapshot_json,
    make_levels,
    make_messages,
)

from coinbase.decode import FrameDecoder
from orderbook import OrderBook

TARGET_CHANGE_NS = 1_000
TARGET_SNAPSHOT_MS = 60.0
TARGET_BASELINE_RATIO = 50.0
BASELINE_CHANGES = 2_000


def _median_ns(
    run: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None
) -> int:
    """Median wall time of ``run()`` over ``repeats``; ``setup()`` is not timed."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        gc.collect()
        start = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - start)
    return int(statistics.median(times))


def _without_gc(load: Callable[[bytes], OrderBook], raw: bytes) -> OrderBook:
    """What a parser can do for a big snapshot: no GC passes over fresh containers."""
    gc.disable()
    try:
        return load(raw)
    finally:
        gc.enable()


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- snapshot load: raw frame -> the project's parser -> a ready book ------------------


def _load(protocol: str, raw: bytes) -> OrderBook:
    (snapshot,) = FrameDecoder(protocol, "bench").decode(raw)
    book = OrderBook(snapshot.product_id)
    book.apply_snapshot(snapshot.bids, snapshot.asks)
    return book


def exchange_snapshot_to_book(raw: bytes) -> OrderBook:
    """Exchange wire snapshot -> ready book, through coinbase_parse.FrameDecoder."""
    return _load("exchange", raw)


def advanced_trade_snapshot_to_book(raw: bytes) -> OrderBook:
    """Advanced Trade l2_data snapshot (sequence_num 0) -> ready book."""
    return _load("advanced-trade", raw)


# -- the original tutorial's algorithm, for the ratio -------------------------------


def baseline_apply(
    bids: dict[float, float],
    asks: dict[float, float],
    messages: list[list[tuple[str, float, float]]],
) -> None:
    """Plain dicts of floats, best prices recomputed with max/min after every change."""
    for message in messages:
        for side, price, size in message:
            book = bids if side == "bid" else asks
            if size == 0:
                book.pop(price, None)
            else:
                book[price] = size
            best_bid = max(bids)
            best_ask = min(asks)
            _ = (best_bid, bids[best_bid], best_ask, asks[best_ask])


def main(quick: bool = False) -> dict[str, float]:
    repeats = 3 if quick else 5
    n_changes = 20_000 if quick else 100_000
    bids, asks = make_levels()
    messages = make_messages(bids, asks, n_changes)
    n_levels = len(bids) + len(asks)
    snapshot = exchange_snapshot_json(bids, asks)
    at_snapshot = advanced_trade_snapshot_json(bids, asks)
    initial = exchange_snapshot_to_book(snapshot)
    figures: dict[str, float] = {}

    print(
        f"book: {len(bids)} bids + {len(asks)} asks = {n_levels} levels; "
        f"{n_changes} changes in {len(messages)} messages "
        f"({n_changes / len(messages):.1f} changes/message); median of {repeats}"
    )

    # Changes: every repeat starts from a fresh copy of the same book (copy untimed).
    books: list[OrderBook] = []

    def fresh() -> None:
        books[:] = [copy.deepcopy(initial)]

    def apply_all() -> None:
        apply = books[0].apply_changes
        for message in messages:
            apply(message)

    def apply_all_with_top() -> None:
        book = books[0]
        apply, top = book.apply_changes, book.top
        last = None
        for message in messages:
            apply(message)
            now = top()
            if now != last:
                last = now

    ns = _median_ns(apply_all, repeats, fresh) / n_changes
    figures["change_ns"] = ns
    ok = ns <= TARGET_CHANGE_NS
    print(
        f"apply_changes: {ns:8.0f} ns/change   "
        f"(target <= {TARGET_CHANGE_NS})  {_mark(ok)}"
    )
    assert books[0].summary() is not None, "bench stream crossed the book"
    ns = _median_ns(apply_all_with_top, repeats, fresh) / n_changes
    figures["change_with_top_ns"] = ns
    print(f"apply_changes + top() per message: {ns:8.0f} ns/change   (info)")

    # Summaries of the final book.
    book = books[0]
    stamp = None
    n_summaries = 20_000

    def summaries() -> None:
        summary = book.summary
        for _ in range(n_summaries):
            summary(stamp, "exchange")

    ns = _median_ns(summaries, repeats) / n_summaries
    figures["summary_ns"] = ns
    print(f"summary(): {ns:8.0f} ns/summary   (info)")
    top_n = 100_000
    ns = _median_ns(lambda: [book.top() for _ in range(top_n)], repeats) / top_n
    figures["top_ns"] = ns
    print(f"top(): {ns:8.0f} ns/call   (info)")

    # Snapshots from raw JSON text to a ready book.
    for label, raw, load in (
        ("exchange", snapshot, exchange_snapshot_to_book),
        ("advanced-trade", at_snapshot, advanced_trade_snapshot_to_book),
    ):
        ms = _median_ns(lambda raw=raw, load=load: load(raw), repeats) / 1e6
        figures[f"snapshot_{label}_ms"] = ms
        figures[f"snapshot_{label}_mb"] = len(raw) / 1e6
        ok = ms <= TARGET_SNAPSHOT_MS
        print(
            f"snapshot load ({label} wire form, {len(raw) / 1e6:.2f} MB, "
            f"{n_levels} levels): {ms:6.1f} ms   "
            f"(target <= {TARGET_SNAPSHOT_MS:.0f})  {_mark(ok)}"
        )
    for label, raw, load in (
        ("exchange", snapshot, exchange_snapshot_to_book),
        ("advanced-trade", at_snapshot, advanced_trade_snapshot_to_book),
    ):
        ms = (
            _median_ns(lambda raw=raw, load=load: _without_gc(load, raw), repeats) / 1e6
        )
        figures[f"snapshot_{label}_nogc_ms"] = ms
        print(f"  {label} with the cyclic GC paused during the load: {ms:6.1f} ms")
        ms = (
            _median_ns(
                lambda raw=raw, label=label: FrameDecoder(label, "b").decode(raw),
                repeats,
            )
            / 1e6
        )
        figures[f"snapshot_{label}_parse_ms"] = ms
        print(f"  {label} of which parsing (FrameDecoder.decode): {ms:6.1f} ms")
    assert exchange_snapshot_to_book(snapshot) == initial
    assert advanced_trade_snapshot_to_book(at_snapshot) == initial
    pairs: list = []

    def fresh_pairs() -> None:  # fresh Decimals: their hashes are not cached yet
        (decoded,) = FrameDecoder("exchange", "b").decode(snapshot)
        pairs[:] = [decoded.bids, decoded.asks]

    ms = (
        _median_ns(
            lambda: OrderBook("BTC-USD").apply_snapshot(*pairs), repeats, fresh_pairs
        )
        / 1e6
    )
    figures["apply_snapshot_ms"] = ms
    print(
        f"  of which apply_snapshot(Decimal pairs): {ms:6.1f} ms "
        "(mostly hashing 45,000 fresh Decimal prices into the dict)"
    )

    # Bytewax state handling: deep copy every epoch, pickle for recovery.
    ms = _median_ns(lambda: copy.deepcopy(initial), repeats) / 1e6
    figures["deepcopy_ms"] = ms
    print(f"deepcopy: {ms:6.1f} ms   (info)")
    blob = pickle.dumps(initial, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(blob) == initial
    ms = (
        _median_ns(
            lambda: pickle.loads(pickle.dumps(initial, pickle.HIGHEST_PROTOCOL)),
            repeats,
        )
        / 1e6
    )
    figures["pickle_roundtrip_ms"] = ms
    figures["pickle_kb"] = len(blob) / 1e3
    print(f"pickle dumps+loads: {ms:6.1f} ms, {len(blob) / 1e3:.0f} KB   (info)")
    plain = {"bids": dict(initial.bids), "asks": dict(initial.asks)}
    plain_blob = pickle.dumps(plain, pickle.HIGHEST_PROTOCOL)
    ms = (
        _median_ns(
            lambda: pickle.loads(pickle.dumps(plain, pickle.HIGHEST_PROTOCOL)),
            repeats,
        )
        / 1e6
    )
    print(
        f"  for comparison, pickling the levels as Decimal dicts: {ms:6.1f} ms, "
        f"{len(plain_blob) / 1e3:.0f} KB"
    )

    # Baseline: the tutorial's algorithm on the first BASELINE_CHANGES changes.
    subset, count = [], 0
    for message in messages:
        if count >= BASELINE_CHANGES:
            break
        subset.append(message)
        count += len(message)
    float_subset = [
        [(side, float(price), float(size)) for side, price, size in message]
        for message in subset
    ]
    float_books: list[dict[float, float]] = []

    def fresh_floats() -> None:
        float_books[:] = [
            {float(p): float(s) for p, s in bids},
            {float(p): float(s) for p, s in asks},
        ]

    base_ns = (
        _median_ns(lambda: baseline_apply(*float_books, float_subset), 3, fresh_floats)
        / count
    )

    def ours_subset() -> None:
        book = books[0]
        apply, top = book.apply_changes, book.top
        for message in subset:
            apply(message)
            top()

    ours_ns = _median_ns(ours_subset, repeats, fresh) / count
    ratio = base_ns / ours_ns
    figures["baseline_ns"] = base_ns
    figures["ours_subset_ns"] = ours_ns
    figures["baseline_ratio"] = ratio
    print(
        f"baseline (float dicts, max/min after every change), first {count} changes: "
        f"{base_ns:,.0f} ns/change vs ours (apply + top() per message) "
        f"{ours_ns:,.0f} ns/change"
    )
    print(
        f"speed-up over baseline: {ratio:,.0f}x   "
        f"(target >= {TARGET_BASELINE_RATIO:.0f}x)  {_mark(ratio >= TARGET_BASELINE_RATIO)}"
    )
    return figures


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
