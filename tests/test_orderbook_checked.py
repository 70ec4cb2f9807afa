"""Checked changes (issue 21): a list of changes the decoders built from values they
checked is applied without the book's own checks, to the same book as any list."""

from __future__ import annotations

import copy
import json
import pickle
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from coinbase.decode import FrameDecoder
from events import ASK, BID, BookChanges
from orderbook import CheckedChanges, OrderBook
from tests.support import frames

prices = st.integers(min_value=1, max_value=40).map(lambda k: Decimal(k) / 4)
sizes = st.sampled_from([Decimal("0"), Decimal("0E-8"), Decimal("1.5"), Decimal("2")])
changes = st.lists(st.tuples(st.sampled_from([BID, ASK]), prices, sizes), max_size=8)


@settings(max_examples=80, deadline=None)
@given(st.lists(changes, min_size=1, max_size=12))
def test_checked_changes_give_the_book_plain_ones_give(messages):
    start = OrderBook("BTC-USD")
    start.apply_snapshot([(Decimal(1), Decimal(1))], [(Decimal(9), Decimal(1))])
    plain, checked = copy.deepcopy(start), copy.deepcopy(start)
    for message in messages:
        plain.apply_changes(list(message))
        checked.apply_changes(CheckedChanges(message))
        assert checked == plain
        assert list(checked.bids) == list(plain.bids)  # the sorted halves agree
        assert list(checked.asks) == list(plain.asks)
        assert checked.top() == plain.top()


def test_the_decoders_hand_checked_changes_that_travel_between_workers():
    for typed, kind in ((True, CheckedChanges), (False, list)):
        decoder = FrameDecoder("exchange", "test", typed=typed)
        decoder.decode(json.dumps(frames.exchange_snapshot()), 1)
        (event,) = decoder.decode(json.dumps(frames.exchange_l2update()), 1)
        assert type(event.changes) is kind
        again = pickle.loads(pickle.dumps(event, pickle.HIGHEST_PROTOCOL))
        assert again == event and type(again.changes) is kind
    assert isinstance(event, BookChanges)
