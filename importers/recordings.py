"""This project's own recordings as items, so that they merge with other files.

One recording alone is replayed as it is (:class:`recording.replay.ReplaySource`); this
reader is for a recording among several files (``ORDERBOOK_REPLAY=day1.gz,day2.gz``, a
recording and a tardis.dev file, ``python -m importers convert a.gz b.gz out.gz``).

A recording holds one connection per product (:mod:`recording.recorder`), so each
product is read as its own :class:`importers.cryptofeed.CoinbaseConnection`: its frames
decoded by the service's decoder (Advanced Trade ``sequence_num`` checked), its
``connected`` records resetting its book (reason ``connection``), a book frame the
decoder refuses resetting it (``malformed``), other channels counted and left out. A
version 2 recording groups its records in blocks of one product, not in receive order:
each product is read by its own :class:`recording.reader.ProductReader` (which passes
the other products' blocks unread) and the products are merged by receive time. A
version 1 recording (one stream) is decompressed once per product: such recordings are
old and small.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from importers.cryptofeed import DAMAGED, CoinbaseConnection
from importers.stream import Item, t_ns_of
from recording.format import CONNECTED, parse_record
from recording.reader import ProductReader, Recording

RECORDING = "recording"
"""The format name of this project's recordings (:mod:`recording.format`)."""


class _Progress:
    """The whole file as one input, for a progress bar and the report (``lines``)."""

    def __init__(self, path: Path, readers: list[ProductReader]) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._readers = readers

    @property
    def position(self) -> int:
        if not self._readers:
            return 0
        return sum(r.position for r in self._readers) // len(self._readers)

    @property
    def ended_early(self) -> str | None:
        return next((r.ended_early for r in self._readers if r.ended_early), None)


class RecordingReader:
    """A recording of this project as items in receive order (see the module
    docstring); :attr:`skipped` and :attr:`ignored` count as the other readers do."""

    format = RECORDING

    def __init__(self, path: str | os.PathLike, source: str = "0") -> None:
        self.recording = Recording.open(path)
        self.path = self.recording.path
        self.source = source
        self.skipped: Counter = Counter()
        self.ignored: Counter = Counter()
        self._readers = [
            ProductReader(self.path, {product: 0}, quiet=True)
            for product in self.recording.products
        ]
        self.lines = _Progress(self.path, self._readers)

    @property
    def protocol(self) -> str:
        return self.recording.protocol

    def __iter__(self) -> Iterator[Item]:
        streams = [
            self._product(product, reader)
            for product, reader in zip(
                self.recording.products, self._readers, strict=True
            )
        ]
        yield from heapq.merge(*streams, key=t_ns_of)
        for reader in self._readers:
            for why, n in reader.skipped.items():
                self.skipped[None, why] += n

    def _product(self, product: str, reader: ProductReader) -> Iterator[Item]:
        connection = CoinbaseConnection(
            f"{self.source}/{product}", self.skipped, self.ignored
        )
        connection.protocol = self.protocol
        for _, _, items in reader:
            for line in items:
                record = parse_record(line)[0] if type(line) is bytes else line
                t_ns = record.get("t_ns") if record is not None else None
                if type(t_ns) is not int or t_ns <= 0:
                    self.skipped[product if record else None, DAMAGED] += 1
                    continue
                if record.get("event") == CONNECTED:
                    yield from connection.connect(t_ns)
                    continue
                frame = record.get("frame")
                if type(frame) is not str:
                    self.skipped[product, "records without a frame"] += 1
                    continue
                yield from connection.received(t_ns, frame)
