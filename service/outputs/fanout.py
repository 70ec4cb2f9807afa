"""The one sink of the dataflow: every record goes to every configured output.

Items are records, or ``(received_ns, record)`` pairs from the book step when depth
records or metrics are on (the receive time feeds the latency histogram). Each output's
partition gets the whole batch in turn; when they are all written, the batch is counted
in the metrics.

An output that fails mid-run (a full disk, a file size limit, Kafka deliveries that
failed after librdkafka's retries, a record Parquet cannot store) stops the run: one line
on stderr naming the output (secrets redacted) and the error, the other outputs closed
(Parquet files finished), exit status 1. *Any* exception an output raises while it is
built, written or closed takes this path, not only ``OSError``: in a Bytewax sink any
other exception is a Rust panic that aborts the process (SIGABRT) without closing
anything. Nothing is dropped silently and no traceback buries the cause. A reader
closing stdout (``| head``) is not a failure: the run ends quietly with status 0.
"""

from __future__ import annotations

import os
import sys
import threading

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from common.text import shown
from service.outputs.registry import OutputSpec, build_sink
from service.runtime import run_closers

_failing = threading.Lock()


FAILURE_DETAIL_LIMIT = 1000
"""Characters of an error's text kept in the failure line."""


class OutputFailed(Exception):
    """Raised by an output partition for a failure that must stop the run; its text is
    the whole explanation (no type name is added)."""


def output_failed(label: str, exc: BaseException) -> None:
    """Stop the process: one line, the other outputs closed, status 1."""
    with _failing:  # one worker reports; the others wait for the exit
        try:
            if isinstance(exc, (OSError, OutputFailed)):
                detail = str(exc) or type(exc).__name__
            else:  # a bug or a library's surprise: its type says what it was
                detail = f"{type(exc).__name__}: {exc}"
            detail = shown(detail, FAILURE_DETAIL_LIMIT)  # one line, whatever it holds
            sys.stderr.write(f"orderbook: output {label} failed, stopping: {detail}\n")
            sys.stderr.flush()
            run_closers(report=False)  # the failed one fails again: said already
        finally:
            os._exit(1)


class _FanOutPartition(StatelessSinkPartition):
    def __init__(
        self, parts: list[tuple[str, StatelessSinkPartition]], metrics: bool
    ) -> None:
        self._parts = parts
        self._observe = None
        if metrics:  # prometheus_client is imported only when it serves
            from service.metrics import sink_observer

            self._observe = sink_observer()

    def write_batch(self, items: list) -> None:
        if not items:
            return
        timed = type(items[0]) is tuple
        records = [r for _, r in items] if timed else items
        for label, part in self._parts:
            try:
                part.write_batch(records)
            except Exception as exc:  # any: see the module's docstring
                output_failed(label, exc)
        if self._observe is not None:
            self._observe(items if timed else [(0, r) for r in items])

    def close(self) -> None:
        for label, part in self._parts:
            try:
                part.close()
            except Exception as exc:
                output_failed(label, exc)


class FanOutSink(DynamicSink):
    """Writes each batch to the partitions of every output, in the order given;
    ``metrics``: count what was written in :mod:`service.metrics`."""

    def __init__(
        self, outputs: list[tuple[str, DynamicSink]], metrics: bool = False
    ) -> None:
        self.outputs = outputs
        self.metrics = metrics

    @classmethod
    def from_specs(
        cls, specs: tuple[OutputSpec, ...], metrics: bool = False
    ) -> FanOutSink:
        return cls([(spec.shown, build_sink(spec)) for spec in specs], metrics)

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        parts = []
        for label, sink in self.outputs:
            try:  # opening a file, a FIFO, a client
                parts.append((label, sink.build(step_id, worker_index, worker_count)))
            except Exception as exc:
                output_failed(label, exc)
        return _FanOutPartition(parts, self.metrics)
