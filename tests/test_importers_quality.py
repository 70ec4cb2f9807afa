"""The quality report: crossed and locked episodes with their time, resets by reason, the
longest silence, skips; as text and as JSON."""

from __future__ import annotations

import json
from decimal import Decimal

from events import BID, BookChanges, BookReset, BookSnapshot
from importers.quality import QualityTracker
from importers.stream import CONNECTION, START, Item

S = 1_000_000_000
T0 = 1_780_000_000 * S
D = Decimal


def _snapshot(t, bids, asks):
    event = BookSnapshot("BTC-USD", bids, asks, None, "test", t)
    return Item(t, "BTC-USD", event, None, "0")


def _changes(t, *changes):
    event = BookChanges("BTC-USD", list(changes), None, "test", t)
    return Item(t, "BTC-USD", event, None, "0")


def _reset(t, reason):
    return Item(t, "BTC-USD", BookReset("BTC-USD", reason, "test", t), None, "0")


def _report():
    tracker = QualityTracker()
    for item in [
        _reset(T0, START),
        _snapshot(T0, [(D(100), D(1))], [(D(101), D(1))]),
        _changes(T0 + 1 * S, (BID, D(101), D(1))),  # locked
        _changes(T0 + 3 * S, (BID, D(102), D(1))),  # crossed
        _changes(T0 + 4 * S, (BID, D(102), D(0)), (BID, D(101), D(0))),  # fine
        _changes(T0 + 14 * S, (BID, D("100.5"), D(2))),  # after 10 s of silence
        _reset(T0 + 15 * S, CONNECTION),
        _snapshot(T0 + 16 * S, [(D(100), D(1))], [(D(100), D(1))]),  # locked again
        _changes(T0 + 18 * S, (BID, D(99), D(1))),  # still locked: one episode
    ]:
        tracker.add(item)
    tracker.skip("BTC-USD", "damaged rows", 3)
    tracker.skip(None, "damaged lines")
    tracker.ignored["ticker"] += 7
    tracker.ended_early.append(("a.csv.gz", "the compressed data ends early"))
    return tracker.report()


def test_episodes_resets_and_silence_are_measured_in_receive_time():
    report = _report()
    (quality,) = report.products
    assert quality.episodes == {"locked": 2, "crossed": 1}
    # locked 1 s -> 3 s, then 16 s -> the end (18 s): 4 s; crossed 3 s -> 4 s
    assert quality.episode_ns["locked"] == 4 * S
    assert quality.episode_ns["crossed"] == 1 * S
    assert quality.resets == {CONNECTION: 1}, "the first start is not a reset"
    assert quality.longest_silence_ns == 10 * S
    assert quality.silence_from_ns == T0 + 4 * S
    assert (quality.first_ns, quality.last_ns) == (T0, T0 + 18 * S)
    assert (quality.frames, quality.snapshots, quality.changes) == (7, 2, 6)


def test_the_report_as_text_and_as_json():
    report = _report()
    text = report.to_text()
    assert text.splitlines()[0] == (
        "BTC-USD: 2026-05-28T20:26:40.000000Z to 2026-05-28T20:26:58.000000Z (18 s); "
        "7 frames (2 snapshots, 6 level changes); 1 reset (1 connection); "
        "crossed 1 time (1 s in all); locked 2 times (4 s in all); "
        "longest silence 10 s from 2026-05-28T20:26:44.000000Z; skipped 3 damaged rows."
    )
    assert "skipped (no product): 1 damaged lines." in text
    assert "left out (not book data): 7 ticker." in text
    assert "a.csv.gz ends early (the compressed data ends early)" in text
    data = json.loads(json.dumps(report.to_dict()))
    product = data["products"][0]
    assert product["crossed_episodes"] == 1 and product["crossed_seconds"] == 1.0
    assert product["locked_episodes"] == 2 and product["locked_seconds"] == 4.0
    assert product["resets"] == {"connection": 1}
    assert product["longest_silence_seconds"] == 10.0
    assert product["first_ns"] == T0
    assert data["skipped"] == {"damaged lines": 1}
    assert data["ignored_frames"] == {"ticker": 7}
    assert data["ended_early"] == [
        {"file": "a.csv.gz", "why": "the compressed data ends early"}
    ]


def test_the_report_read_back_from_its_json_is_the_same_report():
    """A replay's processes share the conversion's report through its JSON."""
    from importers.quality import QualityReport

    report = _report()
    again = QualityReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.to_dict() == report.to_dict()
    assert again.to_text() == report.to_text()
    assert again.products[0].silence_from_ns == T0 + 4 * S


def test_the_best_prices_the_report_keeps_are_the_books_own():
    """The tracker's sides (a dict and a heap of prices, a deleted price left in the
    heap until it surfaces, the heap rebuilt when stale prices pile up) give the book's
    condition after every message: checked against :class:`orderbook.OrderBook` over
    random messages that delete the best levels often, re-add deleted prices, cross
    and lock the book, and take new snapshots."""
    import random

    from importers.quality import _Top
    from orderbook import BookCondition, OrderBook

    rng = random.Random(5)
    names = {BookCondition.CROSSED: "crossed", BookCondition.LOCKED: "locked"}
    prices = [D(100) + D(i) / 4 for i in range(40)]
    for _ in range(3):
        book, top = OrderBook("BTC-USD"), _Top()
        bids = [(p, D(1)) for p in prices[:20]]
        asks = [(p, D(1)) for p in prices[20:]]
        book.apply_snapshot(bids, asks)
        top.snapshot(bids, asks)
        for _ in range(3000):
            if rng.random() < 0.002:
                book.clear()
                top.clear()
            changes = []
            for _ in range(rng.randint(1, 4)):
                side = rng.choice(("bid", "ask"))
                best = book.best_bid() if side == "bid" else book.best_ask()
                if best is not None and rng.random() < 0.1:  # the best level goes
                    changes.append((side, best[0], D(0)))
                else:
                    size = D(0) if rng.random() < 0.3 else D(rng.randint(1, 9))
                    changes.append((side, rng.choice(prices), size))
            book.apply_changes(changes)
            top.changes([(BID if s == "bid" else s, p, z) for s, p, z in changes])
            best_bid, best_ask = book.best_bid(), book.best_ask()
            assert top.bid == (best_bid[0] if best_bid else None)
            assert top.ask == (best_ask[0] if best_ask else None)
            assert top.episode() == names.get(book.condition)
            assert len(top.bid_heap) <= 2 * len(prices) + 65, "stale prices pile up"
            assert len(top.ask_heap) <= 2 * len(prices) + 65, "stale prices pile up"


def test_a_level_that_comes_and_goes_away_from_the_top_does_not_grow_the_heap():
    from importers.quality import _Top

    top = _Top()
    top.snapshot([(D(100), D(1))], [(D(101), D(1))])
    for _ in range(5000):  # the best never goes: only a push can clean the heap
        top.changes([(BID, D(50), D(1)), ("ask", D(150), D(1))])
        top.changes([(BID, D(50), D(0)), ("ask", D(150), D(0))])
    assert len(top.bid_heap) <= 2 * len(top.bids) + 65
    assert len(top.ask_heap) <= 2 * len(top.asks) + 65
    assert (top.bid, top.ask) == (D(100), D(101))
