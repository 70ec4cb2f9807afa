"""A run killed and resumed from Bytewax recovery serves no stale book.

What could go wrong, and what catches it:

* the saved state holds the book (stale on resume, and O(book) per epoch): the recovery
  store must hold a state for every product's book step and no ``OrderBook`` in it;
* the resume reset is lost: every product's book step must log the ``resume`` reset,
  and every source partition that it resumed;
* a summary from before the restart, or from a book not rebuilt from a fresh snapshot:
  the resumed run's first summary of each product must be newer than the restart, the
  exchange must have sent a fresh snapshot per product after the restart, and the last
  summaries must equal the exchange's true top once the market pauses.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from local_exchange.server import LocalExchange
from service.recovery_store import check_recovery_store, recovery_directory
from service.settings import ConfigError
from tests.support.flow import (
    REPO,
    FlowProcess,
    await_true_tops,
    flow_env,
    last_by_product,
    read_jsonl,
    wait_until,
)
from tests.support.recovery import saved_book_states, state_product

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
        # State to resume from: a committed snapshot of every product's book.
        first.wait_for(
            lambda: {state_product(k) for k in saved_book_states(db)} == set(PRODUCTS),
            30,
            "a committed recovery snapshot of every book",
        )
        first.stop(signal.SIGKILL)
        for key, classes in saved_book_states(db).items():
            assert "orderbook.OrderBook" not in classes, (key, classes)
            assert "book_step.BookState" in classes, (key, classes)
        stale = last_by_product(read_jsonl(first_out))

        # The market moves on while the flow is down: every true top leaves the last
        # one served, so a stale book would show.
        moved: set[str] = set()

        def market_moved() -> bool:
            for product in PRODUCTS:
                bid, _, ask, _ = exchange.true_top(product)
                last = stale[product]
                if (bid, ask) != (
                    Decimal(last["bid_price"]),
                    Decimal(last["ask_price"]),
                ):
                    moved.add(product)
            return moved == set(PRODUCTS)

        wait_until(market_moved, 30, "the market to move while the flow is down")

        restarted = datetime.now(UTC)
        snapshots_before = exchange.stats["frames_sent"].get("snapshot", 0)
        second_out = tmp_path / "second.jsonl"
        second = run(second_out)
        second.wait_for(
            lambda: set(last_by_product(read_jsonl(second_out))) == set(PRODUCTS),
            30,
            "resumed summaries",
        )
        snapshots_after = exchange.stats["frames_sent"].get("snapshot", 0)
        exchange.pause_market()
        records = await_true_tops(
            exchange, lambda: read_jsonl(second_out), PRODUCTS, sizes=False
        )
        assert second.stop() == 0

    assert snapshots_after - snapshots_before >= len(PRODUCTS)
    first_seen: dict[str, dict] = {}
    for record in records:
        first_seen.setdefault(record["product_id"], record)
    for product, record in first_seen.items():
        served_at = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        assert served_at > restarted, (product, record, restarted)
    assert "Traceback" not in second.stderr, second.stderr[-2000:]
    for product in PRODUCTS:
        assert f"{product}: resuming from recovery state" in second.stderr
        assert f"{product}: book reset (resume)" in second.stderr
        assert f"{product}: resuming" not in first.stderr
    for product, got in last_by_product(records).items():
        assert (Decimal(got["bid_price"]), Decimal(got["ask_price"])) == (
            exchange.true_top(product)[0],
            exchange.true_top(product)[2],
        )
    for r in records:
        assert Decimal(r["bid_price"]) < Decimal(r["ask_price"])


# -- a damaged recovery store is refused in one line (issue 17, finding 25) ----------------


def _damage(db: Path, kind: str) -> Path:
    """A store from ``python -m bytewax.recovery DB 2``, then damaged; the file to name."""
    db.mkdir()
    init_db_dir(db, 2)
    part = db / "part-1.sqlite3"
    if kind == "truncated":
        part.write_bytes(part.read_bytes()[:1000])
    elif kind == "overwritten":
        part.write_bytes(b"\x00garbage" * 4096)
    elif kind == "not bytewax's":
        part.unlink()
        with sqlite3.connect(part) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
        conn.close()
    elif kind == "no partition row":
        with sqlite3.connect(part) as conn:
            conn.execute("DELETE FROM parts")
        conn.close()
    elif kind == "empty directory":
        for file in db.iterdir():
            file.unlink()
        return db
    elif kind == "missing directory":
        for file in db.iterdir():
            file.unlink()
        db.rmdir()
        return db
    return part


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "overwritten",
        "not bytewax's",
        "no partition row",
        "empty directory",
        "missing directory",
    ],
)
def test_a_damaged_recovery_store_is_refused_in_one_line(tmp_path, kind):
    """Before, Bytewax unwrapped the SQLite error in Rust: a 66- to 75-line panic."""
    db = tmp_path / "recovery"
    named = _damage(db, kind)
    env = flow_env(
        ORDERBOOK_REPLAY=str(REPO / "samples" / "sample.jsonl.gz"),
        ORDERBOOK_OUTPUT=f"jsonl:{tmp_path / 'out.jsonl'}",
    )
    args = ["bytewax.run", "dataflow:flow", "-r", str(db), "-s", "1", "-b", "0"]
    flow = FlowProcess(args, env)
    assert flow.finish(timeout=60) != 0
    lines = flow.stderr.strip().splitlines()
    assert len(lines) == 1, flow.stderr[-3000:]
    assert lines[0].startswith("orderbook: recovery store") and str(named) in lines[0]
    assert "python -m bytewax.recovery" in lines[0]
    assert "panicked" not in flow.stderr and "Traceback" not in flow.stderr


# -- the recovery store, checked before Bytewax opens it (issue 17, finding 25) -----------


@pytest.mark.parametrize(
    "argv, env",
    [
        (["dataflow:flow", "-r", "DB", "-s", "1"], {}),
        (["dataflow:flow", "-rDB"], {}),
        (["dataflow:flow", "--recovery-directory=DB", "-w", "2"], {}),
        (["dataflow:flow"], {"BYTEWAX_RECOVERY_DIRECTORY": "DB"}),
    ],
)
def test_the_recovery_directory_is_read_as_bytewax_run_reads_it(argv, env):
    assert recovery_directory(argv, env) == Path("DB")
    assert recovery_directory(["dataflow:flow", "-s", "1"], {}) is None


def test_an_intact_recovery_store_passes_the_check(tmp_path):
    init_db_dir(tmp_path, 2)
    argv = ["dataflow:flow", "-r", str(tmp_path)]
    assert check_recovery_store(argv, {}) == tmp_path
    assert check_recovery_store(["dataflow:flow"], {}) is None
    # Under -i/-a a process may hold none of the partitions: an empty store is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    cluster = ["dataflow:flow", "-r", str(empty), "-i", "1", "-a", "h:1;h:2"]
    assert check_recovery_store(cluster, {}) == empty
    with pytest.raises(ConfigError, match="no partition files"):
        check_recovery_store(["dataflow:flow", "-r", str(empty)], {})
