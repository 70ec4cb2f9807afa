"""Property test: OrderBook against the naive reference book (plain dicts, max/min).

Random snapshots and change messages (mixed side spellings, several text forms of the
same price, every zero form, deletes of absent levels, and now and then an invalid
change that must reject its whole message) are applied to both; after every step the
full book, best levels, condition, summary and depth analytics must agree.
"""

from __future__ import annotations

import copy
import pickle
from decimal import Decimal, localcontext

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import Side
from orderbook import BookCondition, InvalidChange, OrderBook
from tests.support.reference_book import InvalidMessage, ReferenceBook

ZEROS = ["0", "0.00", "0.00000000", "0.0"]


# Prices on a 0.25 grid, sent in several text forms. Bids mostly sit below asks, with
# an overlap so that crossed and locked books happen too; few distinct prices so that
# changes and deletes hit existing levels often.
FORMS = ("plain", "padded", "decimal")


def render(value: Decimal, form: str) -> str | Decimal:
    if form == "plain":
        return str(value)
    if form == "padded":
        return f"{value:.8f}"
    return Decimal(f"{value:.4f}")


def price_text(low: int, high: int):
    values = st.integers(min_value=low, max_value=high).map(lambda k: Decimal(k) / 4)
    return st.builds(render, values, st.sampled_from(FORMS))


bid_price, ask_price = price_text(1, 12), price_text(9, 20)
size_text = st.one_of(
    st.sampled_from(ZEROS),
    st.integers(min_value=1, max_value=10**6).map(lambda n: f"{Decimal(n) / 10**4:f}"),
    st.integers(min_value=1, max_value=10**6).map(lambda n: Decimal(n).scaleb(-8)),
)
bid_level = st.tuples(bid_price, size_text)
ask_level = st.tuples(ask_price, size_text)
change = st.one_of(
    st.tuples(st.sampled_from([Side.BID, "bid"]), bid_price, size_text),
    st.tuples(st.sampled_from([Side.ASK, "ask"]), ask_price, size_text),
)
bad_change = st.sampled_from(
    [
        ("bid", "1.00", "-0.5"),
        ("ask", "NaN", "1"),
        ("ask", "2", "Infinity"),
        ("bid", "0", "1"),
        ("bid", "x", "1"),
        ("up", "1", "1"),
        ("bid", "1"),
    ]
)


@st.composite
def message(draw):
    changes = draw(st.lists(change, max_size=6))
    if draw(st.integers(0, 9)) == 0:  # ~10% of messages carry one invalid change
        changes.insert(draw(st.integers(0, len(changes))), draw(bad_change))
    return changes


step = st.one_of(
    st.tuples(
        st.just("snapshot"),
        st.lists(bid_level, max_size=10),
        st.lists(ask_level, max_size=10),
    ),
    st.tuples(st.just("changes"), message()),
)


def assert_agrees(book: OrderBook, model: ReferenceBook) -> None:
    assert dict(book.bids) == model.sides["bid"]
    assert dict(book.asks) == model.sides["ask"]
    assert list(book.bids) == sorted(model.sides["bid"].items())
    assert list(book.asks) == sorted(model.sides["ask"].items())
    assert len(book) == len(model.sides["bid"]) + len(model.sides["ask"])
    bid, ask = model.best("bid"), model.best("ask")
    assert book.best_bid() == bid
    assert book.best_ask() == ask
    assert book.top() == (None if bid is None or ask is None else bid + ask)
    condition = model.condition()
    assert book.condition is condition
    assert book.depth("bid", 3) == model.depth("bid", 3)
    assert book.depth("ask", 3) == model.depth("ask", 3)

    summary = book.summary(feed="sim")
    if condition is not BookCondition.OK:
        assert summary is None
        return
    (bp, bs), (ap, as_) = bid, ask
    with localcontext() as ctx:
        ctx.prec = 50
        assert summary.spread == ap - bp
        assert summary.mid == (ap + bp) / 2
        assert summary.spread_pct == ((ap - bp) / ap * 100).quantize(Decimal("1E-10"))
        assert summary.imbalance == (bs / (bs + as_)).quantize(Decimal("1E-10"))
        micro = (bp * as_ + ap * bs) / (bs + as_)
        assert abs(summary.microprice - micro) <= Decimal("0.00005")
    assert (summary.bid_price, summary.bid_size) == bid
    assert (summary.ask_price, summary.ask_size) == ask
    assert summary.feed == "sim" and summary.product_id == book.product_id


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(step, min_size=1, max_size=25))
def test_book_matches_naive_model(steps):
    book, model = OrderBook("PROP-USD"), ReferenceBook()
    for kind, *args in steps:
        state_before = pickle.dumps(book)
        if kind == "snapshot":
            book.apply_snapshot(*args)
            model.snapshot(*args)
        else:
            (changes,) = args
            try:
                model.changes(changes)  # validates the whole message first
            except InvalidMessage:
                with pytest.raises(InvalidChange):
                    book.apply_changes(changes)
                assert pickle.dumps(book) == state_before  # untouched, byte for byte
            else:
                book.apply_changes(changes)
        assert_agrees(book, model)
    assert pickle.loads(pickle.dumps(book)) == book
    assert copy.deepcopy(book) == book


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.lists(bid_level, max_size=15),
    st.lists(ask_level, max_size=15),
    st.integers(min_value=1, max_value=4000).map(lambda n: Decimal(n) / 100),
)
def test_vwap_and_liquidity_match_naive_walk(bids, asks, size):
    book, model = OrderBook("PROP-USD"), ReferenceBook()
    book.apply_snapshot(bids, asks)
    model.snapshot(bids, asks)
    for side in ("bid", "ask"):
        levels = model.depth(side, 10**6)
        remaining, notional = size, Decimal(0)
        for price, available in levels:
            take = min(available, remaining)
            notional += price * take
            remaining -= take
            if remaining == 0:
                break
        fill = book.vwap_for_size(side, size)
        assert fill.filled == size - remaining
        assert fill.notional == notional
        assert fill.complete == (remaining == 0)
    result = book.liquidity_within(250)
    bid, ask = model.best("bid"), model.best("ask")
    if bid is None or ask is None:
        assert result is None
        return
    mid = (bid[0] + ask[0]) / 2
    low, high = mid - mid * 250 / 10_000, mid + mid * 250 / 10_000
    assert result == (
        sum((s for p, s in model.sides["bid"].items() if p >= low), Decimal(0)),
        sum((s for p, s in model.sides["ask"].items() if p <= high), Decimal(0)),
    )
