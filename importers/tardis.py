"""tardis.dev ``incremental_book_L2`` CSV (``.csv`` or ``.csv.gz``) to recording items.

The format (tardis.dev, "Downloadable CSV files")::

    exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount
    coinbase,BTC-USD,1585699200099426,1585699200099426,true,bid,6421.5,0.5

``timestamp`` is the exchange's time in µs since the epoch (tardis puts
``local_timestamp`` there when the exchange sent none, as for Coinbase snapshots),
``local_timestamp`` the receive time; ``side`` is ``bid`` or ``ask``; ``amount`` is the
level's new absolute size, 0 deletes it. Rows sharing one ``local_timestamp`` came from
one message: each such run of one symbol becomes one frame. When a symbol's
``is_snapshot`` turns from false to true a new snapshot starts and replaces the book (a
reset, reason "new snapshot", then a ``snapshot`` frame); snapshot rows that go on past
their first message add their levels (an ``l2update``). Rows of a symbol before its first
snapshot are skipped and counted, as tardis.dev says to.

Frames are synthesized in the Exchange protocol: ``snapshot`` with every level of the
snapshot (bids best first, zero sizes dropped) and ``l2update`` with the changes of one
message in row order, prices and sizes as canonical decimal text. Numbers in the file are
in shortest form (``6421.5``, ``0``) and are compared as decimals, never as text: a level
written ``6421.50`` is the level ``6421.5``.

A damaged row (wrong number of columns, a bad number, side or flag, a symbol that is not
a product id) is skipped and counted; the rest of its message is kept and the book goes
on (one level may then be wrong until it next changes, as when a replay skips a frame).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from itertools import chain

from common.domain import is_product_id, price_in, size_in
from events import ASK, BID, BookSnapshot, book_changes
from importers.detect import TARDIS_L2, TARDIS_L2_HEADER
from importers.inputs import Lines
from importers.stream import (
    NEW_SNAPSHOT,
    Item,
    Streams,
    time_of_us,
)
from orderbook import CheckedChanges

FEED = "tardis"
_new_item = tuple.__new__
_SIDES = {"bid": BID, "ask": ASK}
_PRICE_CACHE = 65_536
"""Distinct price texts remembered (the same few hundred levels near the top change again
and again; a cached price skips the parse and its hash)."""

_SIZE_CACHE = 4096
"""Distinct size texts remembered: ``0`` (every deletion, about a third of the rows) and
the round sizes that come back skip the parse and the domain check (0.2-0.4 µs)."""

_NO_ROW = [None] * 8
"""The "previous row" before the first: no row's fields equal its."""
_ASCII_SPACE = " \t\n\r\x0b\x0c"

DAMAGED = "damaged rows"
NOT_A_PRODUCT = "rows whose symbol is not a product id"
BEFORE_SNAPSHOT = "rows before the first snapshot"


