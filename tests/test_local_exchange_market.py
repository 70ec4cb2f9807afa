"""The simulated market is deterministic, never crossed, and its change stream rebuilds its book."""

from __future__ import annotations

from decimal import Decimal

import pytest

from coinbase.feeds import DEFAULT_PRODUCTS
from local_exchange.market import ASK, BID, Market

PRODUCTS = ["BTC-USD", "ETH-USD", "XYZ-USD"]


def _apply(book: tuple[dict, dict], changes: list[tuple[str, str, str]]) -> None:
    bids, asks = book
    for side, price, size in changes:
        levels = bids if side == BID else asks
        p, s = Decimal(price), Decimal(size)
        if s == 0:
            levels.pop(p, None)
        else:
            levels[p] = s


def test_same_seed_same_stream_and_different_seed_differs() -> None:
    a = Market(PRODUCTS, depth=200, seed=7)
    b = Market(PRODUCTS, depth=200, seed=7)
    c = Market(PRODUCTS, depth=200, seed=8)
    stream_a = [a.next_batch(p) for _ in range(300) for p in PRODUCTS]
    stream_b = [b.next_batch(p) for _ in range(300) for p in PRODUCTS]
    stream_c = [c.next_batch(p) for _ in range(300) for p in PRODUCTS]
    assert stream_a == stream_b
    assert a.book("BTC-USD") == b.book("BTC-USD")
    assert stream_a != stream_c


def test_products_do_not_disturb_each_other() -> None:
    alone = Market(["ETH-USD"], depth=100, seed=3)
    mixed = Market(["BTC-USD", "ETH-USD"], depth=100, seed=3)
    for _ in range(50):
        mixed.next_batch("BTC-USD")
    assert [alone.next_batch("ETH-USD") for _ in range(100)] == [
        mixed.next_batch("ETH-USD") for _ in range(100)
    ]


def test_changes_rebuild_true_book_and_book_is_never_crossed() -> None:
    market = Market(PRODUCTS, depth=150, changes_per_batch=6, seed=11)
    client = {}
    for pid in PRODUCTS:
        bids, asks = market.snapshot(pid)
        client[pid] = (
            {Decimal(p): Decimal(s) for p, s in bids},
            {Decimal(p): Decimal(s) for p, s in asks},
        )
    for _ in range(3000):
        for pid in PRODUCTS:
            changes = market.next_batch(pid)
            assert len(changes) >= 6
            _apply(client[pid], changes)
            assert not market.is_crossed(pid)
            bid, _, ask, _ = market.top(pid)
            assert bid < ask
    for pid in PRODUCTS:
        assert client[pid] == market.book(pid)
        bids, asks = client[pid]
        assert max(bids) < min(asks)


