"""What the book's keying of levels could get wrong: every written form of a price is
one level and keeps its first form, order across scales (tiny prices, prices next to
the domain's 1e14 with 14 decimals, prices beyond the domain), snapshots of checked
levels (:class:`orderbook.CheckedLevels`, not checked again), deep copies, and state
pickled by earlier versions. Written while trying integer keys (``price * 1e14``,
measured slower on the change path: see the notes in docs/performance.md); they hold
for any keying."""

from __future__ import annotations

import copy
import json
import pickle
from decimal import Decimal as D

import pytest

from coinbase.fast_snapshot import decode_exchange_snapshot
from common.domain import all_prices, all_sizes
from events import BID
from orderbook import CheckedChanges, CheckedLevels, InvalidChange, OrderBook

NEAR_LIMIT = D("99999999999999.99999999999999")  # < 1e14, 14 decimals, 28 digits
BELOW_IT = D("99999999999999.99999999999998")


def checked_levels(*pairs: tuple[str, str]) -> CheckedLevels:
    levels = CheckedLevels((D(p), D(s)) for p, s in pairs)
    assert all_prices([p for p, _ in levels]) and all_sizes([s for _, s in levels])
    return levels


def text(book: OrderBook) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return (
        [(str(p), str(s)) for p, s in book.bids],
        [(str(p), str(s)) for p, s in book.asks],
    )


@pytest.mark.parametrize("checked", [False, True])
def test_one_level_for_every_form_of_a_price_and_its_first_form_kept(checked):
    book = OrderBook("BTC-USD")
    book.apply_snapshot(
        checked_levels(("8442.65", "1")) if checked else [("8442.65", "1")],
        checked_levels(("8443", "1")) if checked else [("8443", "1")],
    )
    make = CheckedChanges if checked else list
    book.apply_changes(
        make([(BID if checked else "bid", D("8442.65000000"), D("2.5"))])
    )
    assert text(book)[0] == [("8442.65", "2.5")]
    book.apply_changes(make([(BID if checked else "bid", D("8442.650"), D("0"))]))
    assert text(book)[0] == []
    book.apply_changes(
        make([(BID if checked else "bid", D("8442.650"), D("3"))])
    )  # new: new first form
    assert text(book)[0] == [("8442.650", "3")]


@pytest.mark.parametrize("checked", [False, True])
def test_a_price_repeated_in_a_snapshot_keeps_its_first_form_and_last_size(checked):
    pairs = [("8442.65", "1"), ("8442.6500", "2"), ("8442.66", "3"), ("8442.66", "0")]
    book = OrderBook("BTC-USD")
    book.apply_snapshot(checked_levels(*pairs) if checked else pairs, [])
    assert text(book)[0] == [("8442.65", "2")]


def test_ordering_across_scales_tiny_and_huge_prices():
    prices = [
        "0.00000001",
        "1E-14",
        "0.00000000000002",
        "9.99999999999999",
        "10",
        "10.00000000000001",
        "1.5",
        "1.50000000000001",
        "1.49999999999999",
        str(BELOW_IT),
        str(NEAR_LIMIT),
        "65083.66",
        "65083.6",
    ]
    pairs = [(p, "1") for p in prices]
    book = OrderBook("X-Y")
    book.apply_snapshot(checked_levels(*pairs), [])
    expected = sorted(D(p) for p in prices)
    assert [p for p, _ in book.bids] == expected
    assert book.best_bid() == (NEAR_LIMIT, D(1))
    book.apply_changes(CheckedChanges([(BID, NEAR_LIMIT, D(0))]))
    assert book.best_bid() == (BELOW_IT, D(1))
    assert [p for p, _ in book.levels("bid")] == expected[::-1][1:]


