"""The spread filter: keeps the summaries whose spread exceeds a share of the ask."""

from __future__ import annotations

from decimal import Decimal

from orderbook import OrderBookSummary


class SpreadFilter:
    """Keeps summaries whose spread exceeds ``threshold_pct`` percent of the ask.

    Takes the book step's ``(key, summary or None)`` output and returns the summary or
    None, so that dropping the key, the non-events and the narrow spreads is one step.
    """

    def __init__(self, threshold_pct: Decimal) -> None:
        self.threshold_pct = Decimal(threshold_pct)

    def __call__(
        self, keyed: tuple[str, OrderBookSummary | None]
    ) -> OrderBookSummary | None:
        summary = keyed[1]
        if summary is not None and summary.spread_pct > self.threshold_pct:
            return summary
        return None
