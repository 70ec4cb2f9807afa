"""The one sink of the dataflow: every record goes to every configured output.

Items are ``(received_ns, record)`` pairs, the book step's one shape (the receive time
feeds the latency histogram); each output's partition gets the batch's records in turn
and, when they are all written, the batch is counted in the metrics.

An output that fails mid-run (a full disk, a file size limit, Kafka deliveries that
failed after librdkafka's retries, a record Parquet cannot store) stops the run through
:meth:`service.runtime.Shutdown.failed`: one line on stderr naming the output (secrets
redacted) and the error, the other outputs closed (Parquet files finished), exit status
1. *Any* exception an output raises while it is built, written or closed takes this
path, not only ``OSError``: in a Bytewax sink any other exception is a Rust panic that
aborts the process (SIGABRT) without closing anything. Nothing is dropped silently and
no traceback buries the cause. A reader closing stdout (``| head``, an output raising
:class:`~service.outputs.registry.ReaderGone`) is not a failure: the run ends quietly
with status 0.
"""

from __future__ import annotations

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from service.outputs.registry import ReaderGone, failure_line
from service.runtime import Shutdown


class _FanOutPartition(StatelessSinkPartition):
    def __init__(
        self,
        parts: list[tuple[str, StatelessSinkPartition]],
        shutdown: Shutdown,
        metrics: bool,
    ) -> None:
        self._parts = parts
        self._shutdown = shutdown
        self._observe = None
        if metrics:  # prometheus_client is imported only when it serves
            from service.metrics import sink_observer

            self._observe = sink_observer()

    def write_batch(self, items: list) -> None:
        if not items:
            return
        records = [record for _, record in items]
        for label, part in self._parts:
            try:
                part.write_batch(records)
            except ReaderGone:
                self._shutdown.reader_gone()
            except Exception as exc:  # any: see the module's docstring
                self._shutdown.failed(failure_line(label, exc))
        if self._observe is not None:
            self._observe(items)

    def close(self) -> None:
        for label, part in self._parts:
            try:
                part.close()
            except Exception as exc:
                self._shutdown.failed(failure_line(label, exc))


class FanOutSink(DynamicSink):
    """Writes each batch to the partitions of every output, in the order given:
    ``outputs`` are (label for messages, sink) pairs; ``metrics``: count what was
    written in :mod:`service.metrics`."""

    def __init__(
        self,
        outputs: list[tuple[str, DynamicSink]],
        shutdown: Shutdown,
        metrics: bool = False,
    ) -> None:
        self.outputs = outputs
        self.shutdown = shutdown
        self.metrics = metrics

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        parts = []
        for label, sink in self.outputs:
            try:  # opening a file, a FIFO, a client
                parts.append((label, sink.build(step_id, worker_index, worker_count)))
            except Exception as exc:
                self.shutdown.failed(failure_line(label, exc))
        return _FanOutPartition(parts, self.shutdown, self.metrics)
