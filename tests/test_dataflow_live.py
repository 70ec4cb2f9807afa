"""The real command (`python -m bytewax.run dataflow:flow`) against the local exchange.

Each test starts a LocalExchange on 127.0.0.1, points the flow at it with
ORDERBOOK_WS_URL, lets it run, pauses the market, and checks that the last summary of every
product equals the exchange's true top of book: the books are exact, and they recover from
every injected fault.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import urllib.request
from decimal import Decimal

import pytest

from local_exchange.server import LocalExchange
from tests.support.flow import (
    REPO,
    FlowProcess,
    await_true_tops,
    by_product,
    flow_env,
    free_port,
    last_by_product,
    read_jsonl,
    wait_until,
)
from tests.support.frames import write_exchange_recording

pytestmark = pytest.mark.slow  # processes, sockets and threads

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]


def _never_crossed(records: list[dict]) -> None:
    for r in records:
        assert Decimal(r["bid_price"]) < Decimal(r["ask_price"]), r
        assert Decimal(r["bid_size"]) > 0 and Decimal(r["ask_size"]) > 0, r


def _start_flow(
    tmp_path, url: str, feed: str = "exchange", **extra: str
) -> tuple[FlowProcess, object]:
    out = tmp_path / "summaries.jsonl"
    env = flow_env(
        ORDERBOOK_FEED=feed,
        ORDERBOOK_WS_URL=url,
        ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
        **extra,
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    return flow, out


def _all_products_seen(out):
    return lambda: set(last_by_product(read_jsonl(out))) >= set(PRODUCTS)


def _counts(out) -> dict[str, int]:
    return {p: len(rs) for p, rs in by_product(read_jsonl(out)).items()}


def _more_summaries(out, products=PRODUCTS, more: int = 5):
    """A condition: every product has ``more`` summaries beyond what it has now."""
    before = _counts(out)

    def grown() -> bool:
        now = _counts(out)
        return all(now.get(p, 0) >= before.get(p, 0) + more for p in products)

    return grown


def _malformed_all_sent(exchange: LocalExchange) -> bool:
    stats = exchange.stats
    queued = sum(n for k, n in stats["faults"].items() if k.startswith("malformed:"))
    return stats["frames_sent"].get("malformed", 0) >= queued


@pytest.mark.parametrize("protocol", ["exchange", "advanced-trade"])
def test_last_summary_equals_true_top_and_sigterm_exits_cleanly(tmp_path, protocol):
    feed = "exchange" if protocol == "exchange" else "advanced-trade"
    with LocalExchange(PRODUCTS, depth=300, rate=40, seed=7) as exchange:
        flow, out = _start_flow(tmp_path, exchange.url(protocol), feed)
        flow.wait_for(_all_products_seen(out), 30, "a summary of every product")
        flow.wait_for(_more_summaries(out), 30, "updates on every book")
        exchange.pause_market()
        records = await_true_tops(exchange, lambda: read_jsonl(out), PRODUCTS)
        _never_crossed(records)
        # The local exchange says who it is: its data is labelled sim whatever URL and
        # feed led there, never mistaken for market data.
        assert {r["feed"] for r in records} == {"sim"}
        assert flow.stop(signal.SIGTERM) == 0
    assert "Traceback" not in flow.stderr


def test_books_recover_from_every_fault(tmp_path):
    with LocalExchange(
        PRODUCTS, depth=200, rate=40, seed=3, heartbeat_interval=0.2
    ) as exchange:
        flow, out = _start_flow(
            tmp_path, exchange.url(), ORDERBOOK_WATCHDOG_SECONDS="1"
        )
        flow.wait_for(_all_products_seen(out), 30, "a summary of every product")
        accepted = exchange.stats["connections_accepted"]
        opened = exchange.stats["connections_open"]  # products share connections

        exchange.drop_connections()
        flow.wait_for(
            lambda: exchange.stats["connections_accepted"] >= accepted + opened,
            20,
            "reconnection after a drop",
        )
        exchange.send_malformed(count=3)
        wait_until(lambda: _malformed_all_sent(exchange), 20, "the malformed frames")
        accepted = exchange.stats["connections_accepted"]
        opened = exchange.stats["connections_open"]
        exchange.go_silent(30)  # at most: ended once the watchdog reconnected
        flow.wait_for(
            lambda: exchange.stats["connections_accepted"] >= accepted + opened,
            20,
            "reconnection after the watchdog saw silence",
        )
        exchange.end_silence()
        flow.wait_for(_more_summaries(out), 30, "updates on every rebuilt book")
        exchange.pause_market()
        records = await_true_tops(exchange, lambda: read_jsonl(out), PRODUCTS)
        _never_crossed(records)
        assert flow.stop(signal.SIGINT) == 0
    assert "Traceback" not in flow.stderr


def test_sequence_gap_on_advanced_trade_rebuilds_the_book(tmp_path):
    with LocalExchange(PRODUCTS, depth=200, rate=40, seed=5) as exchange:
        flow, out = _start_flow(
            tmp_path, exchange.url("advanced-trade"), "advanced-trade"
        )
        flow.wait_for(_all_products_seen(out), 30, "a summary of every product")
        subscribes = exchange.stats["subscribes"]
        exchange.skip_sequence()
        flow.wait_for(
            lambda: exchange.stats["subscribes"] > subscribes,
            20,
            "a resubscribe after the gap",
        )
        flow.wait_for(_more_summaries(out), 30, "updates on every rebuilt book")
        exchange.pause_market()
        records = await_true_tops(exchange, lambda: read_jsonl(out), PRODUCTS)
        _never_crossed(records)
        assert flow.stop() == 0


def test_bad_setting_is_refused_at_start_with_its_name():
    flow = FlowProcess(
        ["bytewax.run", "dataflow:flow"], flow_env(ORDERBOOK_SPREAD_THRESHOLD="0,1")
    )
    assert flow.finish(timeout=60) != 0
    assert "ORDERBOOK_SPREAD_THRESHOLD" in flow.stderr
    assert "Traceback" not in flow.stderr


def test_an_unknown_product_is_named_and_the_others_keep_running(tmp_path):
    served = ["BTC-USD", "ETH-USD"]
    with LocalExchange(served, depth=100, rate=40, seed=9) as exchange:
        out = tmp_path / "summaries.jsonl"
        env = flow_env(
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_PRODUCTS="BTC-USD,NOPE-USD,ETH-USD",
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        flow.wait_for(
            lambda: set(last_by_product(read_jsonl(out))) >= set(served),
            30,
            "summaries of the served products",
        )
        # An error reply for a live product: that partition backs off and resubscribes.
        accepted = exchange.stats["connections_accepted"]
        opened = exchange.stats["connections_open"]  # products share connections
        exchange.fail_next_subscribe("temporary trouble")
        exchange.drop_connections()
        flow.wait_for(
            lambda: (
                exchange.stats["faults"].get("fail_next_subscribe", 0) == 1
                and exchange.stats["connections_accepted"] >= accepted + opened + 1
            ),
            30,
            "the refused subscribe and a reconnection of every served product",
        )
        flow.wait_for(_more_summaries(out, served), 30, "updates on the rebuilt books")
        exchange.pause_market()
        records = await_true_tops(
            exchange, lambda: read_jsonl(out), served, sizes=False
        )
        assert flow.stop() == 0
    assert "NOPE-USD" in flow.stderr
    assert "temporary trouble" in flow.stderr
    assert "NOPE-USD" not in {r["product_id"] for r in records}
    assert "Traceback" not in flow.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_offline_demo_on_two_workers_stops_cleanly(tmp_path, sig):
    out = tmp_path / "summaries.jsonl"
    env = flow_env(
        ORDERBOOK_FEED="sim",
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
        ORDERBOOK_SIM_DEPTH="200",
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow", "-w", "2"], env)
    flow.wait_for(_all_products_seen(out), 30, "a summary of every product")
    assert flow.stop(sig) == 0
    assert "Traceback" not in flow.stderr
    records = read_jsonl(out)
    assert {r["feed"] for r in records} == {"sim"}
    _never_crossed(records)


def test_signed_level2_feed_end_to_end_never_shows_the_secrets(tmp_path):
    secret = base64.b64encode(b"a very secret key of the test").decode()
    passphrase = "pass-phrase-of-the-test"
    products = ["BTC-USD", "ETH-USD"]
    with LocalExchange(
        products,
        depth=100,
        rate=40,
        seed=2,
        api_key="k1",
        api_secret=secret,
        passphrase=passphrase,
    ) as exchange:
        out = tmp_path / "summaries.jsonl"
        env = flow_env(
            ORDERBOOK_FEED="exchange-auth",
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_PRODUCTS=",".join(products),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
            COINBASE_API_KEY="k1",
            COINBASE_API_SECRET=secret,
            COINBASE_API_PASSPHRASE=passphrase,
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        flow.wait_for(
            lambda: set(last_by_product(read_jsonl(out))) == set(products),
            30,
            "summaries",
        )
        assert exchange.stats["auth_failures"] == 0
        assert flow.stop() == 0
    text = flow.stdout + flow.stderr + out.read_text()
    assert secret not in text and passphrase not in text


def test_signed_level2_feed_names_a_missing_credential():
    env = flow_env(ORDERBOOK_FEED="exchange-auth", COINBASE_API_KEY="k1")
    env.pop("COINBASE_API_SECRET", None)
    env.pop("COINBASE_API_PASSPHRASE", None)
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    assert flow.finish(timeout=60) != 0
    assert "COINBASE_API_SECRET" in flow.stderr and "Traceback" not in flow.stderr


def test_prometheus_metrics_are_served_when_enabled(tmp_path):
    out = tmp_path / "summaries.jsonl"
    port = free_port()
    env = flow_env(
        ORDERBOOK_FEED="sim",
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
        BYTEWAX_DATAFLOW_API_ENABLED="true",
        BYTEWAX_DATAFLOW_API_PORT=str(port),
        ORDERBOOK_METRICS_ADDRESS="0.0.0.0",
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    try:
        flow.wait_for(_all_products_seen(out), 30, "a summary of every product")
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'step_id="orderbook.order_book' in metrics
    finally:
        assert flow.stop() == 0


def test_a_reader_that_closes_stdout_ends_the_run_quietly():
    env = flow_env(ORDERBOOK_FEED="sim", ORDERBOOK_SPREAD_THRESHOLD="0")
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    first = [flow.proc.stdout.readline() for _ in range(2)]  # like `| head -2`
    assert all("[sim]" in line for line in first)
    flow.proc.stdout.close()
    assert flow.proc.wait(timeout=30) == 0
    stderr = flow.proc.stderr.read()
    assert "Traceback" not in stderr and "output closed by its reader" in stderr


def test_stdout_carries_only_records_when_a_peer_process_starts_late(tmp_path):
    """Two processes, as ``python -m bytewax.testing dataflow:flow -p 2`` runs them
    (``bytewax.run -i N -a ...``), on free ports, process 1 started first so that Bytewax
    prints its ``error connecting to worker 0`` lines: stdout must hold records only."""
    recording = write_exchange_recording(tmp_path / "session.jsonl.gz", updates=200)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    env = flow_env(
        ORDERBOOK_REPLAY=str(recording),
        ORDERBOOK_OUTPUT="jsonl",
        ORDERBOOK_SPREAD_THRESHOLD="0",
    )
    procs, outs, errs = {}, {}, {}
    try:
        for index in (1, 0):
            outs[index] = tmp_path / f"stdout-{index}.txt"
            errs[index] = tmp_path / f"stderr-{index}.txt"
            with open(outs[index], "wb") as out, open(errs[index], "wb") as err:
                procs[index] = subprocess.Popen(
                    [sys.executable, "-m", "bytewax.run", "dataflow:flow"]
                    + ["-i", str(index), "-a", addresses],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=err,
                )
            if index == 1:  # the peer is late: process 1 complains, on some stream
                wait_until(
                    lambda: (
                        b"error connecting"
                        in outs[1].read_bytes() + errs[1].read_bytes()
                    ),
                    30,
                    "process 1 to report that worker 0 is not there yet",
                )
        for index, proc in procs.items():
            assert proc.wait(timeout=60) == 0, errs[index].read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    records = []
    for index in (0, 1):
        for line in outs[index].read_text().splitlines():
            records.append(json.loads(line))  # every line on stdout is a record
    assert b"error connecting" in errs[1].read_bytes()
    assert {r["product_id"] for r in records} == {"BTC-USD", "ETH-USD"}
    assert {r["feed"] for r in records} == {"replay"}
