"""The Coinbase source end to end: against the local exchange, inside Bytewax flows and
processes (Ctrl-C, every product unknown), and its robustness rules on real sockets."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, run_main

from coinbase.auth import Credentials
from coinbase.errors import AuthError, UnknownProduct
from coinbase.feeds import subscribe_messages
from coinbase_source import CoinbaseSource, _CoinbasePartition
from events import BookChanges, BookReset
from local_exchange.server import LocalExchange
from resync import ResyncRequests
from tests.support.scripted_server import ScriptedConnection, ScriptedServer
from tests.support.source_partitions import (
    CREDS,
    FAST,
    SECRET,
    Book,
    Items,
    assert_books_match,
    build,
    collect,
    count,
    feed_books,
    fresh_snapshots,
    kinds,
    open_partitions,
    polled,
    settled,
    snapshot_frame,
    update_frame,
    wait_until,
)

pytestmark = pytest.mark.slow  # every test here opens sockets, threads or processes


@pytest.fixture
def partitions() -> Iterator[list[_CoinbasePartition]]:
    """Partitions registered here are closed after the test, pass or fail."""
    yield from open_partitions()


# -- end to end against the local exchange -----------------------------------------------


@pytest.mark.parametrize(
    ("feed", "protocol"),
    [("exchange", "exchange"), ("advanced-trade", "advanced-trade")],
)
def test_local_exchange_faults_end_with_the_true_book(
    partitions: list, feed: str, protocol: str
) -> None:
    products = ["BTC-USD", "ETH-USD"]
    with LocalExchange(
        products, depth=40, rate=50, seed=3, heartbeat_interval=0.1
    ) as exchange:
        source = CoinbaseSource(
            products, feed="sim", protocol=protocol, url=exchange.url(protocol), **FAST
        )
        parts = {p: source.build_part("input", p, None) for p in products}
        partitions.extend(parts.values())
        books = {p: Book() for p in products}
        feed_books(parts, books, fresh_snapshots(parts))
        healthy = fresh_snapshots(parts)
        exchange.drop_connections()
        feed_books(parts, books, healthy)
        malformed = {p: part.stats.malformed_frames for p, part in parts.items()}
        feed_books(parts, books, settled(parts))
        exchange.send_malformed(1)
        feed_books(
            parts,
            books,
            lambda: all(
                part.stats.malformed_frames > malformed[p] for p, part in parts.items()
            ),
        )
        feed_books(parts, books, settled(parts))
        if feed == "advanced-trade":
            exchange.skip_sequence()
        healthy = fresh_snapshots(parts)
        reconnects = {p: part.stats.reconnects for p, part in parts.items()}
        exchange.go_silent(30)  # at most: ended once every watchdog saw the silence
        feed_books(
            parts,
            books,
            lambda: all(
                part.stats.reconnects > reconnects[p]
                and (part.stats.last_disconnect or "").startswith("watchdog")
                for p, part in parts.items()
            ),
        )
        exchange.end_silence()
        feed_books(parts, books, healthy)
        # changes on the rebuilt books, not their snapshots alone, are checked below
        live = {p: part.stats.events for p, part in parts.items()}
        feed_books(
            parts,
            books,
            lambda: all(part.stats.events >= live[p] + 5 for p, part in parts.items()),
        )
        assert_books_match(exchange, parts, books)
    for part in parts.values():
        stats = part.stats.as_dict()
        assert stats["reconnects"] >= 2, stats  # the drop and the silence at least
        assert stats["malformed_frames"] >= 1, stats
        assert stats["snapshots"] >= 3, stats
        assert stats["events"] > stats["snapshots"] + stats["resets"], stats
        if feed == "advanced-trade":
            assert stats["sequence_gaps"] + stats["resyncs"] >= 1, stats


def test_local_exchange_signed_level2(partitions: list) -> None:
    with LocalExchange(
        ["BTC-USD"],
        depth=20,
        rate=40,
        api_key="test-key",
        api_secret=SECRET,
        passphrase="test-passphrase",
        heartbeat_interval=0.1,
    ) as exchange:
        good = build(
            partitions,
            ["BTC-USD"],
            exchange.url("exchange"),
            feed="exchange-auth",
            credentials=CREDS,
        )
        wrong = Credentials("test-key", SECRET, "not-the-passphrase")
        bad = build(
            partitions,
            ["BTC-USD"],
            exchange.url("exchange"),
            feed="exchange-auth",
            credentials=wrong,
        )
        unsigned = build(
            partitions, ["BTC-USD"], exchange.url("exchange"), feed="exchange"
        )
        collect(good, count("changes", 3))
        collect(unsigned, count("changes", 3))
        collect(bad, lambda _: bad.stats.state == "failed")
    assert isinstance(bad.error, AuthError)
    assert bad.error.credential == "COINBASE_API_PASSPHRASE"
    assert "not-the-passphrase" not in bad.stats.last_error


def test_local_exchange_unknown_product(partitions: list) -> None:
    with LocalExchange(
        ["BTC-USD"], depth=20, rate=40, heartbeat_interval=0.1
    ) as exchange:
        for protocol in ("exchange", "advanced-trade"):
            part = build(partitions, ["SOL-USD"], exchange.url(protocol), feed=protocol)
            collect(part, lambda _, p=part: p.stats.state == "failed")
            assert isinstance(part.error, UnknownProduct)
            assert "SOL-USD" in part.stats.last_error


# -- inside Bytewax ----------------------------------------------------------------------


class _StopAfter(StatefulSourcePartition):
    """Ends the input once the wrapped partition has delivered ``changes`` updates."""

    def __init__(self, inner: _CoinbasePartition, changes: int) -> None:
        self.inner = inner
        self.remaining = changes

    def next_batch(self) -> list:
        if self.remaining <= 0:
            raise StopIteration
        batch = self.inner.next_batch()
        self.remaining -= sum(
            isinstance(event, BookChanges) for _, events in batch for event in events
        )
        return batch

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> str:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class _StopAfterSource(FixedPartitionedSource):
    def __init__(self, inner: CoinbaseSource, changes: int) -> None:
        self.inner = inner
        self.changes = changes

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> _StopAfter:
        return _StopAfter(
            self.inner.build_part(step_id, for_part, resume_state), self.changes
        )


def test_runs_in_a_bytewax_flow() -> None:
    products = ["BTC-USD", "ETH-USD"]
    with LocalExchange(products, depth=20, rate=50, heartbeat_interval=0.1) as exchange:
        source = CoinbaseSource(
            products, url=exchange.url("exchange"), feed="sim", **FAST
        )
        flow = Dataflow("coinbase_source_test")
        stream = op.input("in", flow, _StopAfterSource(source, changes=5))
        out: list = []
        op.output("out", stream, TestingSink(out))
        run_main(flow)
    for product in products:  # one (product, [events]) item per product per poll
        events = [event for key, events in out if key == product for event in events]
        assert all(
            event.product_id == product and event.feed == "sim" for event in events
        )
        assert kinds([(product, event) for event in events])[:2] == [
            "reset",
            "snapshot",
        ]
        assert sum(isinstance(event, BookChanges) for event in events) >= 5


SIGINT_SCRIPT = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks, if stuck
sys.path.insert(0, {root!r})
from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from local_exchange.server import LocalExchange
from coinbase_source import CoinbaseSource
exchange = LocalExchange(["BTC-USD", "ETH-USD"], depth=10, rate=20).start()
flow = Dataflow("sigint")
stream = op.input("in", flow, CoinbaseSource(["BTC-USD", "ETH-USD"], url=exchange.url()))
op.output("out", op.flat_map("names", stream, lambda item: [type(e).__name__ for e in item[1]]), StdOutSink())
run_main(flow)
"""


