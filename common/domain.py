"""What a product id, a price and a size may be: checked once, where a value enters.

A value from a feed, a recording, an imported file, a setting or a plot's input is checked
here before anything else sees it; outside the domain it is malformed input (counted,
skipped, the product resynced), never a crash further down.

The number domain, for prices and sizes alike:

* finite; a price ``> 0``, a size ``>= 0`` (0 removes a level);
* below :data:`LIMIT` (``1e14``);
* at most :data:`DECIMALS` (14) digits after the point, *as written*: ``"1.50"`` has
  2, ``"1.5E-14"`` has 15 (refused), ``"1.00000000000000000000"`` 20 (refused: its
  trailing zeros would reach the outputs). A size of zero only removes a level and is
  never stored, so it may be written any way (``"0E-40"``).

Why these bounds. Coinbase's prices are below ~1e6 (BTC-USD ~1e5) with at most 8 to 10
decimals (tiny-priced coins such as SHIB-USD quote 0.00001234), its sizes have 8
decimals, and no level can hold more than a coin's whole supply (the largest on Coinbase,
SHIB's, is 5.9e14 coins; real levels stay below 1e11). Every derived value must then be
computable in :data:`common.decimals.CTX` (34 digits, trapping InvalidOperation,
DivisionByZero and Overflow) and fit every output, the tightest being Parquet's
``decimal128(38, 18)``: at most 18 decimals and 20 integer digits. With both bounds:

* ``spread`` (``< 1e14``, 14 decimals) and ``mid`` (15 decimals) are exact;
* ``microprice`` and a fill's ``vwap`` carry the prices' scale + 4 digits: at most 18
  decimals, 32 digits with the integer part (< 34: ``quantize`` cannot fail);
* ``spread_pct`` is in [0, 100] and the imbalances in [0, 1], both quantized to 1e-10;
* a size sum (liquidity bands, depth totals) keeps at most 14 decimals and stays below
  Parquet's 1e20 for any band of fewer than a million levels at the size bound (such
  a band alone would take some 200 MB of book); beyond,
  :func:`check_output` refuses it like any other out-of-domain value.

What falls outside (``1e20``, ``1e-40``, ``1e-999999999``, ``NaN``, ``-1``) is refused
where it enters; before this module a ``1e20`` price with an 8-decimal spread crashed the
summary (its microprice needs 33 digits, the summary ran in the default 28), a
``1e-999999999`` size divided by zero (two of them add up to 0 below the smallest
exponent), and a ``1e-40`` size or ``1e25`` price made Parquet refuse its whole batch.

Speed: :func:`is_price` costs about 0.2 µs a value; the decoders' hot loops inline a
cheaper sufficient test first (every digit of a coefficient is a character of its text,
so ``value.adjusted() - len(text) >= -15`` already proves at most 14 decimals: +30 ns a
size) and fall back to the exact one; :func:`price_in` and :func:`size_in` do the same
for a reader that holds the text (the tardis.dev importer). A 46,000-level snapshot is
checked in bulk (:func:`all_prices`, :func:`all_sizes`: a ``min`` and a ``sum`` per
list where the range check they replace took a ``min`` and a ``max``: +3%, 30.3 ->
31.3 ms for the Exchange form). The exact exponent test is context-free:
``value.remainder_near(QUANTUM, CTX)`` is a zero of exponent exactly -14 iff the value has at most 14 decimals
(for a value below 1e14, whose quotient fits CTX's 34 digits; ``%`` would not do: in 28
digits the remainder of ``1.99...9E-14`` with 40 nines rounds up to ``1E-14``), whatever
``decimal.getcontext()`` says.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Context, Decimal, InvalidOperation, localcontext

from common.decimals import CTX
from common.text import shown

PRODUCT_ID = re.compile(r"[A-Z0-9]{1,24}(-[A-Z0-9]{1,24}){1,3}")
"""A Coinbase product id: upper-case BASE-QUOTE (futures add parts, e.g. BIT-27DEC24-CDE)."""

DECIMALS = 14
"""Digits after the point a price or a size may carry (Coinbase: 8, 10 for tiny prices)."""
LIMIT = Decimal("1E+14")
"""Exclusive upper bound of a price and of a size."""
QUANTUM = Decimal(f"1E-{DECIMALS}")
"""``1E-14``: the finest step of a price or a size."""
OUTPUT_LIMIT = Decimal("1E+20")
"""Exclusive bound of any value written out: Parquet's decimal(38, 18) has 20 integer
digits."""

_ZERO = Decimal(0)
_SUM_CTX = Context(prec=60, traps=[])
"""Bulk check: the sum of values keeps the smallest exponent among them (see
:func:`_finest_exponent_ok`)."""


class DomainError(ValueError):
    """A value outside the domain (one line, the value shown escaped and truncated)."""


def is_product_id(value: object) -> bool:
    """True for a string of Coinbase's product id shape (safe in a path, a log, a page)."""
    return isinstance(value, str) and PRODUCT_ID.fullmatch(value) is not None


def product_id(value: object) -> str:
    """``value`` if it is a product id, else :class:`DomainError`."""
    if is_product_id(value):
        return value
    raise DomainError(f"not a product id: {shown(value)!r}")


# -- one value ---------------------------------------------------------------------------


def _decimals_ok(value: Decimal) -> bool:
    """At most DECIMALS decimals as written; ``value`` finite and below LIMIT."""
    return value.remainder_near(QUANTUM, CTX).adjusted() == -DECIMALS


def is_price(value: Decimal) -> bool:
    """True for a Decimal in the price domain (finite, 0 < value < 1e14, <= 14 decimals).

    About 0.2 µs; never raises for a Decimal (NaN is simply not a price)."""
    try:
        return _ZERO < value < LIMIT and _decimals_ok(value)
    except InvalidOperation:  # NaN compared
        return False


