"""Benchmark the order book on a BTC-USD-shaped book; prints one line per figure.

Run from the repository root: ``python bench/bench_orderbook.py`` (add ``--quick`` for
a smaller run). Not a test: figures depend on the machine. Every figure is the median
of several repeats timed with ``time.process_time_ns``: the process's CPU time, since
everything here runs on one thread, and on a machine shared with other work the wall
time also counts the waits for a core (at a load average of 5 on 2 cores, wall figures
of one run swung 2x between repeats). ``main()`` returns the figures.
"""

from __future__ import annotations

import copy
import gc
import json
import pickle
import statistics
import sys
import time
import tracemalloc
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
TARGET_SNAPSHOT_JSON_RATIO = 1.0
"""Issue 21: a snapshot frame to a ready book in at most the time of ``json.loads``."""
TARGET_PATH_NS = 1_500
"""Issue 21: wire frame -> FrameDecoder.decode -> apply_changes -> top(), per change."""
TARGET_BASELINE_RATIO = 50.0
BASELINE_CHANGES = 2_000


def _median_ns(
    run: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None
) -> int:
    """Median CPU time of ``run()`` over ``repeats``; ``setup()`` is not timed."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        gc.collect()
        start = time.process_time_ns()
        run()
        times.append(time.process_time_ns() - start)
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


def book_mib(raw: bytes) -> float:
    """MiB that a book loaded from ``raw`` keeps allocated (its levels and sides)."""
    gc.collect()
    tracemalloc.start()
    try:
        book = exchange_snapshot_to_book(raw)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(book)
    return held / 2**20


# -- the whole path of an update: wire frame -> events -> book -> top -----------------


def _compact(frame: dict) -> str:
    """JSON as Coinbase sends it: no spaces (as book_shape's snapshots, via orjson)."""
    return json.dumps(frame, separators=(",", ":"))


def update_frames(
    protocol: str, messages: list[list[tuple[str, object, object]]]
) -> list[str]:
    """The messages as the feed sends them (compact JSON text, a str as the WebSocket
    hands it over)."""
    out = []
    if protocol == "exchange":
        sides = {"bid": "buy", "ask": "sell"}
        for i, message in enumerate(messages):
            out.append(
                _compact(
                    {
                        "type": "l2update",
                        "product_id": "BTC-USD",
                        "changes": [[sides[s], str(p), str(q)] for s, p, q in message],
                        "time": f"2026-08-09T21:05:{i % 60:02d}.170326Z",
                    }
                )
            )
        return out
    sides = {"bid": "bid", "ask": "offer"}
    for i, message in enumerate(messages, 1):
        updates = [
            {
                "side": sides[s],
                "event_time": "2026-08-09T21:05:48.170326Z",
                "price_level": str(p),
                "new_quantity": str(q),
            }
            for s, p, q in message
        ]
        out.append(
            _compact(
                {
                    "channel": "l2_data",
                    "client_id": "",
                    "timestamp": f"2026-08-09T21:05:{i % 60:02d}.483587501Z",
                    "sequence_num": i,
                    "events": [
                        {"type": "update", "product_id": "BTC-USD", "updates": updates}
                    ],
                }
            )
        )
    return out


def decode_apply_top(decoder: FrameDecoder, book: OrderBook, frames: list[str]) -> None:
    """What the service does per frame: decode, apply each event's changes, the top."""
    decode, apply, top = decoder.decode, book.apply_changes, book.top
    for frame in frames:
        for event in decode(frame):
            apply(event.changes)
        top()


def _time_path(
    protocol: str, typed: bool, initial: OrderBook, frames: list[str]
) -> int:
    """Wall ns of :func:`decode_apply_top` over ``frames`` from a fresh copy of
    ``initial`` and a fresh decoder (its price cache empty, as on a new connection)."""
    book = copy.deepcopy(initial)
    decoder = FrameDecoder(protocol, "bench", typed=typed)
    decoder.next_sequence = 1  # (Advanced Trade: the snapshot was message 0)
    return _median_ns(lambda: decode_apply_top(decoder, book, frames), 1)


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

    # The whole path, wire frame to top, typed (what runs) beside generic (the way
    # every frame was decoded before issue 21), alternating; every repeat starts from
    # a fresh book and a fresh decoder (its price cache empty, as on a new connection).
    for protocol in ("exchange", "advanced-trade"):
        frames = update_frames(protocol, messages)
        timed: dict[bool, list[int]] = {True: [], False: []}
        for _ in range(repeats):
            for typed in (True, False):
                timed[typed].append(_time_path(protocol, typed, initial, frames))
        ns = statistics.median(timed[True]) / n_changes
        base_ns = statistics.median(timed[False]) / n_changes
        figures[f"path_{protocol}_ns"] = ns
        figures[f"path_{protocol}_generic_ns"] = base_ns
        print(
            f"decode + apply + top ({protocol} frames, str): {ns:6.0f} ns/change, "
            f"{base_ns / ns:4.2f}x faster than the generic decoding ({base_ns:,.0f} "
            f"ns/change)   (target <= {TARGET_PATH_NS})  {_mark(ns <= TARGET_PATH_NS)}"
        )

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
    # Alternating with its baseline (json.loads of the same text), so that a busy
    # machine hurts both alike; each is the median of the repeats.
    for label, raw, load in (
        ("exchange", snapshot, exchange_snapshot_to_book),
        ("advanced-trade", at_snapshot, advanced_trade_snapshot_to_book),
    ):
        ours, base = [], []
        for _ in range(repeats):
            ours.append(_median_ns(lambda raw=raw, load=load: load(raw), 1))
            base.append(_median_ns(lambda raw=raw: json.loads(raw), 1))
        ms = statistics.median(ours) / 1e6
        base_ms = statistics.median(base) / 1e6
        figures[f"snapshot_{label}_ms"] = ms
        figures[f"snapshot_{label}_json_loads_ms"] = base_ms
        figures[f"snapshot_{label}_mb"] = len(raw) / 1e6
        ratio = ms / base_ms
        ok = ms <= TARGET_SNAPSHOT_MS and ratio <= TARGET_SNAPSHOT_JSON_RATIO
        print(
            f"snapshot load ({label} wire form, {len(raw) / 1e6:.2f} MB, "
            f"{n_levels} levels): {ms:6.1f} ms = {ratio:4.2f}x json.loads of the "
            f"same text ({base_ms:5.1f} ms)   (target <= {TARGET_SNAPSHOT_MS:.0f} ms "
            f"and <= {TARGET_SNAPSHOT_JSON_RATIO:.1f}x)  {_mark(ok)}"
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

    def fresh_plain_pairs() -> None:  # as a plain list: the book checks every value
        fresh_pairs()
        pairs[:] = [list(side) for side in pairs]

    ms = (
        _median_ns(
            lambda: OrderBook("BTC-USD").apply_snapshot(*pairs),
            repeats,
            fresh_plain_pairs,
        )
        / 1e6
    )
    figures["apply_snapshot_unchecked_ms"] = ms
    print(f"  the same levels as plain lists (checked by the book again): {ms:6.1f} ms")
    figures["book_mib"] = book_mib(snapshot)
    print(
        f"memory held by the {n_levels}-level book: {figures['book_mib']:5.1f} MiB "
        "(tracemalloc, after the snapshot's temporaries are gone)   (info)"
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
