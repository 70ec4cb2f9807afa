"""Where records go: ``ORDERBOOK_OUTPUT``, a comma-separated list of outputs (see
docs/outputs.md).

One module per kind (``streams``: text and JSON lines on stdout or a file; ``parquet``;
``kafka``; ``tardis``: tardis.dev ``book_snapshot`` CSV files of the depth records), each
exposing its :class:`OutputKind`; :data:`KINDS` lists them all. The
``live`` entry turns on a view (:mod:`views.live`), not an output: it is parsed with the
list, and the dataflow attaches the view. ``fanout`` is the dataflow's one sink, which
writes every record to every output.
"""

from __future__ import annotations

from service.outputs import kafka, parquet, streams, tardis
from service.outputs.fanout import FanOutSink
from service.outputs.registry import (
    SETTING,
    OutputFailed,
    OutputKind,
    OutputList,
    OutputSpec,
    expected,
)
from service.outputs.registry import parse_outputs as _parse
from service.outputs.registry import with_depth as _with_depth
from service.runtime import Shutdown

KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in (
        streams.TEXT,
        streams.JSONL,
        kafka.KAFKA,
        parquet.PARQUET,
        tardis.TARDIS,
    )
}
"""Every kind of output, in the order messages list them. A new kind: its module, and
its ``OutputKind`` in this tuple."""
LIVE_VIEW = "live"
VIEWS = {LIVE_VIEW: "live (full-screen terminal view)"}
"""Entries that turn on a view rather than name an output, and their form in messages."""
HELP = expected(KINDS, VIEWS)
"""What ``ORDERBOOK_OUTPUT`` may hold, as refusals say it."""


def parse_outputs(raw: str, name: str = SETTING) -> OutputList:
    """Every entry of ``raw`` parsed and tried (files opened, brokers asked); raises
    :class:`~common.validation.ConfigError` naming the first bad one."""
    return _parse(raw, KINDS, VIEWS, name)


def with_depth(
    specs: tuple[OutputSpec, ...], levels: int, interval: float
) -> tuple[OutputSpec, ...]:
    """``specs`` with the depth records' cadence given to the kinds that write them
    (``tardis:DIR``); refused in one line when depth records are off."""
    return _with_depth(specs, KINDS, levels, interval)


def build_sink(spec: OutputSpec, shutdown: Shutdown):
    """The Bytewax sink of one output (a kind that writes depth records gets their
    cadence)."""
    kind = KINDS[spec.kind]
    if kind.needs_depth is not None:
        return kind.build(spec.arg, shutdown, *(spec.depth or (0, 0.0)))
    return kind.build(spec.arg, shutdown)


def fan_out(
    specs: tuple[OutputSpec, ...], shutdown: Shutdown, metrics: bool = False
) -> FanOutSink:
    """The dataflow's sink for ``specs``: each output built once per process."""
    return FanOutSink(
        [(spec.shown, build_sink(spec, shutdown)) for spec in specs],
        shutdown,
        metrics,
    )


__all__ = [
    "HELP",
    "KINDS",
    "LIVE_VIEW",
    "VIEWS",
    "FanOutSink",
    "OutputFailed",
    "OutputKind",
    "OutputList",
    "OutputSpec",
    "build_sink",
    "fan_out",
    "parse_outputs",
    "with_depth",
]