def test_ctrl_c_ends_a_running_flow_promptly(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(SIGINT_SCRIPT.format(root=str(pathlib.Path(__file__).parents[1])))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 20
        while "BookChanges" not in lines and time.monotonic() < deadline:
            lines.append(proc.stdout.readline().strip())
        assert "BookChanges" in lines, lines[-5:]
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # say where it is stuck (once in a full run)
            proc.send_signal(signal.SIGUSR1)
            try:
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            pytest.fail(f"still running 5 s after SIGINT; its threads:\n{out[-6000:]}")
    finally:
        proc.kill()
        proc.wait()
    names = [
        line for line in lines if line in ("BookReset", "BookSnapshot", "BookChanges")
    ]
    assert names[0] == "BookReset"


def test_a_backlog_the_dataflow_cannot_drain_is_dropped_and_resynced(
    partitions: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coinbase_source

    monkeypatch.setattr(coinbase_source, "MAX_BACKLOG", 30)
    with LocalExchange(["BTC-USD"], depth=50, rate=200, seed=4) as exchange:
        part = build(partitions, ["BTC-USD"], exchange.url())
        deadline = time.monotonic() + 10
        while part.stats.backlog_drops == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # nobody drains: the backlog grows past the bound
        assert part.stats.backlog_drops >= 1
        items = collect(part, count("snapshot", 1))
        assert len(items) <= 40 + 30  # the backlog was dropped, not delivered
        assert "reset" in kinds(items)
        # resynced alone: unsubscribed and subscribed again, on the same connection
        assert part.stats.resyncs >= 1 and part.stats.reconnects == 0
        assert exchange.stats["unsubscribes"] >= 1


def test_subscribe_messages_stay_under_eight_a_second_per_process(
    partitions: list,
) -> None:
    """Advanced Trade allows 8 unauthenticated messages/s per IP; each product sends 2."""
    arrivals: list[float] = []

    async def script(conn: ScriptedConnection) -> None:
        for _ in range(2):
            await conn.recv_json()
            arrivals.append(time.monotonic())
        await conn.hold()

    products = ["BTC-USD", "ETH-USD", "SOL-USD", "LTC-USD", "BTC-EUR", "ETH-EUR"]
    with ScriptedServer(script) as server:
        for product in products:
            build(partitions, products, server.url, product, feed="advanced-trade")
        deadline = time.monotonic() + 10
        while len(arrivals) < 2 * len(products) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(arrivals) == 2 * len(products)
    arrivals.sort()
    for i in range(len(arrivals) - 8):
        assert arrivals[i + 8] - arrivals[i] >= 1.0 - 0.05  # never 9 in one second


# -- robustness: end of a served replay, every partition failed ---------------------------


def test_the_end_of_a_served_replay_ends_the_partition(partitions: list) -> None:
    marker = {
        "type": "subscriptions",
        "channels": [{"name": "level2_batch", "product_ids": ["BTC-USD"]}],
        "local_exchange": "replay",
    }

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(marker)
        await conn.send(snapshot_frame())
        await conn.send(update_frame())
        # returning closes the connection with code 1000: the replay is over

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, feed="exchange")
        items: Items = []
        deadline = time.monotonic() + 8
        with pytest.raises(StopIteration):
            while time.monotonic() < deadline:
                items += polled(part)
                time.sleep(0.002)
        wait_until(lambda: not part.running)
        assert server.connections == 1  # no reconnect after the end of the data
    assert kinds(items) == ["reset", "snapshot", "changes", "reset"]
    assert {event.feed for _, event in items[1:]} == {"replay"}
    assert part.stats.state == "finished"


def test_the_source_says_when_every_partition_failed(partitions: list) -> None:
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        calls: list[str] = []
        source = CoinbaseSource(
            ["BTC-USD", "SOL-USD"], url=exchange.url(), on_all_failed=calls.append
        )
        good = source.build_part("in", "BTC-USD", None)
        bad = source.build_part("in", "SOL-USD", None)
        partitions += [good, bad]
        collect(good, count("snapshot", 1))
        wait_until(lambda: bad.stats.state == "failed")
        assert calls == []  # one product still works: keep running
        source = CoinbaseSource(
            ["SOL-USD", "XRP-USD"], url=exchange.url(), on_all_failed=calls.append
        )
        partitions += [source.build_part("in", p, None) for p in source.products]
        wait_until(lambda: bool(calls))
    [message] = calls
    assert "every Coinbase product of this process failed permanently" in message
    assert "SOL-USD" in message and "XRP-USD" in message


ALL_FAILED_SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from coinbase_source import CoinbaseSource
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
flow = Dataflow("all_failed")
stream = op.input("in", flow, CoinbaseSource(["SOL-USD", "XRP-USD"], url={url!r}))
op.output("out", op.flat_map("names", stream, lambda item: [type(e).__name__ for e in item[1]]), StdOutSink())
run_main(flow)
"""


def test_a_run_whose_every_product_is_unknown_exits_with_one_line(
    tmp_path: pathlib.Path,
) -> None:
    script = tmp_path / "flow.py"
    root = str(pathlib.Path(__file__).parents[1])
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        script.write_text(ALL_FAILED_SCRIPT.format(root=root, url=exchange.url()))
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [
        line
        for line in proc.stderr.splitlines()
        if "every Coinbase product of this process failed permanently" in line
    ]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("CRITICAL") and "SOL-USD" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_resync_request_from_the_book_step_gets_a_fresh_snapshot(
    partitions: list,
) -> None:
    requests = ResyncRequests()  # the flow's channel, given to the source
    with LocalExchange(["BTC-USD"], depth=20, rate=40, heartbeat_interval=0.1) as ex:
        part = build(partitions, ["BTC-USD"], ex.url(), resync_requests=requests)
        collect(part, count("snapshot", 1))
        requests.request("BTC-USD", "crossed for 3.0 s of feed time")
        items = collect(part, count("snapshot", 1))
    resets = [event for _, event in items if isinstance(event, BookReset)]
    assert resets and "requested: crossed for 3.0 s" in resets[0].reason
    assert part.stats.resyncs == 1


def _marks_itself(exchange: LocalExchange) -> bool:
    """Whether this local exchange puts "local_exchange" in its subscriptions reply."""

    async def probe() -> bool:
        import websockets

        async with websockets.connect(exchange.url()) as ws:
            await ws.send(json.dumps(subscribe_messages("exchange", "BTC-USD")[0]))
            for _ in range(20):
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if frame.get("type") == "subscriptions":
                    return "local_exchange" in frame
        return False

    return asyncio.run(probe())


def test_data_from_the_local_exchange_is_labelled_by_its_marker(
    partitions: list,
) -> None:
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        if not _marks_itself(exchange):
            pytest.skip("this local exchange does not mark its subscriptions reply yet")
        part = build(partitions, ["BTC-USD"], exchange.url(), feed="exchange")
        items = collect(part, count("changes", 2))
    assert part.session.local_exchange == "sim"
    assert {event.feed for _, event in items[1:]} == {"sim"}


def test_a_partition_that_falls_behind_says_so(
    partitions: list, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import coinbase_source

    monkeypatch.setattr(coinbase_source, "BEHIND_SECONDS", 0.3)
    caplog.set_level("WARNING", logger="coinbase_source")
    with LocalExchange(["BTC-USD"], depth=20, rate=100, heartbeat_interval=0.1) as ex:
        part = build(partitions, ["BTC-USD"], ex.url())
        wait_until(lambda: "behind this feed" in caplog.text)  # nobody drains
        assert part.stats.backlog_drops == 0  # said out loud long before any drop
    [line] = [r.getMessage() for r in caplog.records if "behind" in r.getMessage()]
    assert line.startswith("BTC-USD: the dataflow is behind this feed:")
    assert "events queued, the oldest" in line and " s old" in line
