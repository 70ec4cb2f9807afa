"""Many foreign files as one stream: detect each, read each, merge by receive time.

:func:`open_sources` takes paths and globs, detects each file's format from its content
(:mod:`importers.detect`) and returns one reader per source: a tardis.dev file, a
cryptofeed v3 capture, a cryptofeed 2.x connection (its rotated files ``X.0``,
``X.1``, ... read in order, as one connection), or a recording of this project
(:mod:`importers.recordings`). Any file that cannot be imported is
refused before anything is read, each in one line: a conversion never silently leaves a
file out.

:func:`merged` merges the readers' items by receive time (:func:`heapq.merge` over the
per-file iterators, so memory stays one item per source), and :class:`Router` makes the
merged items one well-formed stream per product:

* a product's stream starts with a reset, then a snapshot (reason "start" the first
  time, "next file" when another file takes the product over, as the next day's file
  does with its own snapshot);
* a product belongs to the source of its last snapshot: updates of another source (two
  files holding the same hours of one product) are dropped and counted, so two streams
  never interleave into one book;
* a conversion writes one protocol: frames of the other are counted and left out
  (convert them to a recording of their own);
* Advanced Trade frames are numbered per product from 0 after each reset, as the
  recorder's one connection per product numbers them: a frame whose ``sequence_num``
  differs is re-serialized with the new number (counted in :attr:`Router.rewritten`).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Union

import orjson

from coinbase.feeds import ADVANCED_TRADE, EXCHANGE
from common.text import shown
from events import BookReset, BookSnapshot
from importers.cryptofeed import CaptureReader, RawCaptureReader
from importers.detect import (
    CRYPTOFEED_CAPTURE,
    CRYPTOFEED_RAW,
    OWN_RECORDING,
    TARDIS_L2,
    Detected,
    ImportFormatError,
    detect,
)
from importers.inputs import Lines, expand
from importers.recordings import RECORDING, RecordingReader
from importers.stream import CONNECTION, NEW_SNAPSHOT, NEXT_FILE, START, Item, t_ns_of
from importers.tardis import TardisReader
from recording.format import RecordingError
from recording.reader import Recording

Reader = Union[TardisReader, CaptureReader, RawCaptureReader, RecordingReader]  # noqa: UP007
_ROTATION = re.compile(r"(.+)\.(\d{1,9})")
_ENVELOPE = re.compile(
    r'\{\s*"channel"\s*:\s*"[a-z0-9_]{1,40}"\s*,\s*"client_id"\s*:\s*"[^"\\]{0,200}"'
    r'\s*,\s*"timestamp"\s*:\s*"[^"\\]{0,60}"\s*,\s*"sequence_num"\s*:\s*(\d{1,20})\b'
)
"""The start of an Advanced Trade message in Coinbase's key order, up to the envelope's
``sequence_num``: only simple keys and strings without quotes come before it, so the
number found is the envelope's own. Renumbering it in the text is 20 times cheaper than
an orjson round trip of the frame; a frame of another shape takes the round trip."""


def open_sources(patterns: list[str]) -> tuple[list[Reader], list[str]]:
    """One reader per source, and one line per path that cannot be imported (callers
    refuse the whole conversion when there is any)."""
    paths, problems = expand(patterns)
    detected = []
    for path in paths:
        try:
            detected.append(detect(path))
        except ImportFormatError as exc:
            if exc.why != OWN_RECORDING:
                problems.append(str(exc))
                continue
            try:  # this project's own recording: merged with the others
                Recording.open(path)
            except RecordingError as bad:
                problems.append(shown(bad))
                continue
            detected.append(Detected(path, RECORDING, "gzip", ""))
    specs: list[tuple[str, list[Path]]] = []
    chains: dict[tuple[Path, str], list[Path]] = {}
    for found in detected:
        if found.format != CRYPTOFEED_RAW:
            specs.append((found.format, [found.path]))
            continue
        rotation = _ROTATION.fullmatch(found.path.name)
        key = (found.path.parent, rotation[1] if rotation else found.path.name)
        if key not in chains:
            chains[key] = []
            specs.append((CRYPTOFEED_RAW, chains[key]))
        chains[key].append(found.path)
    readers: list[Reader] = []
    for number, (kind, files) in enumerate(specs):
        source = str(number)
        if kind == TARDIS_L2:
            readers.append(TardisReader(files[0], source))
        elif kind == CRYPTOFEED_CAPTURE:
            readers.append(CaptureReader(files[0], source))
        elif kind == RECORDING:
            readers.append(RecordingReader(files[0], source))
        else:
            readers.append(
                RawCaptureReader(sorted(files, key=_rotation_number), source)
            )
    return readers, problems


def _rotation_number(path: Path) -> int:
    rotation = _ROTATION.fullmatch(path.name)
    return int(rotation[2]) if rotation else 0


def lines_of(reader: Reader) -> list[Lines]:
    """The files a reader reads (for a progress bar: their sizes and positions)."""
    lines = reader.lines
    return lines if isinstance(lines, list) else [lines]


def merged(readers: Iterable[Reader]) -> Iterator[Item]:
    """Every reader's items, merged by receive time (each reader's order kept)."""
    return heapq.merge(*readers, key=t_ns_of)


def _file_of(source: str) -> str:
    return source.split("/", 1)[0]


class Router:
    """The merged items made one stream per product (see the module docstring)."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}
        self._reset_last: dict[str, bool] = {}
        self._numbers: dict[str, int] = {}
        self.protocol: str | None = None
        self.skipped: Counter = Counter()
        self.rewritten = 0
        """Advanced Trade frames re-serialized (split, or renumbered)."""

    def route(self, items: Iterable[Item]) -> Iterator[Item]:
        owner = self.owner
        reset_last = self._reset_last
        for item in items:
            product = item.product_id
            event = item.event
            kind = type(event)
            if kind is BookReset:
                if owner.get(product) == item.source and not reset_last.get(product):
                    reset_last[product] = True
                    self._numbers[product] = 0
                    yield item
                continue
            protocol = EXCHANGE if item.sequence is None else ADVANCED_TRADE
            if protocol is not self.protocol:
                if self.protocol is None:
                    self.protocol = protocol
                else:
                    self.skipped[
                        product, f"{protocol} frames (not {self.protocol})"
                    ] += 1
                    continue
            if kind is BookSnapshot:
                previous = owner.get(product)
                if previous != item.source or not reset_last.get(product):
                    yield self._reset(item, previous)
                owner[product] = item.source
            elif owner.get(product) != item.source:
                self.skipped[product, "updates from an overlapping source"] += 1
                continue
            reset_last[product] = False
            if item.sequence is not None:
                item = self._numbered(item)
            yield item

    def _reset(self, item: Item, previous: str | None) -> Item:
        if previous is None:
            reason = START
        elif previous == item.source:
            reason = NEW_SNAPSHOT
        elif _file_of(previous) != _file_of(item.source):
            reason = NEXT_FILE
        else:
            reason = CONNECTION
        product = item.product_id
        self._numbers[product] = 0
        event = BookReset(product, reason, item.event.feed, item.t_ns)
        return Item(item.t_ns, product, event, None, item.source)

    def _numbered(self, item: Item) -> Item:
        product = item.product_id
        number = self._numbers.get(product, 0)
        self._numbers[product] = number + 1
        if item.sequence == number:
            return item
        self.rewritten += 1
        text = item.frame()
        found = _ENVELOPE.match(text)
        if found is not None:  # Coinbase's own key order: the number is the envelope's
            text = f"{text[: found.start(1)]}{number}{text[found.end(1) :]}"
        else:
            payload = orjson.loads(text)
            payload["sequence_num"] = number
            text = orjson.dumps(payload).decode()
        return item._replace(text=text, sequence=number)
