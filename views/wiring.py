"""How the views join the dataflow: one call from ``dataflow.py``.

With ``ORDERBOOK_OUTPUT=live`` or ``ORDERBOOK_DASHBOARD`` set, the book step also emits
depth records (:class:`views.taps.BookStepWithDepth`), and the views get every summary
(not only those the spread filter passes) and every depth record. Without either, the
dataflow is exactly what it was.
"""

from __future__ import annotations

import bytewax.operators as op

from book_step import update_book


def wanted(settings) -> bool:
    return settings.output == "live" or getattr(settings, "dashboard", None) is not None


def book_step(keyed, settings, products):
    """The ``order_book`` step; with views on, also feeds them. Returns (key, summary)."""
    if not wanted(settings):
        return op.stateful_map("order_book", keyed, update_book)
    from views.taps import BookStepWithDepth

    both = op.stateful_map("order_book", keyed, BookStepWithDepth())
    records = op.flat_map(
        "view_records", both, lambda kv: [r for r in kv[1] if r is not None]
    )
    attach(records, settings, products)
    return op.map("summaries", both, lambda kv: (kv[0], kv[1][0]))


def attach(records, settings, products) -> None:
    """Outputs of the views for a stream of records (summaries and/or depth dicts)."""
    threshold = float(settings.spread_threshold_pct)
    if settings.output == "live":
        from views.live import LiveSink

        op.output("live_view", records, LiveSink(threshold, products))
    if getattr(settings, "dashboard", None) is not None:
        from views.dashboard import DashboardSink

        host, port = settings.dashboard
        op.output("dashboard", records, DashboardSink(host, port, threshold, products))
