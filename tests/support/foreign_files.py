"""Foreign market-data files whose true books are known, for the importers' tests.

:func:`market_session` runs the local exchange's :class:`~local_exchange.market.Market`
(the true books) and keeps what happened as plain events: a snapshot of each product,
then batches of level changes, ``step_ns`` apart, with new snapshots where asked (the
start of a UTC day, as tardis.dev's daily files begin). The writers turn one session into
each foreign format, so the same events exist in every format and the final true books
are :attr:`MarketSession.truth`:

* :func:`write_tardis`: tardis.dev ``incremental_book_L2`` CSV (optionally gzip), one
  file, or one per product and UTC day (:func:`write_tardis_days`);
* :func:`write_cryptofeed_raw`: a cryptofeed 2.x raw capture of one Exchange-feed
  connection carrying every product, rotated into several files;
* :func:`write_cryptofeed_capture`: a cryptofeed v3 ``.jsonl.zst`` capture of one
  Advanced Trade connection carrying every product, some frames holding two products'
  events, heartbeats numbered in between.

:func:`replayed_books` replays a recording through the project's own replay source (the
partitions ``ORDERBOOK_REPLAY`` uses, driven by hand, no Bytewax run) into reference
books; :func:`top` gives a book's top levels to compare.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import zstandard

from common.decimals import plain
from events import BookReset
from local_exchange.market import Market
from recording.replay import ReplaySource
from tests.support.recordings import polled
from tests.support.reference_book import ReferenceBook

DAY_NS = 86_400 * 10**9
START_NS = 1_780_012_800 * 10**9 - 30 * 10**9
"""30 s before midnight UTC (2026-05-29T00:00:00Z): sessions may cross into a new day."""
TARDIS_HEADER = (
    "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"
)


@dataclass
class MarketSession:
    products: tuple[str, ...]
    events: list[tuple[int, str, str, Any]] = field(default_factory=list)
    """``(t_ns, product, "snapshot" | "changes", data)``: a snapshot's data is
    ``(bids, asks)`` as ``[[price, size], ...]`` text; changes are ``(side "bid"|"ask",
    price, size)`` text as the market sends them (``"65083.66000000"``, ``"0.00"``)."""
    truth: dict[str, tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]] = field(
        default_factory=dict
    )


def market_session(
    products: Sequence[str] = ("BTC-USD", "ETH-USD"),
    batches: int = 150,
    *,
    seed: int = 7,
    depth: int = 60,
    start_ns: int = START_NS,
    step_ns: int = 1_000_000,
    snapshot_each_day: bool = True,
    changes_per_batch: int = 5,
) -> MarketSession:
    """Batches per product, round-robin, ``step_ns`` apart (whole µs)."""
    market = Market(
        list(products), depth=depth, seed=seed, changes_per_batch=changes_per_batch
    )
    session = MarketSession(tuple(products))
    t = start_ns
    for product in products:
        t += 1000
        session.events.append((t, product, "snapshot", market.snapshot(product)))
    day = t // DAY_NS
    for _ in range(batches):
        for product in products:
            t += step_ns
            if snapshot_each_day and t // DAY_NS != day:
                day = t // DAY_NS
                for p in products:
                    session.events.append((t, p, "snapshot", market.snapshot(p)))
                    t += 1000
            session.events.append((t, product, "changes", market.next_batch(product)))
    session.truth = {p: market.book(p) for p in products}
    return session


def top(
    bids: dict[Decimal, Decimal], asks: dict[Decimal, Decimal], n: int = 25
) -> tuple[list, list]:
    """The ``n`` best levels of each side, best first."""
    best_bids = sorted(bids, reverse=True)[:n]
    best_asks = sorted(asks)[:n]
    return [(p, bids[p]) for p in best_bids], [(p, asks[p]) for p in best_asks]


def _us_text(t_ns: int) -> str:
    return str(t_ns // 1000)


def _seconds_text(t_ns: int) -> str:
    return f"{t_ns // 10**9}.{t_ns % 10**9 // 1000:06d}"


def _iso(t_ns: int) -> str:
    return (
        datetime.fromtimestamp(t_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        + f".{t_ns % 10**9 // 1000:06d}Z"
    )


def _shortest(text: str) -> str:
    return plain(Decimal(text))


# -- tardis.dev ----------------------------------------------------------------------------


def tardis_rows(
    session: MarketSession, products: Sequence[str] | None = None
) -> list[str]:
    """The session's rows (tardis prints numbers in shortest form); the exchange's
    ``timestamp`` is 0.5 ms before ``local_timestamp`` for updates, the same for
    snapshots (Coinbase sends none)."""
    rows = []
    for t_ns, product, kind, data in session.events:
        if products is not None and product not in products:
            continue
        local = _us_text(t_ns)
        if kind == "snapshot":
            bids, asks = data
            for side, levels in (("bid", bids), ("ask", asks)):
                for price, size in levels:
                    rows.append(
                        f"coinbase,{product},{local},{local},true,{side},"
                        f"{_shortest(price)},{_shortest(size)}"
                    )
        else:
            stamp = str(t_ns // 1000 - 500)
            for side, price, size in data:
                rows.append(
                    f"coinbase,{product},{stamp},{local},false,{side},"
                    f"{_shortest(price)},{_shortest(size)}"
                )
    return rows


def write_tardis(
    path: Path,
    session: MarketSession,
    *,
    products: Sequence[str] | None = None,
    compress: bool | None = None,
    rows: list[str] | None = None,
) -> Path:
    """One ``incremental_book_L2`` file (gzip when the name ends in ``.gz``)."""
    text = "\n".join([TARDIS_HEADER, *(rows or tardis_rows(session, products))]) + "\n"
    if compress or (compress is None and path.name.endswith(".gz")):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def write_tardis_days(directory: Path, session: MarketSession) -> list[Path]:
    """One gzip file per product and UTC day, named as tardis.dev names downloads."""
    by_file: dict[tuple[str, str], list] = {}
    for event in session.events:
        t_ns, product = event[0], event[1]
        day = datetime.fromtimestamp(t_ns // 10**9, UTC).date().isoformat()
        by_file.setdefault((product, day), []).append(event)
    paths = []
    for (product, day), events in sorted(by_file.items()):
        assert events[0][2] == "snapshot", "each day's file starts with a snapshot"
        part = MarketSession(session.products, events)
        path = directory / f"coinbase_incremental_book_L2_{day}_{product}.csv.gz"
        paths.append(write_tardis(path, part))
    return paths


# -- cryptofeed 2.x raw ------------------------------------------------------------------


def _exchange_frame(t_ns: int, product: str, kind: str, data: Any) -> str:
    if kind == "snapshot":
        bids, asks = data
        return json.dumps(
            {"type": "snapshot", "product_id": product, "bids": bids, "asks": asks}
        )
    sides = {"bid": "buy", "ask": "sell"}
    return json.dumps(
        {
            "type": "l2update",
            "product_id": product,
            "changes": [[sides[s], p, q] for s, p, q in data],
            "time": _iso(t_ns),
        }
    )


def cryptofeed_raw_lines(
    session: MarketSession, address: str = "wss://ws-feed.pro.coinbase.com"
) -> list[str]:
    """One Exchange-feed connection's capture lines, tickers and heartbeats between."""
    first = session.events[0][0]
    products = list(session.products)
    subscribe = {
        "type": "subscribe",
        "product_ids": products,
        "channels": ["level2", "ticker", "heartbeat"],
    }
    lines = [
        "configuration: " + json.dumps({"log": {"filename": "feedhandler.log"}}),
        f"{address} <-> {_seconds_text(first - 2_000_000)}",
        f"{address} <- {_seconds_text(first - 1_500_000)}: {json.dumps(subscribe)}",
        f"{_seconds_text(first - 1_000_000)}: "
        + json.dumps(
            {
                "type": "subscriptions",
                "channels": [{"name": "level2", "product_ids": products}],
            }
        ),
        "https://api.pro.coinbase.com/products -> "
        f'{_seconds_text(first - 900_000)}: [{{"id": "BTC-USD"}}]',
        "",
    ]
    for i, (t_ns, product, kind, data) in enumerate(session.events):
        frame = _exchange_frame(t_ns, product, kind, data)
        lines.append(f"{_seconds_text(t_ns)}: {frame}")
        if i % 7 == 3:
            ticker = {"type": "ticker", "product_id": product, "price": "1.5"}
            lines.append(f"{_seconds_text(t_ns)}: {json.dumps(ticker)}")
        if i % 11 == 5:
            beat = {"type": "heartbeat", "product_id": product, "sequence": i}
            lines.append(f"{_seconds_text(t_ns)}: {json.dumps(beat)}")
    return lines


