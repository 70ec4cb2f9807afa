"""The number and name domain (common/domain.py): what it accepts, what it refuses, and
the proof that any book made of values it accepts yields its records without exception,
in every thread context, with every decimal fitting Parquet's decimal(38, 18)."""

from __future__ import annotations

import re
from decimal import (
    Clamped,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Rounded,
    Subnormal,
    localcontext,
)

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.domain import (
    DECIMALS,
    LIMIT,
    DomainError,
    all_prices,
    all_sizes,
    check_output,
    is_price,
    is_product_id,
    is_size,
    price,
    price_in,
    product_id,
    size,
    size_in,
)
from orderbook import OrderBook
from records import OrderBookDepth, OrderBookSummary
from service.outputs.parquet import DECIMAL

D = Decimal

# -- single values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "65083.66",
        "65083.66000000",  # Exchange pads to 8 decimals
        "0.00001234",  # SHIB-USD's scale
        "1E-14",
        "0.00000000000001",
        "1E+13",
        "99999999999999.99999999999999",  # the largest: 14 + 14 digits
        "1",
    ],
)
def test_real_and_boundary_values_are_prices_and_sizes(text: str) -> None:
    assert price(text) == size(text) == D(text)
    assert is_price(D(text)) and is_size(D(text))


@pytest.mark.parametrize(
    "text, why",
    [
        ("1E+14", "not below 1E+14"),
        ("1e20", "not below 1E+14"),
        ("1e25", "not below 1E+14"),
        ("1e-40", "more than 14 decimals"),
        ("1.5E-14", "more than 14 decimals"),
        ("1e-999999999", "more than 14 decimals"),
        ("1.00000000000000000000", "more than 14 decimals"),  # zeros reach outputs
        ("NaN", "not a finite number"),
        ("-Infinity", "not a finite number"),
        ("-1", "must be"),
        ("abc", "not a decimal number"),
    ],
)
def test_values_outside_the_domain_are_refused_with_one_line(text, why) -> None:
    for check in (price, size):
        with pytest.raises(DomainError, match=re.escape(why)) as info:
            check(text)
        assert "\n" not in str(info.value)
    if why != "not a decimal number":
        assert not is_price(D(text)) and not is_size(D(text))


def test_zero_is_a_size_in_any_form_but_never_a_price() -> None:
    for text in ("0", "0.00000000", "-0", "0E-40"):
        assert size(text) == 0
        with pytest.raises(DomainError, match="must be > 0"):
            price(text)


def test_floats_and_hostile_text_are_refused_escaped_and_cut() -> None:
    with pytest.raises(DomainError, match="not float"):
        price(1.5)
    with pytest.raises(DomainError) as info:
        size("\x1b[31m" + "9" * 10_000)
    message = str(info.value)
    assert "\x1b" not in message and len(message) < 200


def _by_raising(check, text):
    try:
        return check(text)
    except DomainError:
        return None


@pytest.mark.parametrize(
    "text",
    [
        "6421.5",
        "0.00000000000001",  # 14 decimals: in
        "0.000000000000001",  # 15: out
        "0.000000000000010",  # 15 as written, though the value has 14: out
        "0.00000100",  # the cheap test cannot tell: the exact one says in
        "1E-14",
        "10E-15",  # 15 as written: out
        "1.5E-14",
        "1E+13",
        "1E+14",
        "1e14",
        "99999999999999.99999999999999",
        "99999999999999.999999999999990",
        "100000000000000",
        "0",
        "-0",
        "0E-40",
        "0E+40",
        "0.00",
        "-1",
        "1e-999999999",
        "1.00000000000000000000",
        " 5",
        "1_000.5",
        "\u0663.5",  # Arabic-Indic three: a digit to Decimal
        "NaN",
        "sNaN",
        "-Infinity",
        "",
        "abc",
        "0.-1",
    ],
)
def test_price_in_and_size_in_agree_with_price_and_size(text: str) -> None:
    """The readers' one-call checks take exactly the values price() and size() take."""
    for quick, check in ((price_in, price), (size_in, size)):
        got, want = quick(text), _by_raising(check, text)
        assert got == want and str(got) == str(want), (quick.__name__, text)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(10**30), 10**30),
    st.integers(-40, 20),
    st.sampled_from(["{c}E{e}", "{p}", "{p}000", "00{p}"]),
)
def test_price_in_and_size_in_agree_on_any_decimal_text(coefficient, exponent, form):
    value = D(f"{coefficient}E{exponent}")
    plain = f"{value:f}"
    if form == "{p}000" and "." not in plain:
        plain += "."  # trailing zeros after the point: more decimals as written
    text = form.format(c=coefficient, e=exponent, p=plain)
    assert price_in(text) == _by_raising(price, text)
    assert size_in(text) == _by_raising(size, text)