class TardisReader:
    """The items of one ``incremental_book_L2`` file, in file order (receive order).

    :attr:`skipped` counts ``(product or None, why)``; :attr:`lines` is the underlying
    reader (its ``ended_early`` says if the file was cut off).
    """

    format = TARDIS_L2
    protocol = "exchange"
    feed = FEED
    """The feed of the book events built (a direct replay sets its own: its partitions
    then pass the events on as they are, :class:`importers.direct.DirectPartition`)."""

    def __init__(self, path: str | os.PathLike, source: str = "0") -> None:
        self.lines = Lines(path)
        self.path = self.lines.path
        self.skipped: Counter = Counter()
        self.streams = Streams(source, FEED, self.skipped)
        self.rows = 0
        self.exchanges: set[str] = set()
        self._prices: dict[str, Decimal] = {}
        self._sizes: dict[str, Decimal] = {}
        self._symbols: dict[str, bool] = {}
        self._in_snapshot: dict[str, bool] = {}
        self._times: tuple[str, object] = ("", None)

    @property
    def sources(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Item]:
        yield from self._items()
        if self.lines.skipped:
            for why, n in self.lines.skipped.items():
                self.skipped[None, why] += n

    def _items(self) -> Iterator[Item]:
        """One loop over the rows, each row's values checked where it is split.

        Why so: the rows are most of a direct replay's reading. The file is decoded a
        block (256 KiB) at a time rather than line by line, a row is parsed where it is
        split (no list of a message's rows to walk again, no generator per message),
        and a value goes through :func:`common.domain.price_in` or
        :func:`common.domain.size_in` only the first time its text is seen (a cache
        per column). Measured on bench_importers' file (100,004 messages, 338,373 rows,
        CPU time, median of 5, three alternating runs): 0.81-0.90 s to read its items
        before, 0.63-0.68 s so; with the changes of :mod:`importers.direct`, its whole
        ``ORDERBOOK_REPLAY`` went from 1.43x the CPU time of the same events' recording
        to 1.16x (bench_importers, medians of 3 rounds)."""
        first: list = _NO_ROW  # the first row of the message being read
        count = 0
        changes: CheckedChanges | None = None
        skipped = self.skipped
        side_of = _SIDES.get
        sizes = self._sizes
        price_of, size_of = self._prices.get, sizes.get
        for line in self._lines():
            fields = line.split(",")
            if len(fields) != 8:
                self._damaged(line)
                continue
            # a message: the rows of one symbol sharing local_timestamp and is_snapshot
            if fields[3] != first[3] or fields[1] != first[1] or fields[4] != first[4]:
                if count:
                    yield from self._message(first, changes, count)
                first, count = fields, 0
                changes = CheckedChanges() if self._valid(fields) else None
            count += 1
            if changes is None:
                continue  # a message with a bad symbol, time or flag: only counted
            side = side_of(fields[5])
            price = price_of(fields[6]) or self._price(fields[6])
            size = size_of(fields[7])
            if size is None:  # most sizes are new: no method call for them
                size = size_in(fields[7])
                if size is not None:
                    if len(sizes) >= _SIZE_CACHE:
                        sizes.clear()
                    sizes[fields[7]] = size
            if side is None or price is None or size is None:
                skipped[first[1], DAMAGED] += 1
            else:
                changes.append((side, price, size))
        if count:
            yield from self._message(first, changes, count)

    def _lines(self) -> Iterator[str]:
        """The lines after the header (none, and counted, when the first line that is
        not blank is no ``incremental_book_L2`` header)."""
        texts = self._texts()
        for block in texts:
            lines = iter(block)
            for line in lines:
                if line.strip(_ASCII_SPACE):  # what bytes.strip() strips
                    if line.lstrip("\ufeff") != TARDIS_L2_HEADER:
                        self.skipped[
                            None, "files without the incremental_book_L2 header"
                        ] += 1
                        return iter(())
                    return chain(lines, chain.from_iterable(texts))
        return iter(())

    def _damaged(self, line: str) -> None:
        if line.strip():
            self.skipped[None, DAMAGED] += 1

    def _price(self, text: str) -> Decimal | None:
        """A price not in the cache: checked, then remembered (None: not a price)."""
        price = price_in(text)
        if price is not None:
            if len(self._prices) >= _PRICE_CACHE:
                self._prices.clear()
            self._prices[text] = price
        return price

    def _texts(self) -> Iterator[list[str]]:
        """The file's lines as text, a block at a time, without their ``\\r``.

        A ``\\n`` is never part of a UTF-8 sequence, so decoding a block then
        splitting it gives the lines decoding each line would (``replace`` included)."""
        for block in self.lines.blocks():
            text = block.decode("utf-8", "replace")
            if "\r" in text:
                yield [line.rstrip("\r") for line in text.split("\n")]
            else:
                yield text.split("\n")

    # -- one message: the rows of one symbol sharing local_timestamp and is_snapshot ----

    def _valid(self, first: list[str]) -> bool:
        """Whether a message's rows are read (else :meth:`_message` counts them)."""
        symbol, local, flag = first[1], first[3], first[4]
        valid = self._symbols.get(symbol)
        if valid is None:
            valid = self._symbols[symbol] = is_product_id(symbol)
        if not valid or not (flag == "true" or flag == "false") or not local.isdigit():
            return False
        try:
            return int(local) > 0
        except ValueError:  # a digit int() does not read ("²"): a damaged time
            return False

    def _message(
        self, first: list[str], changes: CheckedChanges | None, count: int
    ) -> tuple[Item, ...] | list[Item]:
        """The items of one message of ``count`` rows, ``first`` the first of them;
        ``changes`` its valid rows, None when :meth:`_valid` said no (a sequence, not a
        generator: one fewer object a message)."""
        self.rows += count
        symbol, local, flag = first[1], first[3], first[4]
        if changes is None:
            if not self._symbols[symbol]:
                self.skipped[None, NOT_A_PRODUCT] += count
            else:
                self.skipped[symbol, DAMAGED] += count
            return ()
        if not changes:
            return ()
        t_ns = int(local) * 1000
        time = self._time(first[2])
        self.exchanges.add(first[0])
        streams = self.streams
        if flag == "true":
            if not self._in_snapshot.get(symbol):
                self._in_snapshot[symbol] = True
                out = []
                if symbol in streams.live:
                    out.extend(streams.reset(t_ns, (symbol,), NEW_SNAPSHOT))
                bids: dict[Decimal, Decimal] = {}
                asks: dict[Decimal, Decimal] = {}
                for side, price, size in changes:
                    (bids if side is BID else asks)[price] = size
                event = BookSnapshot(
                    symbol,
                    sorted(((p, s) for p, s in bids.items() if s), reverse=True),
                    sorted((p, s) for p, s in asks.items() if s),
                    time,
                    self.feed,
                    t_ns,
                )
                out.append(streams.snapshot(t_ns, event, None))
                return out
            # the snapshot goes on in another message: its levels add to the book
        else:
            self._in_snapshot[symbol] = False
        if symbol not in streams.live:
            self.skipped[symbol, BEFORE_SNAPSHOT] += count
            return ()
        # streams.update's item, the product known live (0.67 -> 0.39 µs an item)
        event = book_changes(symbol, changes, time, self.feed, t_ns)
        return (_new_item(Item, (t_ns, symbol, event, None, streams.source, None)),)

    def _time(self, text: str):
        """The exchange time of a message (rows of one message share it: cached)."""
        last_text, last = self._times
        if text == last_text:
            return last
        try:
            time = time_of_us(int(text)) if text.isdigit() else None
        except (OverflowError, ValueError):
            time = None
        self._times = (text, time)
        return time


def snapshot_symbols(path: str | os.PathLike) -> set[str]:
    """The symbols of ``path`` that have a snapshot row: the products its replay yields
    (a symbol with no snapshot yields nothing, a symbol that is no product id is left
    out), found before the replay starts, which must name its products.

    A scan of the text, not of rows: ``bytes.find`` goes from one ``,true,`` (the
    ``is_snapshot`` column of a snapshot row) to the next, passing over the update rows
    in C. Measured on bench_importers' 100,004-message file (430,000 rows, 3.2 MB
    gzip, four 1,000-level snapshots): 0.08 s, mostly the decompression, against
    0.9 s to read its rows.
    """
    found: set[bytes] = set()
    for block in Lines(path).blocks():
        at = block.find(b",true,")
        while at >= 0:
            start = block.rfind(b"\n", 0, at) + 1
            end = block.find(b"\n", at)
            fields = block[start : end if end >= 0 else len(block)].split(b",")
            if len(fields) == 8 and fields[4] == b"true":
                found.add(fields[1])
            if end < 0:
                break
            at = block.find(b",true,", end)
    symbols = {s.decode("utf-8", "replace") for s in found}
    return {symbol for symbol in symbols if is_product_id(symbol)}
