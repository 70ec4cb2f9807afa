"""Where records go: ``ORDERBOOK_OUTPUT``, a comma-separated list of outputs.

One module per kind (``streams``: text and JSON lines on stdout or a file; ``parquet``;
``kafka``; ``tardis``: tardis.dev ``book_snapshot`` CSV files), each registering itself in :mod:`service.outputs.registry`; ``fanout`` is the
dataflow's one sink, which writes every record to every output.
"""

from __future__ import annotations

from service.outputs import kafka, live, parquet, streams, tardis  # noqa: F401 - register the kinds
from service.outputs.fanout import FanOutSink, OutputFailed, output_failed
from service.outputs.registry import (
    KINDS,
    OutputKind,
    OutputSpec,
    build_sink,
    parse_outputs,
    register,
    with_depth,
)
from service.outputs.streams import StreamSink, SummarySink, record_stream

__all__ = [
    "KINDS",
    "FanOutSink",
    "OutputFailed",
    "OutputKind",
    "OutputSpec",
    "StreamSink",
    "SummarySink",
    "build_sink",
    "output_failed",
    "parse_outputs",
    "record_stream",
    "register",
    "with_depth",
]
