"""Where summaries go: readable lines or JSON lines, on stdout or appended to a file.

Every batch is written with one ``write`` and flushed at once, so a downstream reader sees
each record within milliseconds and lines from several workers never interleave.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from orderbook import OrderBookSummary
from service.runtime import record_stream


def format_text(summary: OrderBookSummary) -> str:
    return str(summary)


def format_jsonl(summary: OrderBookSummary) -> str:
    return summary.to_json()


FORMATTERS = {"text": format_text, "jsonl": format_jsonl}


def _reader_went_away() -> None:
    """``... | head`` closed our stdout: stop quietly, like any Unix filter."""
    try:
        sys.stderr.write("orderbook: output closed by its reader, stopping\n")
        sys.stderr.flush()
    finally:
        os._exit(0)


class _StreamPartition(StatelessSinkPartition[OrderBookSummary]):
    def __init__(self, stream: TextIO, formatter) -> None:
        self._stream = stream
        self._format = formatter

    def write_batch(self, items: list[OrderBookSummary]) -> None:
        if items:
            try:
                self._stream.write("".join(self._format(s) + "\n" for s in items))
                self._stream.flush()
            except BrokenPipeError:
                _reader_went_away()


class _AppendFilePartition(StatelessSinkPartition[OrderBookSummary]):
    """Appends with O_APPEND so that workers of several processes can share one file."""

    def __init__(self, path: Path, formatter) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._format = formatter

    def write_batch(self, items: list[OrderBookSummary]) -> None:
        if items:
            data = memoryview("".join(self._format(s) + "\n" for s in items).encode())
            while (
                data
            ):  # a regular file takes it all at once, bar a signal or a full disk
                data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        os.close(self._fd)


class SummarySink(DynamicSink[OrderBookSummary]):
    """``text`` or ``jsonl`` records to stdout, or ``jsonl`` appended to ``path``."""

    def __init__(self, fmt: str = "text", path: Path | None = None) -> None:
        if fmt not in FORMATTERS:
            raise ValueError(
                f"output format {fmt!r} is not one of {', '.join(FORMATTERS)}"
            )
        self._format = FORMATTERS[fmt]
        self._path = path

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        if self._path is not None:
            return _AppendFilePartition(self._path, self._format)
        return _StreamPartition(record_stream(), self._format)