def test_product_ids_have_coinbase_shape() -> None:
    for good in ("BTC-USD", "ETH-EUR", "BIT-27DEC24-CDE", "1INCH-USD"):
        assert is_product_id(good) and product_id(good) == good
    for bad in (
        "../../..",
        "BTC-USD\n",
        "\x1b[2JBTC-USD",
        "btc-usd",
        "BTC",
        "A" * 10**6,
    ):
        assert not is_product_id(bad)
        with pytest.raises(DomainError) as info:
            product_id(bad)
        assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_check_output_refuses_what_parquet_cannot_hold() -> None:
    assert check_output(D("99999999999999999999.5"), "x") == D("99999999999999999999.5")
    for value in (D("1E+20"), D("-1E+21"), D("NaN"), D("Infinity")):
        with pytest.raises(DomainError, match="does not fit"):
            check_output(value, "bid liquidity")


# -- bulk checks agree with the single-value checks ----------------------------------------

any_decimal = st.one_of(
    st.builds(
        lambda c, e: D(f"{c}E{e}"),
        st.integers(-(10**30), 10**30),
        st.integers(-40, 20),
    ),
    st.sampled_from(
        [D("NaN"), D("Infinity"), D("0E-40"), D("1e-999999999"), D("9" * 40 + "E-26")]
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(any_decimal, max_size=12))
def test_bulk_checks_agree_with_value_checks(values: list[Decimal]) -> None:
    assert all_prices(values) == all(map(is_price, values))
    assert all_sizes(values) == all(map(is_size, values))


def test_the_exponent_test_is_exact_where_a_plain_remainder_rounds() -> None:
    """In the default 28 digits, ``x % 1E-14`` of this 41-digit value rounds up to a
    zero-looking 1E-14; the domain's test does not depend on the thread's context."""
    tricky = D("1." + "9" * 40 + "E-14")
    assert (tricky % D("1E-14")).adjusted() == -14  # the trap the domain avoids
    assert not is_size(tricky) and not all_sizes([tricky])
    with localcontext(HOSTILE):
        assert not is_price(tricky) and is_price(D("65083.66"))


def test_a_total_rounded_in_the_sum_still_shows_a_bad_exponent() -> None:
    """The bulk check sums with 60 digits: a tiny bad value beside big ones is kept."""
    values = [D("99999999999999.99999999999999")] * 50 + [D("1.000000000000001")]
    assert not all_prices(values) and not all_sizes(values)
    assert all_prices(values[:-1])


# -- the proof: in-domain books never raise, and fit every output --------------------------


def in_domain(exponents: range = range(-DECIMALS, 14)) -> st.SearchStrategy[Decimal]:
    """Any positive value of the domain, any exponent it allows (c x 10^e < 1e14)."""
    return st.integers(exponents.start, exponents.stop - 1).flatmap(
        lambda e: st.one_of(
            st.integers(1, 10 ** (14 - e) - 1),
            st.sampled_from([1, 10 ** (14 - e) - 1]),  # the edges, often
        ).map(lambda c: D(f"{c}E{e}"))
    )


HOSTILE = Context(
    prec=5,
    Emin=-20,
    Emax=20,
    traps=[InvalidOperation, Inexact, Rounded, Subnormal, Clamped],
)
"""A thread context in which any arithmetic that used it would raise."""


def _fits_parquet(values: list[Decimal]) -> None:
    pa.array(values, type=pa.decimal128(*DECIMAL))  # raises ArrowInvalid otherwise


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prices=st.lists(in_domain(), min_size=2, max_size=12, unique=True),
    sizes=st.lists(in_domain(), min_size=12, max_size=12),
    split=st.integers(1, 11),
    levels=st.integers(1, 15),
    fill=in_domain(),
)
def test_any_book_of_domain_values_yields_its_records_without_exception(
    prices, sizes, split, levels, fill
) -> None:
    prices = sorted(prices)
    split = min(split, len(prices) - 1)
    bids = list(zip(prices[:split], sizes, strict=False))
    asks = list(zip(prices[split:], sizes[split:], strict=False))
    with localcontext(HOSTILE):  # nothing may depend on the caller's context
        book = OrderBook("BTC-USD")
        book.apply_snapshot(bids, asks)
        summary = book.summary(feed="test")
        depth = OrderBookDepth.from_book(book, levels, feed="test")
        fills = [book.vwap_for_size(side, fill) for side in ("bid", "ask")]
    assert summary is not None and depth is not None
    assert summary.bid_price < summary.microprice < summary.ask_price or (
        summary.microprice in (summary.bid_price, summary.ask_price)
    )
    assert 0 <= summary.spread_pct <= 100 and 0 <= summary.imbalance <= 1
    assert OrderBookSummary.from_json(summary.to_json()) == summary
    _fits_parquet(
        [
            summary.bid_price,
            summary.bid_size,
            summary.ask_price,
            summary.ask_size,
            summary.spread,
            summary.spread_pct,
            summary.mid,
            summary.imbalance,
            summary.microprice,
        ]
    )
    _fits_parquet(
        [p for p, _ in depth.bids + depth.asks]
        + [q for _, q in depth.bids + depth.asks]
        + [depth.mid, depth.imbalance]
        + [value for band in depth.liquidity for value in band]
    )
    _fits_parquet([f.vwap for f in fills if f.vwap is not None])


