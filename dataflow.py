"""The order book dataflow: Coinbase feed -> per-product book -> spread filter -> output.

Run it with ``python -m bytewax.run dataflow:flow`` (settings from ``ORDERBOOK_*``
environment variables, see docs/operations.md), or build variants with :func:`get_flow`.

This module composes the service: it is the only one that imports ``service/``, and
it hands what is process-wide (the :class:`service.runtime.Shutdown` that ends the
process early, the stdout kept for records) to the outputs and the views.
"""

from __future__ import annotations

from service import runtime

# First of all, under `python -m bytewax.run`: Ctrl-C and SIGTERM end the run with status
# 0 from here on, during the imports below and the whole start-up too (settings, outputs
# probed, a deep sim book built), not only once the flow is built.
if runtime.started_by_bytewax_run():
    runtime.install_clean_exit()

import sys

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from book_step import BookStep, EachEvent, SpreadFilter, UpdateBook
from service import cluster
from service.health import FlowHealth, serve_health
from service.inputs import build_source, log_resumes
from service.outputs import fan_out
from service.placement import RouteByProduct, routing_keys
from service.recovery_store import check_recovery_store
from service.runtime import (
    SHUTDOWN,
    announce_settings,
    configure_logging,
    install_clean_exit,
    record_stream,
    separate_records_from_stdout,
    tune_garbage_collector,
)
from service.settings import ConfigError, Settings
from views import wiring as views_wiring


def get_flow(
    settings: Settings | None = None,
    *,
    source: Source | None = None,
    products: list[str] | None = None,
    sink: Sink | None = None,
) -> Dataflow:
    """Build the dataflow; ``source``/``sink`` override the ones the settings choose.

    Every sink and view gets ``(received_ns, record)`` pairs (``received_ns``: when the
    frame came off the socket, 0 when unknown), whichever path the book step takes."""
    settings = settings or Settings.from_env()
    if source is None:
        source, products = build_source(settings, SHUTDOWN)
    products = list(products or settings.products or [])
    # the book step asks the source for fresh snapshots on the source's own channel
    resync_requests = getattr(source, "resync_requests", None)
    views_on = views_wiring.wanted(settings)
    if sink is None and settings.outputs:
        sink = fan_out(settings.outputs, SHUTDOWN, metrics=settings.metrics_enabled)

    # the stall watchdog starts with the first partition built, when the flow runs
    health = FlowHealth(source, settings.stall_seconds, SHUTDOWN.stalled)
    if settings.health is not None:  # a port it cannot bind: one line at start
        serve_health(settings.health, health)

    flow = Dataflow("orderbook")
    # Items reach the book step keyed by the routing key of service/placement.py (each
    # book on the worker that reads its socket). A source that can key its own items
    # (the live feed: one `(key, [events])` item per product per poll) is told the keys
    # and needs no routing step, a Bytewax step less per item; any other source's
    # `(product_id, event)` items are keyed by a `route` step.
    key_by = getattr(source, "key_by", None)
    if key_by is not None:
        key_by(routing_keys(products))
        keyed = op.input("coinbase", flow, log_resumes(source, health.start))
    else:
        events = op.input("coinbase", flow, log_resumes(source, health.start))
        keyed = op.map("route", events, RouteByProduct(products))
    spread = SpreadFilter(
        settings.spread_threshold_pct, depth=settings.depth_levels > 0
    )
    book_metrics = None
    if settings.metrics_enabled:  # prometheus_client is imported only when it serves
        from service.metrics import BookMetrics

        book_metrics = BookMetrics()
    if settings.depth_levels or book_metrics is not None or views_on:
        # (received_ns, record) pairs: summaries and depth records, timed for metrics
        levels, interval = views_wiring.depth_cadence(settings)
        books = op.stateful_map(
            "order_book",
            keyed,
            EachEvent(BookStep(levels, interval, book_metrics, resync_requests)),
        )
        if views_on:  # ORDERBOOK_OUTPUT=live, ORDERBOOK_DASHBOARD: see views/wiring.py
            views_wiring.attach(
                books,
                settings,
                cluster.own_products(products),  # a member shows the books it holds
                terminal=record_stream,
                add_closer=SHUTDOWN.add_closer,
            )
        records = op.flat_map("spread_filter", books, spread.records)
    else:  # the plain fast path: the (received_ns, summary) pairs of each item
        books = op.stateful_map(
            "order_book", keyed, EachEvent(UpdateBook(resync_requests))
        )
        records = op.flat_map("spread_filter", books, spread.timed)
    if sink is not None:  # None when the live view is the only output
        op.output("output", records, sink)
    return flow


def _flow_from_environment() -> Dataflow:
    install_clean_exit()  # again: a program that imported this module builds `flow`
    separate_records_from_stdout()
    configure_logging()
    try:
        check_recovery_store()  # before Bytewax panics on a damaged one
        settings = Settings.from_env()
        built = get_flow(settings)
    except ConfigError as exc:
        sys.exit(f"orderbook: {exc}")
    announce_settings(settings)
    tune_garbage_collector()
    cluster.await_lower_processes()  # Timely's first connect to a peer succeeds
    # a lost or unreachable peer: one line, not a panic or a frozen member
    cluster.watch_peers(SHUTDOWN.failed, timeout=settings.stall_seconds)
    return built


def __getattr__(name: str) -> Dataflow:
    # `flow` is built on first use, so that importing this module (tests, get_flow
    # callers) neither reads the environment nor starts a local exchange.
    if name == "flow":
        global flow
        flow = _flow_from_environment()
        return flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
