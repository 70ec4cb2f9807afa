"""Feed-health metrics on Bytewax's /metrics, counted from a real run with faults."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from local_exchange.server import LocalExchange
from service import metrics
from tests.support.flow import FlowProcess, flow_env, last_by_product, read_jsonl

PRODUCTS = ["BTC-USD", "ETH-USD"]
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    samples = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def total(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse(r.read().decode())


def test_partition_stats_add_only_their_increase():
    labels = ("TEST-USD", "unit")
    metrics.observe_partition_stats(*labels, {"reconnects": 2, "malformed_frames": 1})
    metrics.observe_partition_stats(*labels, {"reconnects": 2, "malformed_frames": 4})

    class Typed:
        reconnects = 3
        sequence_gaps = 1
        backlog_drops = 0

    metrics.observe_partition_stats(*labels, Typed())
    value = metrics.RECONNECTS.labels(*labels)._value.get()
    assert value == 3
    assert metrics.MALFORMED_FRAMES.labels(*labels)._value.get() == 4
    assert metrics.SEQUENCE_GAPS.labels(*labels)._value.get() == 1


def test_reset_reasons_become_few_label_values():
    assert metrics._reason("connection closed: code 1006 (abnormal)") == (
        "connection_closed"
    )
    assert metrics._reason("sequence gap: expected 12 got 14") == "sequence_gap"
    assert metrics._reason("") == "unknown"


def test_sink_observer_counts_summaries_and_latency():
    from orderbook import OrderBook

    book = OrderBook("OBS-USD")
    book.apply_snapshot([(D(100), D(1))], [(D(101), D(1))])
    summary = book.summary(time=datetime.now(UTC), feed="unit")
    metrics.sink_observer()([(1, summary), (0, summary)])
    assert metrics.SUMMARIES.labels("OBS-USD", "unit")._value.get() == 2
    assert metrics.SPREAD_BPS.labels("OBS-USD", "unit")._value.get() == pytest.approx(
        1 / 100.5 * 10_000
    )


@pytest.mark.slow
def test_metrics_count_what_happened_on_the_feed(tmp_path):
    port = free_port()
    out = tmp_path / "a.jsonl"
    with LocalExchange(PRODUCTS, depth=100, rate=40, seed=4) as exchange:
        env = flow_env(
            ORDERBOOK_FEED="advanced-trade",
            ORDERBOOK_WS_URL=exchange.url("advanced-trade"),
            ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
            BYTEWAX_DATAFLOW_API_ENABLED="true",
            BYTEWAX_DATAFLOW_API_PORT=str(port),
            ORDERBOOK_METRICS_ADDRESS="0.0.0.0",
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        try:
            flow.wait_for(
                lambda: set(last_by_product(read_jsonl(out))) == set(PRODUCTS),
                60,
                "summaries of every product",
            )
            # the label the records carry (the local exchange announces itself: "sim")
            feed = {"feed": read_jsonl(out)[0]["feed"]}
            flow.wait_for(
                lambda: total(scrape(port), "orderbook_snapshots_total", **feed) >= 2,
                30,
                "a snapshot of each product counted",
            )
            accepted = exchange.stats["connections_accepted"]
            exchange.drop_connections()  # a reconnect: a reset and a new snapshot each
            flow.wait_for(  # both products share one connection
                lambda: exchange.stats["connections_accepted"] >= accepted + 1,
                30,
                "reconnects",
            )
            flow.wait_for(  # the new connection settled: its snapshots are counted,
                # so the gap below lands after them (not on them, which made it 4 or 5)
                lambda: total(scrape(port), "orderbook_snapshots_total", **feed) >= 4,
                30,
                "the snapshots after the drop",
            )
            subscribes = exchange.stats["subscribes"]
            exchange.skip_sequence()  # a gap: a reset and a resubscribe
            flow.wait_for(
                lambda: exchange.stats["subscribes"] > subscribes, 30, "a resubscribe"
            )
            flow.wait_for(
                lambda: total(scrape(port), "orderbook_snapshots_total", **feed) >= 5,
                30,
                "the snapshots after the gap",
            )
            exchange.send_malformed(
                kinds=["non_numeric_size"]
            )  # garbage, per connection
            flow.wait_for(
                lambda: exchange.stats["frames_sent"].get("malformed", 0) >= 1,
                30,
                "the garbage sent",
            )
            flow.wait_for(
                lambda: (
                    total(scrape(port), "orderbook_malformed_frames_total", **feed)
                    >= exchange.stats["frames_sent"]["malformed"]
                ),
                30,
                "the garbage counted",
            )
            flow.wait_for(  # the product the garbage hit is resynced
                lambda: all(
                    total(
                        scrape(port),
                        "orderbook_book_levels",
                        side="bid",
                        **feed,
                        product_id=p,
                    )
                    > 0
                    for p in PRODUCTS
                ),
                30,
                "every book rebuilt",
            )
            samples = scrape(port)
            sent = exchange.stats
        finally:
            assert flow.stop(signal.SIGTERM) == 0
    for product in PRODUCTS:
        mine = {"product_id": product, **feed}
        assert total(samples, "orderbook_messages_total", **mine) > 0
        assert total(samples, "orderbook_changes_total", **mine) > 0
        assert total(samples, "orderbook_snapshots_total", **mine) >= 2
        assert total(samples, "orderbook_summaries_total", **mine) > 0
        assert total(samples, "orderbook_book_levels", side="bid", **mine) > 0
        assert total(samples, "orderbook_latency_seconds_count", **mine) > 0
        assert 0 <= total(samples, "orderbook_last_update_age_seconds", **mine) < 30
    resets: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == "orderbook_resets_total":
            reason = dict(labels)["reason"]
            resets[reason] = resets.get(reason, 0) + value
    # start, the dropped connections and the gap, each under its own reason
    assert sum(resets.values()) >= 2 * len(PRODUCTS) + 1, resets
    assert resets["start"] == len(PRODUCTS) and resets["sequence_gap"] >= 1, resets
    # the connection counters, from the source partitions: exactly what the exchange
    # did. Both products share one connection, so each lived through every reconnect
    # (the drop, and the gap's resync) and the gap; the garbage went to one of them.
    reconnects = sent["connections_accepted"] - 1
    for product in PRODUCTS:
        mine = {"product_id": product, **feed}
        assert total(samples, "orderbook_reconnects_total", **mine) == reconnects
        assert total(samples, "orderbook_sequence_gaps_total", **mine) == 1
    assert (
        total(samples, "orderbook_malformed_frames_total", **feed)
        == (sent["frames_sent"]["malformed"])
    )
    # the summaries written are the records of the output
    assert total(samples, "orderbook_summaries_total", **feed) <= len(read_jsonl(out))


def test_the_dashboard_plots_only_metrics_that_exist():
    import json
    from pathlib import Path

    from prometheus_client import REGISTRY

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    text = (deploy / "grafana-dashboard.json").read_text()
    json.loads(text)
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    known = {m.name + s for m in REGISTRY.collect() for s in suffixes}
    used = set(re.findall(r"orderbook_\w+", text))
    assert len(used) >= 12 and used <= known, used - known
    assert "orderbook:3030" in (deploy / "prometheus.yml").read_text()
