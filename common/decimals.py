"""Exact decimals: the one arithmetic context and the one text form of a price or size.

Every part that computes with or prints a :class:`~decimal.Decimal` (the book, its
records, log lines, the outputs) uses these two, so that a price prints the same
everywhere and no result depends on ``decimal.getcontext()``.
"""

from __future__ import annotations

from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)

CTX = Context(
    prec=34,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
"""34 significant digits, half-even, trapping what would otherwise pass silently."""


def plain(value: Decimal) -> str:
    """Canonical fixed-point text: no exponent, no trailing zeros, no ``-0``.

    The feeds send one price in several forms ("65083.66", "65083.66000000"); the book
    keys them as one level, and every output prints them as one string too
    ("65000.20000000" -> "65000.2", "1E+3" -> "1000").
    """
    text = format(value.normalize(CTX), "f")
    return "0" if text == "-0" else text
