"""The fast constructors' guard: a frozen dataclass whose fields changed fails the import
instead of having its slots filled in the wrong order."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from common.slots import slot_setters
from events import BookChanges, book_changes
from records import OrderBookSummary


@dataclass(frozen=True, slots=True)
class _Pair:
    first: int
    second: str


def test_the_setters_fill_the_slots_named_in_order() -> None:
    set_first, set_second = slot_setters(_Pair, ("first", "second"))
    pair = object.__new__(_Pair)
    set_first(pair, 1)
    set_second(pair, "two")
    assert pair == _Pair(1, "two")


@pytest.mark.parametrize(
    "names", [("second", "first"), ("first",), ("first", "second", "third")]
)
def test_fields_moved_added_or_removed_fail_the_import(names) -> None:
    with pytest.raises(ImportError, match=r"test_common_slots\._Pair changed"):
        slot_setters(_Pair, names)


def test_the_fast_constructors_build_what_the_classes_build() -> None:
    assert book_changes("BTC-USD", [], None, "exchange", 5) == BookChanges(
        "BTC-USD", [], None, "exchange", 5
    )
    fast = OrderBookSummary.from_top(
        "BTC-USD", Decimal("99"), Decimal("1"), Decimal("101"), Decimal("3")
    )
    assert type(fast) is OrderBookSummary
    assert fast == OrderBookSummary(
        "BTC-USD",
        None,
        Decimal("99"),
        Decimal("1"),
        Decimal("101"),
        Decimal("3"),
        fast.spread,
        fast.spread_pct,
        fast.mid,
        fast.imbalance,
        fast.microprice,
        "",
    )
    assert (fast.spread, fast.mid) == (Decimal("2"), Decimal("100"))