def test_prices_beyond_the_domain_are_still_exact_levels():
    """The book itself takes any finite price > 0 (the decoders enforce the domain):
    keys beyond it are Fractions or big ints, in one side with the int keys."""
    tiny, tinier = D("1E-20"), D("1.0000000000000000001E-20")
    long = D("1." + "0" * 38 + "1")
    book = OrderBook("X-Y")
    book.apply_snapshot([(tiny, 1), (D(1), 2), (D("1E+20"), 3)], [(D("2E+20"), 1)])
    book.apply_changes([("bid", tinier, "4"), ("bid", long, "5"), ("bid", "1.0", "6")])
    assert [p for p, _ in book.bids] == [tiny, tinier, D(1), long, D("1E+20")]
    assert dict(book.bids)[D(1)] == D(6)
    assert book.liquidity_within(D(10000)) == (D(19), D(1))  # band [0, 3E+20]
    assert book.liquidity_within(D(5000)) == (D(3), D(1))  # [7.5E+19, 2.25E+20]
    book.apply_changes([("bid", D("1.00000000000000000000E-20"), "0")])
    assert [p for p, _ in book.bids][0] == tinier


def test_an_invalid_change_leaves_the_book_as_it_was():
    book = OrderBook("X-Y")
    book.apply_snapshot([("1.5", "1")], [("2", "1")])
    before = copy.deepcopy(book)
    with pytest.raises(InvalidChange):
        book.apply_changes([("bid", "1.50", "0"), ("ask", "Infinity", "1")])
    assert text(book) == text(before) and book == before


def test_a_deep_copy_is_independent_both_ways():
    book = OrderBook("X-Y")
    book.apply_snapshot(checked_levels(("1", "1"), ("2", "2")), [("3", "1")])
    twin = copy.deepcopy(book)
    twin.apply_changes(CheckedChanges([(BID, D("2.0"), D(5)), (BID, D(1), D(0))]))
    book.apply_changes([("ask", "4", "1")])
    assert text(book) == ([("1", "1"), ("2", "2")], [("3", "1"), ("4", "1")])
    assert text(twin) == ([("2", "5")], [("3", "1")])


# pickle.dumps(book, 2) by the book keyed by Decimal prices (main at d321909) of
# bids 8442.65000000 x 1.50, 0.00000001 x 2, NEAR_LIMIT x 3 and asks NEAR_LIMIT x
# 0.00000001, 1E+2 x 7: recovery reads state written before the keys changed.
V1_BLOB = bytes.fromhex(
    "8002636f72646572626f6f6b0a4f72646572426f6f6b0a710029817101284b0158070000004254"
    "432d5553447102583000000031452d3820383434322e36353030303030302039393939393939393939"
    "393939392e3939393939393939393939393939710358080000003220312e353020337104582200"
    "000031452b322039393939393939393939393939392e3939393939393939393939393939710558"
    "06000000372031452d387106747107622e"
)


def test_a_book_pickled_before_the_keys_changed_still_loads():
    book = pickle.loads(V1_BLOB)
    assert text(book) == (
        [("1E-8", "2"), ("8442.65000000", "1.50"), (str(NEAR_LIMIT), "3")],
        [("1E+2", "7"), (str(NEAR_LIMIT), "1E-8")],
    )
    assert book.top() == (NEAR_LIMIT, D(3), D(100), D(7))
    book.apply_changes(CheckedChanges([(BID, D("8442.65"), D(4))]))
    assert text(book)[0][1] == ("8442.65000000", "4")
    # and the state it writes is still version 1, the same strings
    assert pickle.loads(pickle.dumps(book)) == book
    assert book.__getstate__()[0] == 1


def test_the_snapshot_decoder_hands_over_checked_levels_the_book_takes_as_they_are():
    bids = [(f"{65000 - k * 0.25:.2f}", f"{k + 1}.00000000") for k in range(1500)]
    asks = [(f"{65001 + k * 0.25:.2f}", "0.5") for k in range(1500)] + [("65001", "0")]
    frame = json.dumps(
        {"type": "snapshot", "product_id": "BTC-USD", "bids": bids, "asks": asks}
    )
    snap = decode_exchange_snapshot(frame)
    assert type(snap.bids) is CheckedLevels and type(snap.asks) is CheckedLevels
    fast, checked = OrderBook("BTC-USD"), OrderBook("BTC-USD")
    fast.apply_snapshot(snap.bids, snap.asks)
    checked.apply_snapshot(list(snap.bids), list(snap.asks))
    assert text(fast) == text(checked)
    assert fast.top() == (D(65000), D(1), D("65001.25"), D("0.5"))
