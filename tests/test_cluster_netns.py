"""A Bytewax cluster across hosts: three members in network namespaces of their own,
the local exchange on a fourth address (the test process, on the namespaces' bridge).

On 127.0.0.1 a dead peer resets the connection at once; across hosts a partition
resets nothing. Each test starts its members with ``tests/support/netns.py``, which
removes the namespaces, the bridge and every process even when the test fails. One
cluster is shared by the assertions of a test (start-up is most of the time): books
equal the exchange's truth; ``kill -9`` of one member ends the others; a restart of all
of them gives true books again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from local_exchange.server import LocalExchange
from tests.support import netns
from tests.support.flow import flow_env, last_by_product, read_jsonl, settle, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(netns.unavailable()), reason=str(netns.unavailable())),
]

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR", "SOL-USD", "SOL-EUR"]
EXIT_BOUND = 5.0
"""Members left must exit this soon after a peer is killed (measured: 0.02 s)."""
RESTART_BOUND = 30.0
"""After a restart of all members every book is true again within this (measured: ...)."""


@pytest.fixture
def lab() -> Iterator[netns.NetLab]:
    with netns.NetLab(3) as made:
        yield made


@pytest.fixture
def exchange(lab) -> Iterator[LocalExchange]:
    with LocalExchange(
        PRODUCTS, depth=100, rate=20, seed=11, host=lab.host_address
    ) as made:
        yield made


def _env(exchange: LocalExchange, **extra: str) -> dict[str, str]:
    return flow_env(
        ORDERBOOK_FEED="exchange",
        ORDERBOOK_WS_URL=exchange.url(),
        ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        **extra,
    )


def _records(members: list[netns.Member]) -> list[dict]:
    return [r for m in members for r in read_jsonl(m.out)]


def _running(members: list[netns.Member]) -> None:
    for m in members:
        assert m.proc.poll() is None, f"member {m.i} exited:\n{m.stderr[-3000:]}"


def _books_become_true(exchange: LocalExchange, members, timeout: float) -> float:
    """Wait for a summary of every product beyond what the outputs hold now, pause the
    market, and check that the last summary of every product (whichever member owns
    it) is the exchange's true top of book. Returns the seconds the books took."""
    started = time.monotonic()
    before = {p: len(rs) for p, rs in _by_product(_records(members)).items()}

    def every_product_grew() -> bool:
        _running(members)
        now = _by_product(_records(members))
        return all(len(now.get(p, [])) > before.get(p, 0) for p in PRODUCTS)

    wait_until(every_product_grew, timeout, "a new summary of every product")
    took = time.monotonic() - started
    exchange.pause_market()
    try:
        last = last_by_product(settle(lambda: _records(members), quiet_seconds=1.0))
        for product in PRODUCTS:
            got = last[product]
            assert (
                Decimal(got["bid_price"]),
                Decimal(got["bid_size"]),
                Decimal(got["ask_price"]),
                Decimal(got["ask_size"]),
            ) == exchange.true_top(product), product
        owners = {
            p for m in members for p in {r["product_id"] for r in read_jsonl(m.out)}
        }
        assert owners == set(PRODUCTS)
    finally:
        exchange.resume_market()
    return took


def _by_product(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["product_id"], []).append(record)
    return out


def test_three_hosts_true_books_member_loss_and_restart(lab, exchange, tmp_path):
    members = netns.start_cluster(lab, _env(exchange), tmp_path / "first")
    _books_become_true(exchange, members, timeout=60)
    # every member owns some products: the cluster really spreads across hosts
    assert all(read_jsonl(m.out) for m in members)

    # kill -9 of one member: the others exit soon, one line naming it, status non-zero
    lost = members[1]
    killed_at = time.monotonic()
    lost.kill()
    for m in (members[0], members[2]):
        status = m.proc.wait(timeout=EXIT_BOUND + 10)
        took = time.monotonic() - killed_at
        assert status != 0
        assert took < EXIT_BOUND, f"member {m.i} took {took:.1f} s"
        said = [line for line in m.stderr.splitlines() if line.startswith("orderbook:")]
        assert said == [
            f"orderbook: lost cluster peer process 1 ({lab.address(1)}:2101): its "
            "connection closed; this member stops too (status 1); restart the whole "
            "cluster (Bytewax clusters fail and recover as a whole)"
        ], m.stderr[-3000:]
        assert "Traceback" not in m.stderr and "PanicException" not in m.stderr

    # the whole cluster restarts: every book is rebuilt from a fresh snapshot, true
    restarted = netns.start_cluster(lab, _env(exchange), tmp_path / "second")
    took = _books_become_true(exchange, restarted, timeout=RESTART_BOUND)
    print(f"books true {took:.1f} s after the restart of all members")
