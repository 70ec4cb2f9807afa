"""Replay of a recording as a Bytewax source."""

from __future__ import annotations

import logging
import os
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from coinbase.decode import FeedError, FrameDecoder, MalformedFrame, SequenceGap
from events import BookEvent, BookReset
from recording.format import (
    CONNECTED,
    Recording,
    RecordingError,
)
from service.logs import RateLimitedLog

log = logging.getLogger(__name__)


class ReplayPartition(StatefulSourcePartition[tuple[str, BookEvent], dict[str, int]]):
    """Emits the recording's events in file order, as fast as the dataflow takes them.

    One partition reads the file once for all products (a gzip file is one sequential
    stream; reading it once per product cost more than everything else of a replay). The
    books still spread over the workers: the book step is keyed per product.

    Resume state is, per product, the index of the record that started its current
    stream (its last connection). A resumed replay starts at the earliest of them, after
    a reset of every product, so each book is rebuilt from a snapshot in the file instead
    of resuming a stale one.
    """

    BATCH = 500

    def __init__(
        self,
        recording: Recording,
        products: list[str],
        feed_label: str,
        resume: dict[str, int] | None,
    ):
        self._feed = feed_label
        self._protocol = recording.protocol
        self._decoders = {p: FrameDecoder(self._protocol, feed_label) for p in products}
        self._stream_starts = dict.fromkeys(products, 0)
        if resume:
            self._stream_starts.update(
                {p: i for p, i in resume.items() if p in self._stream_starts}
            )
        self._records = recording.records(min(self._stream_starts.values(), default=0))
        self._pending: list[tuple[str, BookEvent]] = [
            (p, BookReset(p, "replay start", feed_label)) for p in products
        ]
        self._bad = RateLimitedLog(log)
        self.stats = {"frames": 0, "events": 0, "malformed": 0, "gaps": 0, "errors": 0}

    def next_batch(self) -> list[tuple[str, BookEvent]]:
        batch, self._pending = self._pending, []
        for index, record in self._records:
            product = record.get("product_id")
            decoder = self._decoders.get(product)
            if decoder is None:
                continue
            if record.get("event") == CONNECTED:
                self._stream_starts[product] = index
                self._decoders[product] = FrameDecoder(self._protocol, self._feed)
                batch.append((product, BookReset(product, "reconnected", self._feed)))
                continue
            batch.extend(self._decode(product, decoder, record))
            if len(batch) >= self.BATCH:
                return batch
        if batch:
            return batch
        raise StopIteration

    def _decode(
        self, product: str, decoder: FrameDecoder, record: dict[str, Any]
    ) -> list[tuple[str, BookEvent]]:
        frame = record.get("frame")
        if not isinstance(frame, str):
            self.stats["malformed"] += 1
            return []
        self.stats["frames"] += 1
        try:
            events = decoder.decode(frame, int(record.get("t_ns") or 0))
        except MalformedFrame as exc:
            self.stats["malformed"] += 1
            self._bad.warning("%s: malformed frame skipped: %s", product, exc)
            if exc.resync:
                return [(product, BookReset(product, "malformed frame", self._feed))]
            return []
        except SequenceGap as exc:
            self.stats["gaps"] += 1
            self._bad.warning("%s: %s in the recording; book reset", product, exc)
            return [(product, BookReset(product, "sequence gap", self._feed))]
        except FeedError as exc:
            self.stats["errors"] += 1
            self._bad.warning("%s: recorded error reply: %s", product, exc)
            return []
        self.stats["events"] += len(events)
        return [(e.product_id, e) for e in events if e.product_id == product]

    def snapshot(self) -> dict[str, int]:
        return dict(self._stream_starts)


class ReplaySource(FixedPartitionedSource[tuple[str, BookEvent], dict[str, int]]):
    """A recording as a finite Bytewax source: one partition, ends at the file's end."""

    PARTITION = "replay"

    def __init__(
        self,
        path: str | os.PathLike,
        products: list[str] | None = None,
        feed_label: str = "replay",
    ) -> None:
        self.recording = Recording.open(path)
        recorded = self.recording.products
        if products is None:
            self.products = recorded
        else:
            missing = [p for p in products if p not in recorded]
            if missing:
                raise RecordingError(
                    f"{self.recording.path} has no {', '.join(missing)}; "
                    f"it recorded {', '.join(recorded) or 'nothing'}"
                )
            self.products = list(products)
        self.feed_label = feed_label

    def list_parts(self) -> list[str]:
        return [self.PARTITION]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> ReplayPartition:
        return ReplayPartition(
            self.recording, self.products, self.feed_label, resume_state
        )