def test_stream_has_realistic_string_forms() -> None:
    market = Market(["BTC-USD"], depth=300, seed=1)
    changes, distances = [], []
    for _ in range(2000):
        bid, _, ask, _ = market.top("BTC-USD")
        mid = (bid + ask) / 2
        batch = market.next_batch("BTC-USD")
        changes += batch
        distances += [abs(Decimal(p) - mid) / mid for _, p, _ in batch]
    sizes = {s for _, _, s in changes}
    assert {"0", "0.00", "0.00000000"} <= sizes
    prices = [p for _, p, _ in changes]
    assert any(
        len(p.split(".")[1]) == 8 for p in prices if "." in p
    )  # "65083.66000000"
    assert any(len(p.split(".")[1]) == 2 for p in prices if "." in p)  # "65083.66"
    assert {BID, ASK} == {s for s, _, _ in changes}
    # Most activity near the top: the median change is within 0.5% of the mid of the
    # moment (the mid itself wanders further over 2,000 batches).
    distances.sort()
    assert distances[len(distances) // 2] < Decimal("0.005")


def test_mid_price_moves() -> None:
    market = Market(["ETH-USD"], depth=200, seed=5)
    mids = set()
    for _ in range(400):
        market.next_batch("ETH-USD")
        bid, _, ask, _ = market.top("ETH-USD")
        mids.add((bid + ask) / 2)
    assert len(mids) > 20


def test_depth_start_prices_and_overrides() -> None:
    market = Market(
        ["BTC-USD", "ETH-USD", "NEW-USD"],
        depth=500,
        depth_override={"BTC-USD": (1800, 2700)},
        seed=0,
    )
    assert market.level_counts("BTC-USD") == (1800, 2700)
    assert market.level_counts("ETH-USD") == (500, 500)
    btc_bid = market.top("BTC-USD")[0]
    assert Decimal(60000) < btc_bid < Decimal(70000)
    assert btc_bid.as_tuple().exponent == -2  # tick 0.01
    assert Decimal(2500) < market.top("ETH-USD")[0] < Decimal(3500)
    assert Decimal(50) < market.top("NEW-USD")[0] < Decimal(200)
    for _ in range(2000):
        market.next_batch("ETH-USD")
    bids, asks = market.level_counts("ETH-USD")
    assert 350 < bids <= 551 and 350 < asks <= 551


def test_snapshot_is_best_first() -> None:
    market = Market(["BTC-USD"], depth=100, seed=2)
    bids, asks = market.snapshot("BTC-USD")
    bid_prices = [Decimal(p) for p, _ in bids]
    ask_prices = [Decimal(p) for p, _ in asks]
    assert bid_prices == sorted(bid_prices, reverse=True)
    assert ask_prices == sorted(ask_prices)
    assert bid_prices[0] < ask_prices[0]


def test_step_follows_rate_and_carries_fractions() -> None:
    market = Market(["BTC-USD", "ETH-USD"], rate=20.0, depth=50)
    assert len(market.step(1.0)) == 40
    assert market.step(0.03) == []  # 0.6 batch owed
    assert len(market.step(0.03)) == 2  # 1.2 owed -> one round for each product
    with pytest.raises(ValueError, match="dt"):
        market.step(-1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"products": []}, "products"),
        ({"products": ["A-B", "A-B"]}, "products"),
        ({"depth": 0}, "depth"),
        ({"depth": (10, 0)}, "depth"),
        ({"rate": 0}, "rate"),
        ({"changes_per_batch": 0}, "changes_per_batch"),
        ({"depth_override": {"NOPE-USD": 5}}, "depth_override"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, name: str) -> None:
    args = {"products": ["BTC-USD"], **kwargs}
    products = args.pop("products")
    with pytest.raises(ValueError, match=name):
        Market(products, **args)


def test_unknown_product_lookup_is_a_clear_error() -> None:
    market = Market(["BTC-USD"], depth=10)
    with pytest.raises(ValueError, match="unknown product 'ETH-USD'"):
        market.top("ETH-USD")


@pytest.mark.parametrize("seed", [0, 1])
def test_spreads_are_tight_mostly_and_wide_now_and_then_on_every_product(
    seed: int,
) -> None:
    """Thin moments open the spread past the service's default 0.1% filter on every
    default product within seconds, while the book is tight (< 0.01%) most of the time."""
    market = Market(DEFAULT_PRODUCTS, depth=1000, rate=20, seed=seed)
    seconds = 20
    wide_at: dict[str, list[float]] = {p: [] for p in DEFAULT_PRODUCTS}
    tight = dict.fromkeys(DEFAULT_PRODUCTS, 0)
    for batch in range(seconds * 20):
        for pid in DEFAULT_PRODUCTS:
            market.next_batch(pid)
            bid, _, ask, _ = market.top(pid)
            pct = (ask - bid) / ask * 100
            if pct > Decimal("0.1"):
                wide_at[pid].append(batch / 20)
            tight[pid] += pct < Decimal("0.01")
    for pid in DEFAULT_PRODUCTS:
        assert len(wide_at[pid]) >= 3, pid
        assert wide_at[pid][0] < 10, pid
        assert tight[pid] / (seconds * 20) > 0.8, pid
