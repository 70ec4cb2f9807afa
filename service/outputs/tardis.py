"""``tardis:DIR``: depth records as tardis.dev ``book_snapshot_{N}_{interval}`` CSV files.

Tools that read tardis.dev's downloads (backtesters, notebooks) read this service's books
as they read tardis.dev's own: one gzip CSV per product and UTC day, named and laid out
as tardis.dev's (:mod:`importers.tardis_snapshots`), ``N`` the depth records' levels
(``ORDERBOOK_DEPTH_LEVELS``) and the interval their cadence
(``ORDERBOOK_DEPTH_INTERVAL``: 1 is ``1s``, 0.1 ``100ms``, 60 ``1m``, 0 ``0ms``, a row at
every book change). Summaries are not written (tardis.dev has no such file). An entry is
refused at start, in one line, when depth records are off (``ORDERBOOK_DEPTH_LEVELS=0``)
or the interval is no whole number of milliseconds.

Each worker writes the products whose books it holds, so no two writers share a file.
Every batch ends with a sync flush of the files it wrote to, so the rows written are
readable at once and a hard kill loses at most the batch being written (a gzip reader
stops cleanly at the cut-off member); SIGINT/SIGTERM close the files (a closer of
:class:`service.runtime.Shutdown`). A file of the day that exists already (a restarted service) is
appended to as a new gzip member, its header not repeated. A record that cannot be a row
(no time) is counted and said once at the end.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from importers.tardis_snapshots import TardisSnapshotWriter, interval_name
from records import OrderBookDepth
from service.outputs.registry import OutputKind, dir_targets, writable_dir
from service.runtime import Shutdown

log = logging.getLogger(__name__)


class _TardisPartition(StatelessSinkPartition):
    def __init__(
        self, directory: Path, levels: int, interval: float, shutdown: Shutdown
    ) -> None:
        self._writer = TardisSnapshotWriter(directory, levels, interval_name(interval))
        self._shutdown = shutdown
        self._lock = threading.Lock()
        """The closer runs on the signal handler's thread, writes on the worker's."""
        self._closed = False
        shutdown.add_closer(self.close)

    def write_batch(self, items: list) -> None:
        rows = [r for r in items if type(r) is OrderBookDepth]
        if not rows:
            return
        with self._lock:
            if self._closed:
                return
            for record in rows:
                self._writer.write(record.to_dict())
            self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        self._shutdown.remove_closer(self.close)
        skipped = self._writer.skipped
        if skipped:
            log.warning(
                "tardis: %d depth records were not written: %s",
                sum(skipped.values()),
                ", ".join(f"{n} {why}" for why, n in skipped.most_common()),
            )


class TardisSink(DynamicSink):
    def __init__(
        self, directory: Path, levels: int, interval: float, shutdown: Shutdown
    ) -> None:
        self.directory = Path(directory)
        self.levels = levels
        self.interval = interval
        self.shutdown = shutdown

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> _TardisPartition:
        return _TardisPartition(
            self.directory, self.levels, self.interval, self.shutdown
        )


def _check_depth(levels: int, interval: float) -> None:
    interval_name(interval)  # ValueError: no tardis.dev name


def _targets(arg: str | None) -> list[tuple]:
    return dir_targets(arg, "the same tardis directory")


TARDIS = OutputKind(
    "tardis",
    build=lambda arg, shutdown, levels, interval: TardisSink(
        Path(arg), levels, interval, shutdown
    ),
    arg="required",
    help="tardis:DIR",
    check=writable_dir,
    targets=_targets,
    needs_depth=_check_depth,
)