def is_size(value: Decimal) -> bool:
    """True for a Decimal in the size domain (finite, 0 <= value < 1e14, <= 14 decimals;
    a zero, which only ever removes a level, may be written any way: ``"0E-40"``)."""
    try:
        return _ZERO <= value < LIMIT and (not value or _decimals_ok(value))
    except InvalidOperation:
        return False


_SLACK = -DECIMALS - 1


def price_in(text: str) -> Decimal | None:
    """The price ``text`` says, or None where :func:`price` would raise: one call for
    a reader's hot loop, which has the text at hand (and a text, unlike a Decimal,
    bounds the number of digits).

    Every digit of a coefficient is a character of its text, so its exponent is at
    least ``adjusted() - len(text) + 1``: ``value.adjusted() - len(text) >= -15``
    proves at most 14 decimals without the exact test (``"6421.5"``, ``"0.20371215"``);
    the exact one runs only for what is left (``"0.00000100"``, ``"1E-15"``). Measured
    (timeit, best of 5): ``"64123.45"`` 0.40 µs through :func:`price`, 0.23 here."""
    try:
        value = Decimal(text)
        if _ZERO < value < LIMIT and (
            value.adjusted() - len(text) >= _SLACK or _decimals_ok(value)
        ):
            return value
    except (InvalidOperation, ValueError, TypeError):
        pass
    return None


def size_in(text: str) -> Decimal | None:
    """The size ``text`` says, or None where :func:`size` would raise (the cheap test
    of :func:`price_in` first; a zero, which only removes a level, in any form)."""
    try:
        value = Decimal(text)
        if _ZERO <= value < LIMIT and (
            value.adjusted() - len(text) >= _SLACK or not value or _decimals_ok(value)
        ):
            return value
    except (InvalidOperation, ValueError, TypeError):
        pass
    return None


def _parse(value: object, what: str) -> Decimal:
    if type(value) is Decimal:
        return value
    if type(value) is str or type(value) is int:
        try:
            return Decimal(value)
        except (InvalidOperation, ValueError):
            pass
        raise DomainError(f"bad {what} '{shown(value)}': not a decimal number")
    raise DomainError(
        f"bad {what}: a decimal string or a Decimal, not {type(value).__name__}"
    )


def _why_not(value: Decimal, what: str, low: str) -> str:
    """``bad price '1E+20': not below 1E+14``: one line, the value escaped and cut."""
    if not value.is_finite():
        why = "not a finite number"
    elif value.is_signed() or (low == "> 0" and not value):
        why = f"must be {low}"
    elif value >= LIMIT:
        why = f"not below {LIMIT:E}"
    else:
        why = f"more than {DECIMALS} decimals"
    return f"bad {what} '{shown(value)}': {why}"


def price(value: object) -> Decimal:
    """A price from a decimal string (or a Decimal, or an int), else :class:`DomainError`
    saying why in one line."""
    number = _parse(value, "price")
    if is_price(number):
        return number
    raise DomainError(_why_not(number, "price", "> 0"))


def size(value: object) -> Decimal:
    """A size from a decimal string (or a Decimal, or an int), else :class:`DomainError`."""
    number = _parse(value, "size")
    if is_size(number):
        return number
    raise DomainError(_why_not(number, "size", ">= 0"))


# -- many values at once (a 46,000-level snapshot) --------------------------------------


def _finest_exponent_ok(values: Sequence[Decimal], total_bound: Decimal) -> bool:
    """Whether every value has at most DECIMALS decimals, in two C-level passes.

    An exact Decimal sum has the smallest exponent of its terms ("1.50" + "2.5" =
    "4.00"); summed with 60 digits, a total below ``total_bound`` (<= 1e45) is exact when
    every exponent is >= -14 (it needs at most 45 + 14 digits) and, when one is not,
    rounds to an exponent that is still below -14. ``False`` when the total is too big
    to tell: the caller then checks value by value.
    """
    with localcontext(_SUM_CTX):
        total = sum(values, _ZERO)
    if not total < total_bound:
        return False
    return total.as_tuple().exponent >= -DECIMALS


def all_prices(values: Sequence[Decimal]) -> bool:
    """True iff every Decimal of ``values`` is a price (the fast path for snapshots).

    A ``min`` and a ``sum``: the sum of positive values bounds each of them, so the
    ``max`` is needed only for a total of 1e14 or more (never for a real book: 46,000
    levels of BTC-USD add up to ~5e9).
    """
    if not values:
        return True
    try:
        if not _ZERO < min(values):
            return False
        if _finest_exponent_ok(values, LIMIT):
            return True
        return all(map(is_price, values))  # rare: the total alone cannot tell
    except InvalidOperation:  # NaN
        return False


def all_sizes(values: Sequence[Decimal]) -> bool:
    """True iff every Decimal of ``values`` is a size (see :func:`all_prices`)."""
    if not values:
        return True
    try:
        if not _ZERO <= min(values):
            return False
        if _finest_exponent_ok(values, LIMIT):
            return True
        return all(map(is_size, values))
    except InvalidOperation:
        return False


# -- derived values ----------------------------------------------------------------------


def check_output(value: Decimal, what: str) -> Decimal:
    """``value`` if it fits every output (finite, ``|value| < 1e20``), else DomainError.

    Only size sums can get there from in-domain values (see the module docstring);
    everything else derived is bounded by the prices and sizes themselves."""
    try:
        if -OUTPUT_LIMIT < value < OUTPUT_LIMIT:
            return value
    except InvalidOperation:
        pass
    raise DomainError(f"{what} {shown(value)} does not fit the outputs (below 1E+20)")
