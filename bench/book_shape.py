"""Synthetic books and change streams shaped like real BTC-USD level-2 depth.

Used only by benchmarks. Deterministic for a given seed. Shape: about 18,000 bids and
27,000 asks around 65,000 USD on a 0.01 tick; levels dense near the top and sparser
further out; sizes with 8 decimals, small near the top with a heavy tail. Changes
follow live activity: the distance from the top (in levels) is exponential, so most
changes hit the first few dozen levels; about 10% delete a level and 10% add one
(new levels fill the spread first, then vacant ticks near the top).
"""

from __future__ import annotations

import random
from decimal import Decimal

import orjson
from sortedcontainers import SortedDict

TICK = Decimal("0.01")
StrLevel = tuple[str, str]


def _size(rng: random.Random) -> str:
    return f"{min(rng.lognormvariate(-2.5, 1.6), 250.0):.8f}"


def _ladder(rng: random.Random, n: int) -> list[int]:
    """Tick offsets from the top: gaps of 1 near the top, widening with depth."""
    offsets, offset = [], 0
    for i in range(n):
        offsets.append(offset)
        offset += 1 + int(rng.expovariate(1.0 / (1 + i / 1500)))
    return offsets


def make_levels(
    seed: int = 1,
    n_bids: int = 18_000,
    n_asks: int = 27_000,
    best_bid: Decimal = Decimal("65083.66"),
) -> tuple[list[StrLevel], list[StrLevel]]:
    """(bids best first, asks best first) as wire strings, one tick spread."""
    rng = random.Random(seed)
    best_ask = best_bid + TICK
    bids = [(str(best_bid - k * TICK), _size(rng)) for k in _ladder(rng, n_bids)]
    asks = [(str(best_ask + k * TICK), _size(rng)) for k in _ladder(rng, n_asks)]
    return bids, asks


def make_messages(
    bids: list[StrLevel],
    asks: list[StrLevel],
    n_changes: int,
    seed: int = 2,
    mean_depth: float = 12.0,
    max_batch: int = 6,
) -> list[list[tuple[str, Decimal, Decimal]]]:
    """Messages of 1..max_batch changes each, as the parser hands them over.

    Each change's Decimals are fresh objects parsed from strings, as the parser makes
    them (so their hashes are not cached), and every change is valid against the book
    as it stands after the previous ones, so the book stays uncrossed throughout.
    """
    rng = random.Random(seed)
    sim_bids = SortedDict((Decimal(p), s) for p, s in bids)
    sim_asks = SortedDict((Decimal(p), s) for p, s in asks)
    changes: list[tuple[str, Decimal, Decimal]] = []
    while len(changes) < n_changes:
        is_bid = rng.random() < 0.5
        book, other = (sim_bids, sim_asks) if is_bid else (sim_asks, sim_bids)
        depth = min(int(rng.expovariate(1.0 / mean_depth)), len(book) - 1)
        kind = rng.random()
        if kind < 0.10 and len(book) > 100:  # delete an existing level
            price = book.peekitem(-1 - depth if is_bid else depth)[0]
            size = rng.choice(("0", "0.00000000", "0.00"))
            del book[price]
        elif kind < 0.20:  # add a level: fill the spread first, then vacant ticks
            edge = other.peekitem(0 if is_bid else -1)[0]
            step = -TICK if is_bid else TICK
            price = edge + step * (1 + int(rng.expovariate(1.0 / (mean_depth * 2))))
            while price in book:
                price += step
            size = _size(rng)
            book[price] = size
        else:  # new absolute size for an existing level
            price = book.peekitem(-1 - depth if is_bid else depth)[0]
            size = _size(rng)
            book[price] = size
        changes.append(("bid" if is_bid else "ask", Decimal(str(price)), Decimal(size)))
    messages, i = [], 0
    while i < len(changes):
        n = rng.randint(1, max_batch)
        messages.append(changes[i : i + n])
        i += n
    return messages


def exchange_snapshot_json(
    bids: list[StrLevel], asks: list[StrLevel], product_id: str = "BTC-USD"
) -> bytes:
    """Exchange ``level2`` snapshot wire form: ``[["price","size"], ...]``."""
    return orjson.dumps(
        {
            "type": "snapshot",
            "product_id": product_id,
            "bids": [list(level) for level in bids],
            "asks": [list(level) for level in asks],
        }
    )


def advanced_trade_snapshot_json(
    bids: list[StrLevel], asks: list[StrLevel], product_id: str = "BTC-USD"
) -> bytes:
    """Advanced Trade ``l2_data`` snapshot wire form (one dict per level, ~5 MB)."""
    stamp = "2026-08-09T21:05:48.170326Z"

    def update(side: str, level: StrLevel) -> dict[str, str]:
        return {
            "side": side,
            "event_time": stamp,
            "price_level": level[0],
            "new_quantity": level[1],
        }

    updates = [update("bid", lv) for lv in bids] + [update("offer", lv) for lv in asks]
    return orjson.dumps(
        {
            "channel": "l2_data",
            "client_id": "",
            "timestamp": "2026-08-09T21:05:48.483587501Z",
            "sequence_num": 0,  # the first message of a connection
            "events": [
                {"type": "snapshot", "product_id": product_id, "updates": updates}
            ],
        }
    )
