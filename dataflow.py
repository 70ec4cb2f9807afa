"""The order book dataflow: Coinbase feed -> per-product book -> spread filter -> output.

Run it with ``python -m bytewax.run dataflow:flow`` (settings from ``ORDERBOOK_*``
environment variables, see the README), or build variants with :func:`get_flow`.
"""

from __future__ import annotations

import sys

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from book_step import SpreadFilter
from service.inputs import build_source, log_resumes
from service.outputs import SummarySink
from service.placement import RouteByProduct
from service.runtime import (
    announce_settings,
    configure_logging,
    install_clean_exit,
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
    """Build the dataflow; ``source``/``sink`` override the ones the settings choose."""
    settings = settings or Settings.from_env()
    if source is None:
        source, products = build_source(settings)
    products = list(products or settings.products or [])
    if sink is None and settings.output != "live":
        sink = SummarySink(settings.output, settings.output_path)

    flow = Dataflow("orderbook")
    events = op.input("coinbase", flow, log_resumes(source))
    keyed = op.map("route", events, RouteByProduct(products))
    # views (ORDERBOOK_OUTPUT=live, ORDERBOOK_DASHBOARD): see views/wiring.py
    books = views_wiring.book_step(keyed, settings, products)
    wide = op.filter_map(
        "spread_filter", books, SpreadFilter(settings.spread_threshold_pct)
    )
    if sink is not None:  # None for the live view, which views_wiring feeds
        op.output("output", wide, sink)
    return flow


def _flow_from_environment() -> Dataflow:
    separate_records_from_stdout()
    configure_logging()
    try:
        settings = Settings.from_env()
        built = get_flow(settings)
    except ConfigError as exc:
        sys.exit(f"orderbook: {exc}")
    announce_settings(settings)
    install_clean_exit()
    tune_garbage_collector()
    return built


def __getattr__(name: str) -> Dataflow:
    # `flow` is built on first use, so that importing this module (tests, get_flow
    # callers) neither reads the environment nor starts a local exchange.
    if name == "flow":
        global flow
        flow = _flow_from_environment()
        return flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
