"""A run killed and resumed from Bytewax recovery serves no stale book."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from local_exchange.server import LocalExchange
from tests.flow_runner import (
    REPO,
    FlowProcess,
    flow_env,
    last_by_product,
    read_jsonl,
    settle,
)

pytestmark = pytest.mark.slow  # processes, sockets and threads

PRODUCTS = ["BTC-USD", "ETH-USD"]


def test_killed_and_resumed_run_rebuilds_books_from_fresh_snapshots(tmp_path):
    db = tmp_path / "recovery"
    db.mkdir()
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(db), "1"], check=True, cwd=REPO
    )
    with LocalExchange(PRODUCTS, depth=200, rate=50, seed=21) as exchange:

        def run(out):
            env = flow_env(
                ORDERBOOK_WS_URL=exchange.url(),
                ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
                ORDERBOOK_SPREAD_THRESHOLD="0",
                ORDERBOOK_OUTPUT=f"jsonl:{out}",
            )
            args = ["bytewax.run", "dataflow:flow", "-r", str(db), "-s", "1", "-b", "0"]
            return FlowProcess(args, env)

        first_out = tmp_path / "first.jsonl"
        first = run(first_out)
        first.wait_for(
            lambda: set(last_by_product(read_jsonl(first_out))) == set(PRODUCTS),
            30,
            "summaries",
        )
        time.sleep(2.5)  # let a few snapshot intervals pass so there is state to resume
        first.stop(signal.SIGKILL)
        assert any(db.iterdir())

        time.sleep(2.0)  # the market moves on while the flow is down
        second_out = tmp_path / "second.jsonl"
        second = run(second_out)
        second.wait_for(
            lambda: set(last_by_product(read_jsonl(second_out))) == set(PRODUCTS),
            30,
            "resumed summaries",
        )
        time.sleep(1.0)
        exchange.pause_market()
        records = settle(lambda: read_jsonl(second_out))
        assert second.stop() == 0
    assert "Traceback" not in second.stderr, second.stderr[-2000:]
    for product, got in last_by_product(records).items():
        assert (Decimal(got["bid_price"]), Decimal(got["ask_price"])) == (
            exchange.true_top(product)[0],
            exchange.true_top(product)[2],
        )
    for r in records:
        assert Decimal(r["bid_price"]) < Decimal(r["ask_price"])