def test_the_largest_and_the_finest_values_together() -> None:
    """The corners the bounds were chosen for: a 14-digit price with 14 decimals and a
    one-step spread (microprice at 18 decimals, 32 digits), the finest prices and sizes."""
    top = D("99999999999999.99999999999998"), D("99999999999999.99999999999999")
    finest = D("1E-14"), D("2E-14")
    for bid, ask in (top, finest):
        for bid_size, ask_size in ((D("1E-14"), D("99999999999999.9")), (D(1), D(3))):
            with localcontext(HOSTILE):
                summary = OrderBookSummary.from_top(
                    "BTC-USD", bid, bid_size, ask, ask_size
                )
            _fits_parquet([summary.mid, summary.microprice, summary.spread_pct])
            assert -summary.microprice.as_tuple().exponent <= 18


def test_the_same_summary_whatever_the_callers_context() -> None:
    args = ("BTC-USD", D("65083.66"), D("0.20371215"), D("65106.54"), D("0.15361938"))
    plain = OrderBookSummary.from_top(*args)
    with localcontext(HOSTILE):
        hostile = OrderBookSummary.from_top(*args)
    assert hostile == plain
    assert plain.microprice == D("65096.703724")  # as before the domain work


def test_values_just_outside_break_what_the_domain_protects() -> None:
    """Why the bounds: outside them CTX or Parquet fails (the findings' values)."""
    with pytest.raises(InvalidOperation):  # 1e30 with a 1e-14 spread: 49 digits
        OrderBookSummary.from_top(
            "X-Y", D("1E+30"), D(1), D("1E+30") + D("1E-14"), D(1)
        )
    with pytest.raises(pa.ArrowInvalid):
        _fits_parquet([D("1E-40")])
    with pytest.raises(pa.ArrowInvalid):
        _fits_parquet([D("1E+25")])
    assert LIMIT < D("1E+20")  # sizes and prices fit Parquet's 20 integer digits