def write_cryptofeed_raw(
    directory: Path,
    session: MarketSession,
    *,
    uuid: str = "COINBASE.ws.28",
    files: int = 3,
    lines: list[str] | None = None,
) -> list[Path]:
    """The capture rotated into ``files`` files ``uuid.0``, ``uuid.1``, ..."""
    lines = lines if lines is not None else cryptofeed_raw_lines(session)
    per_file = -(-len(lines) // files)
    paths = []
    for n in range(files):
        path = directory / f"{uuid}.{n}"
        path.write_text("\n".join(lines[n * per_file : (n + 1) * per_file]) + "\n")
        paths.append(path)
    return paths


# -- cryptofeed v3 (Advanced Trade) -------------------------------------------------------


def _at_updates(kind: str, data: Any) -> list[dict]:
    stamp = "2026-05-28T23:59:59.000000Z"
    if kind == "snapshot":
        bids, asks = data
        return [
            {"side": side, "event_time": stamp, "price_level": p, "new_quantity": q}
            for side, levels in (("bid", bids), ("offer", asks))
            for p, q in levels
        ]
    sides = {"bid": "bid", "ask": "offer"}
    return [
        {"side": sides[s], "event_time": stamp, "price_level": p, "new_quantity": q}
        for s, p, q in data
    ]


def capture_records(session: MarketSession, conn: str = "COINBASE.ws.3") -> list[dict]:
    """One Advanced Trade connection's records: subscriptions, heartbeats, snapshots
    and updates, ``sequence_num`` counted across all; every fifth pair of updates of
    two products at one time in one frame."""
    first = session.events[0][0]
    address = "wss://advanced-trade-ws.coinbase.com"
    records: list[dict] = [
        {"conn": conn, "ts": (first - 2_000_000) / 1e9, "t": "connect", "addr": address}
    ]
    records.append(
        {
            "conn": conn,
            "ts": (first - 1_500_000) / 1e9,
            "t": "send",
            "addr": address,
            "data": json.dumps(
                {
                    "type": "subscribe",
                    "channel": "level2",
                    "product_ids": list(session.products),
                }
            ),
        }
    )
    sequence = 0

    def frame(t_ns: int, channel: str, events: list[dict]) -> dict:
        nonlocal sequence
        text = json.dumps(
            {
                "channel": channel,
                "client_id": "",
                "timestamp": _iso(t_ns),
                "sequence_num": sequence,
                "events": events,
            }
        )
        sequence += 1
        return {"conn": conn, "ts": t_ns / 1e9, "t": "recv", "data": text}

    records.append(
        frame(
            first - 1_000_000,
            "subscriptions",
            [{"subscriptions": {"level2": list(session.products)}}],
        )
    )
    events = session.events
    i = 0
    while i < len(events):
        t_ns, product, kind, data = events[i]
        book_events = [
            {
                "type": "snapshot" if kind == "snapshot" else "update",
                "product_id": product,
                "updates": _at_updates(kind, data),
            }
        ]
        if kind == "changes" and i % 5 == 0 and i + 1 < len(events):
            t2, product2, kind2, data2 = events[i + 1]
            if kind2 == "changes" and product2 != product:
                book_events.append(
                    {
                        "type": "update",
                        "product_id": product2,
                        "updates": _at_updates(kind2, data2),
                    }
                )
                t_ns = t2
                i += 1
        records.append(frame(t_ns, "l2_data", book_events))
        if i % 9 == 4:
            records.append(
                frame(
                    t_ns, "heartbeats", [{"current_time": "x", "heartbeat_counter": i}]
                )
            )
        i += 1
    return records


def write_cryptofeed_capture(
    path: Path,
    session: MarketSession | None = None,
    *,
    records: list[dict] | None = None,
    compress: bool = True,
    binary_every: int = 0,
) -> Path:
    """A v3 capture: the header, then ``records`` (default: :func:`capture_records`);
    with ``binary_every`` N, every Nth ``recv`` payload is stored as ``b64``."""
    records = records if records is not None else capture_records(session)
    header = {
        "t": "header",
        "format": 2,
        "exchange": "COINBASE",
        "config": {"l2_book": list(session.products if session else [])},
        "candle_interval": None,
        "recorded": 1780000000.0,
    }
    out = [json.dumps(header)]
    for n, record in enumerate(records):
        if binary_every and record["t"] == "recv" and n % binary_every == 0:
            record = dict(record)
            record["b64"] = base64.b64encode(record.pop("data").encode()).decode()
        out.append(json.dumps(record))
    data = ("\n".join(out) + "\n").encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compress else data)
    return path


