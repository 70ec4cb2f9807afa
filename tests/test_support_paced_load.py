"""The live benches' lag figures (tests/support/paced_load.py), on made-up arrivals whose
lags are known: the verdicts of bench_peer and bench_live_scale rest on them."""

from __future__ import annotations

import pytest

from tests.support.paced_load import (
    RECORDED_RATE,
    T0_NS,
    LagStats,
    lag_stats,
    product_lags,
    update_ns,
)


def _seen(product: str, lags: list[float], speed: float, start: float = 100.0):
    """A line per event second ``t``, seen at ``start + t / speed + lags[t]``."""
    return [(start + t / speed + lag, product, float(t)) for t, lag in enumerate(lags)]


def _figures(stats: LagStats) -> tuple[float, ...]:
    return (stats.p50, stats.p99, stats.first_third_p50, stats.last_third_p50)


ZERO = pytest.approx((0.0, 0.0, 0.0, 0.0), abs=1e-9)


def test_each_product_is_timed_from_its_least_delay_not_its_first_line():
    # BTC's first line is 0.5 s late (a slow snapshot), the rest 10 ms apart in delay;
    # ETH's clock starts elsewhere: its lags must not depend on BTC's
    btc = _seen("BTC-USD", [0.5, 0.0, 0.01, 0.02], speed=2.0)
    eth = _seen("ETH-USD", [0.3, 0.3, 0.3], speed=2.0, start=500.0)
    lags = product_lags(btc + eth, speed=2.0)
    assert list(lags) == ["BTC-USD", "ETH-USD"]
    assert [d for d, _ in lags["BTC-USD"]] == [0.0, 0.5, 1.0, 1.5]  # t / speed
    assert [lag for _, lag in lags["BTC-USD"]] == pytest.approx([0.5, 0, 0.01, 0.02])
    assert [lag for _, lag in lags["ETH-USD"]] == pytest.approx([0, 0, 0])


def test_a_flat_lag_shows_no_growth_and_a_growing_one_does():
    flat = lag_stats(product_lags(_seen("BTC-USD", [0.002] * 300, 4.0), 4.0))
    assert _figures(flat) == ZERO
    # falling behind by 1 ms a line: the last third's median is 200 ms above the first
    growing = [k * 0.001 for k in range(301)]
    stats = lag_stats(product_lags(_seen("BTC-USD", growing, 4.0), 4.0))
    assert stats.p50 == pytest.approx(0.150)
    assert stats.p99 == pytest.approx(0.297, abs=0.001)
    assert stats.first_third_p50 == pytest.approx(0.050)
    assert stats.last_third_p50 == pytest.approx(0.250)
    assert stats.growth == pytest.approx(0.200)


def test_settle_leaves_the_start_up_transient_out_of_the_figures_only():
    # the first second (4 lines at speed 4) 300 ms late; then steady
    lags = [0.3] * 4 + [0.0] * 96
    by_product = product_lags(_seen("BTC-USD", lags, 4.0), 4.0)
    assert lag_stats(by_product).p99 == pytest.approx(0.3)
    settled = lag_stats(by_product, settle=1.0)
    assert _figures(settled) == ZERO
    # a settle longer than the load leaves every line in rather than none
    assert lag_stats(by_product, settle=1e6) == lag_stats(by_product)


def test_no_line_or_one_line_gives_zero_lag():
    assert lag_stats(product_lags([], 1.0)) == LagStats(0.0, 0.0, 0.0, 0.0)
    one = lag_stats(product_lags([(5.0, "BTC-USD", 3.0)], 1.0))
    assert _figures(one) == ZERO


def test_the_load_schedule_is_even_at_the_recorded_rate():
    assert update_ns(0) == T0_NS + 1_000_000_000 // RECORDED_RATE
    assert update_ns(RECORDED_RATE - 1) == T0_NS + 1_000_000_000
