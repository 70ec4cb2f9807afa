"""How the views join the dataflow: ``dataflow.py`` asks :func:`wanted`, then calls
:func:`depth_cadence` and :func:`attach`.

With a view on (``settings.live_view``: ``ORDERBOOK_OUTPUT=live``; or
``ORDERBOOK_DASHBOARD``), the book step emits depth records even when
``ORDERBOOK_DEPTH_LEVELS`` is 0, and the views get every summary, before the spread
filter (see docs/views.md). Without one, the dataflow is exactly what it was.

``settings`` is the service's settings object, read for its attributes only (a view
never imports the service); what the live view needs of the process (its terminal, a
way to be closed on a signal) is passed in by the dataflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import bytewax.operators as op

from common.text import shown
from common.validation import refuse

VIEW_DEPTH_LEVELS = 20
"""Levels a side the views draw when the user asked for no depth records."""
VIEW_DEPTH_INTERVAL = 0.1
"""Seconds of feed time between depth records for the views: ten a second per product
is as fast as a person reads a chart."""


def wanted(settings) -> bool:
    """Whether a view is on: the live view or the web dashboard."""
    return settings.live_view or settings.dashboard is not None


def depth_cadence(settings) -> tuple[int, float]:
    """(levels, interval) of the book step's depth records."""
    if settings.depth_levels or not wanted(settings):
        return settings.depth_levels, settings.depth_interval
    return VIEW_DEPTH_LEVELS, VIEW_DEPTH_INTERVAL


def _every_record(keyed: tuple) -> list:
    """The book step's ``(received_ns, summary, depth)`` triples (a list per item) as
    ``(received_ns, record)`` pairs."""
    return [
        (received_ns, r)
        for received_ns, summary, depth in keyed[1]
        for r in (summary, depth)
        if r is not None
    ]


def attach(
    books,
    settings,
    products,
    *,
    terminal: Callable[[], TextIO],
    add_closer: Callable[[Callable[[], None]], None],
) -> None:
    """The views' sinks on the book step's output (``book_step.BookStep``); the live
    view draws on ``terminal()`` and registers its terminal's restoring with
    ``add_closer``."""
    records = op.flat_map("view_records", books, _every_record)
    threshold = float(settings.spread_threshold_pct)
    if settings.live_view:
        from views.live import LiveSink

        sink = LiveSink(threshold, products, terminal=terminal, add_closer=add_closer)
        op.output("live_view", records, sink)
    if settings.dashboard is not None:
        from views.dashboard import DashboardSink

        host, port = settings.dashboard
        origins = settings.dashboard_origins
        start_dashboard(host, port, threshold, products, origins)
        sink = DashboardSink(host, port, threshold, products, origins)
        op.output("dashboard", records, sink)


def start_dashboard(host: str, port: int, threshold: float, products, origins) -> None:
    """Start this process's dashboard now, while the dataflow is built: an address it
    cannot listen on (a name that does not resolve, another machine's address, ports in
    use, a port below 1024 without the right) is a one-line
    :class:`~common.validation.ConfigError` the service prints before it exits, instead
    of a hundred lines of traceback out of a Bytewax worker."""
    from views.dashboard import shared_server

    try:
        shared_server(host, port, threshold, products, origins)
    except OSError as exc:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise refuse(
            "ORDERBOOK_DASHBOARD",
            address,
            "HOST:PORT of this machine with a free port",
            f"cannot listen on {shown(address)}: {shown(exc, 200)}",
        ) from None