# -- this project's own recording ---------------------------------------------------------


def write_recording(path: Path, session: MarketSession) -> Path:
    """The session as ``python -m recording`` would have recorded it (Exchange feed, a
    connection per product): the baseline the importers are measured against."""
    from recording.writer import RecordingWriter

    writer = RecordingWriter(
        path,
        {
            "protocol": "exchange",
            "feed": "exchange",
            "url": "ws://127.0.0.1:1/",
            "products": list(session.products),
            "started": _iso(session.events[0][0]),
        },
    )
    try:
        for t_ns, product, kind, data in session.events:
            if kind == "snapshot":
                writer.connected(product, t_ns)
            writer.frame(product, _exchange_frame(t_ns, product, kind, data), t_ns)
    finally:
        writer.close()
    return path


# -- replay ------------------------------------------------------------------------------


def replayed_books(path: Path) -> tuple[dict[str, ReferenceBook], dict[str, Any]]:
    """Every product's book after replaying the recording with the project's replay
    partitions; and what they counted (``stats`` and ``skipped`` per product)."""
    source = ReplaySource(path, progress=False)
    books: dict[str, ReferenceBook] = {}
    counts: dict[str, Any] = {}
    parts = [source.build_part("replay", p, None) for p in source.list_parts()]
    for part in parts:
        book = books.setdefault(part.product, ReferenceBook())
        for _, event in polled([part], 1_000_000):
            if isinstance(event, BookReset):
                book.reset()
            else:
                book.apply(event)
        counts[part.product] = {
            "stats": dict(part.stats),
            "skipped": dict(part.skipped),
        }
    return books, counts


def assert_books_are_the_truth(
    recording: Path, session: MarketSession
) -> tuple[dict[str, ReferenceBook], dict[str, Any]]:
    """Replay ``recording`` by hand: every product of ``session`` has a live book whose
    top equals the truth's, and nothing of it was skipped. Returns the books and counts."""
    books, counts = replayed_books(recording)
    for product, (bids, asks) in session.truth.items():
        book = books[product]
        assert book.live, f"{product} has no book after the replay"
        assert top(book.bids, book.asks) == top(bids, asks), product
        assert not counts[product]["skipped"], counts[product]
    return books, counts
