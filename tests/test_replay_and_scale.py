"""Record then replay; the same summaries on one worker, several workers and processes.

A recording of the local exchange's feed is replayed (1) as a file source under
``run_main``, ``cluster_main`` with one and with two workers, (2) by
``python -m bytewax.testing dataflow:flow -p 2 -w 2``, and (3) served back over WebSocket
by the local exchange to the live command: every run must give each product exactly the
same sequence of summaries.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from decimal import Decimal

import orjson
import pytest
from bytewax.testing import TestingSink, cluster_main, run_main

from dataflow import get_flow
from local_exchange.server import LocalExchange
from recording.reader import Recording
from recording.recorder import record
from recording.replay import ReplaySource
from service.settings import Settings
from tests.support.flow import FlowProcess, by_product, flow_env, read_jsonl

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "session.jsonl.gz"
    # 100 update batches a second per product for 1 s: the frames 40 a second gave in
    # the 2.5 s this fixture used to wait; heartbeats 5 a second, so that every kind of
    # frame is in the second (the default is one a second)
    with LocalExchange(
        PRODUCTS, depth=150, rate=100, seed=11, heartbeat_interval=0.2
    ) as exchange:
        totals = asyncio.run(
            record(path, PRODUCTS, "exchange", exchange.url(), duration=1.0)
        )
    assert totals["frames"] > 100
    return path


def _summaries_in_process(path, runner) -> dict[str, list[dict]]:
    out: list = []
    flow = get_flow(
        Settings(spread_threshold_pct=0),
        source=ReplaySource(path),
        products=PRODUCTS,
        sink=TestingSink(out),
    )
    runner(flow)
    return by_product([s.to_dict() for _, s in out])


@pytest.mark.slow
def test_recording_format(recording):
    with gzip.open(recording, "rt") as f:
        header = json.loads(f.readline())
        first = json.loads(f.readline())
    assert header["format"] == "coinbase-l2-recording" and header["version"] == 2
    assert header["protocol"] == "exchange" and header["products"] == PRODUCTS
    assert set(first) >= {"t_ns", "product_id"}
    # blocks of one product each: a reader of one product passes the others unread
    everything = [r for _, r in Recording.open(recording).records()]
    for product in PRODUCTS:
        reader = Recording.open(recording).of_products({product: 0})
        mine = [orjson.loads(x) for _, _, items in reader for x in items]
        assert mine == [r for r in everything if r["product_id"] == product]
        assert reader.blocks_read and reader.blocks_skipped, product
    kinds = {
        json.loads(r["frame"])["type"]
        for _, r in Recording.open(recording).records()
        if "frame" in r
    }
    assert {"subscriptions", "snapshot", "l2update", "heartbeat"} <= kinds


@pytest.mark.slow
def test_same_summaries_on_one_and_many_workers(recording):
    single = _summaries_in_process(recording, run_main)
    assert set(single) == set(PRODUCTS)
    assert all(len(v) > 10 for v in single.values())
    assert {s["feed"] for v in single.values() for s in v} == {"replay"}
    one = _summaries_in_process(
        recording, lambda f: cluster_main(f, [], 0, worker_count_per_proc=1)
    )
    two = _summaries_in_process(
        recording, lambda f: cluster_main(f, [], 0, worker_count_per_proc=2)
    )
    assert one == single
    assert two == single


@pytest.mark.slow
def test_same_summaries_on_two_processes(recording, tmp_path):
    single = _summaries_in_process(recording, run_main)
    out = tmp_path / "p2.jsonl"
    env = flow_env(
        ORDERBOOK_REPLAY=str(recording),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_OUTPUT=f"jsonl:{out}",
    )
    flow = FlowProcess(["bytewax.testing", "dataflow:flow", "-p", "2", "-w", "2"], env)
    assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
    assert by_product(read_jsonl(out)) == single


@pytest.mark.slow
def test_replay_served_over_websocket_matches_file_replay(recording, tmp_path):
    single = _summaries_in_process(recording, run_main)
    out = tmp_path / "served.jsonl"
    with LocalExchange(recording=recording, replay_speed=None) as exchange:
        env = flow_env(
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
            ORDERBOOK_WATCHDOG_SECONDS="60",
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        # The end of the served replay ends the flow (its partitions finish): then
        # every summary is written, exactly, with no quiet window to wait out.
        assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
    served = by_product(read_jsonl(out))

    # Exchange snapshots carry no time, so a summary made from one is stamped with its
    # receive time, which differs between the two runs; every other field must agree.
    def comparable(summaries):
        return [
            {k: v for k, v in s.items() if k not in ("feed", "time")} for s in summaries
        ]

    for product in PRODUCTS:
        assert comparable(served[product]) == comparable(single[product]), product
        assert {s["feed"] for s in served[product]} == {"replay"}


@pytest.mark.slow
def test_recorder_command_writes_a_replayable_recording(tmp_path):
    path = tmp_path / "cli.jsonl.gz"
    with LocalExchange(["BTC-USD"], depth=50, rate=40, seed=1) as exchange:
        cmd = FlowProcess(
            [
                "recording",
                str(path),
                "--products",
                "BTC-USD",
                "--url",
                exchange.url(),
                "--duration",
                "1.5",
            ],
            flow_env(),
        )
        assert cmd.finish(timeout=30) == 0, cmd.stderr
    assert "recording 1 products:" in cmd.stderr and "frames" in cmd.stderr
    assert "wrote" in cmd.stdout
    out: list = []
    run_main(
        get_flow(
            Settings(spread_threshold_pct=0),
            source=ReplaySource(path),
            products=["BTC-USD"],
            sink=TestingSink(out),
        )
    )
    assert len(out) > 5 and {s.product_id for _, s in out} == {"BTC-USD"}


@pytest.mark.slow
def test_recorder_refuses_a_bad_option():
    cmd = FlowProcess(["recording", "x.jsonl.gz", "--products", "BTCUSD"], flow_env())
    assert cmd.finish(timeout=30) == 2
    assert "--products='BTCUSD' is not allowed" in cmd.stderr


TOP_FIELDS = ("bid_price", "bid_size", "ask_price", "ask_size")


@pytest.mark.slow
def test_a_recording_replays_to_the_summaries_of_the_live_run(tmp_path):
    """The live command and the recorder watch the same market at the same time; once
    both have their snapshots, the replay must reproduce the live run summary for summary."""
    live_out = tmp_path / "live.jsonl"
    path = tmp_path / "same-market.jsonl.gz"
    # 100 update batches a second per product: the 80 summaries come in under a
    # second (2 s at 40 a second)
    with LocalExchange(PRODUCTS, depth=150, rate=100, seed=13) as exchange:
        env = flow_env(
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{live_out}",
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        stop = threading.Event()

        async def record_until_stopped():
            done = asyncio.Event()
            recorder = asyncio.create_task(
                record(path, PRODUCTS, "exchange", exchange.url(), stop=done)
            )
            while not stop.is_set():
                await asyncio.sleep(0.05)
            done.set()
            await recorder

        recorder = threading.Thread(target=asyncio.run, args=(record_until_stopped(),))
        recorder.start()

        def enough_live_summaries() -> bool:
            got = by_product(read_jsonl(live_out))
            return set(got) == set(PRODUCTS) and all(len(v) >= 80 for v in got.values())

        flow.wait_for(enough_live_summaries, 120, "80 live summaries per product")
        exchange.pause_market()

        def live_at_the_true_top() -> bool:
            """The live run has applied everything sent before the pause (a quiet spell
            alone proves nothing on a loaded machine)."""
            last = {s["product_id"]: s for s in read_jsonl(live_out)}
            return all(
                tuple(Decimal(last[p][k]) for k in TOP_FIELDS) == exchange.true_top(p)
                for p in PRODUCTS
            )

        flow.wait_for(live_at_the_true_top, 120, "the live run at the true top")
        live = read_jsonl(live_out)
        stop.set()
        recorder.join(timeout=30)
        assert flow.stop() == 0
    replayed = _summaries_in_process(path, run_main)
    live_by_product = by_product(live)
    for product in PRODUCTS:
        ours, theirs = live_by_product[product], replayed[product]
        # from a moment when both books were built from their own snapshots
        cutoff = max(ours[0]["time"], theirs[0]["time"])
        # until the recorder stopped (it may stop a frame or so before the pause)
        end = min(ours[-1]["time"], theirs[-1]["time"])
        tail = [
            {k: v for k, v in s.items() if k != "feed"}
            for s in ours
            if cutoff < s["time"] <= end
        ]
        tail_replayed = [
            {k: v for k, v in s.items() if k != "feed"}
            for s in theirs
            if cutoff < s["time"] <= end
        ]
        assert len(tail) > 20, product
        assert tail_replayed == tail, product
