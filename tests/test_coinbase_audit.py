"""The REST audit's scheduler (coinbase/audit.py): budget, backoff, round-robin (a fake
clock, no sleeps), then the real thing against a loopback HTTP server and a sim feed."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest

from coinbase.audit import (
    WINDOW_MARGIN,
    AuditScheduler,
    AuditTarget,
    RequestBudget,
    RoundRobin,
    classify,
)
from coinbase.pacing import Backoff
from coinbase.runner import LOOP
from coinbase_source import _CoinbasePartition
from events import AuditStarted, BookAudit, BookChanges, BookReset, BookSnapshot
from tests.support.exchange_client import ARRIVAL_JITTER, busiest_window
from tests.support.flow import wait_until
from tests.support.rest_server import RestBookServer, ladder
from tests.support.source_partitions import build, open_partitions

D = Decimal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(budget: RequestBudget, clock: Clock, seconds: float) -> list[float]:
    """Send whenever the budget allows, for ``seconds`` of fake time."""
    sent = []
    end = clock.now + seconds
    while clock.now < end:
        wait = budget.wait()
        if wait > 0:
            clock.now += wait
            continue
        budget.take()
        sent.append(clock.now)
    return sent


# -- the budget ------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [3.0, 1.0, 10.0, 2.5, 0.5])
def test_the_budget_never_exceeds_its_rate_in_any_second(rate):
    clock = Clock()
    budget = RequestBudget(rate, clock=clock)
    sent = drive(budget, clock, 60.0)
    allowed = max(1, int(rate))
    assert busiest_window(sent, 1.0 + WINDOW_MARGIN * 0.99) <= allowed
    # and it uses the budget: within 10% of floor(rate) (or of rate when below 1)
    assert len(sent) >= 60 * min(rate, allowed) * 0.9 / (1 + WINDOW_MARGIN)
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert min(gaps) >= 1 / rate - 1e-9  # evenly spread, never a burst


def test_a_lower_rate_keeps_the_requests_just_sent():
    clock = Clock()
    budget = RequestBudget(10.0, clock=clock)
    sent = drive(budget, clock, 0.95)
    assert len(sent) == 10
    budget.set_rate(2.0)
    clock.now = sent[-1] + 0.5
    # two requests 0.1 s apart are in the last window: the next waits for the window
    assert budget.wait() == pytest.approx(sent[-2] + 1 + WINDOW_MARGIN - clock.now)


def test_a_request_that_left_late_is_counted_from_when_it_left():
    clock = Clock()
    budget = RequestBudget(3.0, clock=clock)
    first = budget.take()
    clock.now += 0.2  # the loop was busy: the request leaves 0.2 s after its turn
    budget.left(first)
    clock.now += 0.3
    budget.left(budget.take())
    clock.now += 0.4
    budget.take()
    # the fourth waits for a window from the first's real departure, not its turn
    assert budget.wait() == pytest.approx(first + 0.2 + 1 + WINDOW_MARGIN - clock.now)
    budget.left(-1.0)  # an unknown turn changes nothing
    assert budget.wait() == pytest.approx(first + 0.2 + 1 + WINDOW_MARGIN - clock.now)


def test_failures_back_off_exponentially_and_a_good_reply_resets():
    clock = Clock()
    budget = RequestBudget(
        3.0, clock=clock, backoff=Backoff(1.0, 60.0, rng=random.Random(7))
    )
    delays = []
    for _ in range(8):
        budget.take()
        delay = budget.failed()
        delays.append(delay)
        assert budget.wait() == pytest.approx(delay)
        clock.now += delay
    ceilings = [min(60.0, 2.0**n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert delays[-1] >= 30.0
    budget.succeeded()
    budget.take()
    assert budget.failed() <= 1.0  # back to the first step


# -- the round-robin ---------------------------------------------------------------------


class FakePart:
    def __init__(self, product_id: str, auditable: bool = True) -> None:
        self.product_id = product_id
        self.auditable = auditable
        self.feed = "sim"
        self.events: list = []

    def put_audit(self, event) -> None:
        self.events.append(event)


TARGET = AuditTarget("http://127.0.0.1:1", "exchange", 50, 60.0)


def audit_in_turn(products: int, seconds: float) -> dict[str, list[float]]:
    """When each of ``products`` is audited in ``seconds`` of fake time, round-robin
    under a budget of 3 requests a second."""
    clock = Clock()
    plan, budget = RoundRobin(), RequestBudget(3.0, clock=clock)
    parts = [FakePart(f"P{i}-USD") for i in range(products)]
    for part in parts:
        plan.add(part, TARGET, clock.now)
    audits: dict[str, list[float]] = {p.product_id: [] for p in parts}
    end = clock.now + seconds
    while clock.now < end:
        wait = budget.wait() or plan.until_due(clock.now)
        if wait > 0:
            clock.now += wait
            continue
        entry = plan.pick(clock.now)
        plan.done(entry)
        budget.take()
        audits[entry.part.product_id].append(clock.now)
    return audits


def test_round_robin_audits_each_product_about_every_interval_when_the_budget_allows():
    audits = audit_in_turn(10, 630)
    for times in audits.values():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(times) == 10 and all(g == pytest.approx(60.0) for g in gaps)


def test_round_robin_shares_a_short_budget_in_turn():
    # 300 products at 3 requests a second: each about every 100 s (the figure;
    # 110 s here: 3 requests per 1 + WINDOW_MARGIN seconds)
    audits = audit_in_turn(300, 1000)
    counts = {len(t) for t in audits.values()}
    assert max(counts) - min(counts) <= 1 and min(counts) >= 8  # in turn, no starving
    gaps = [b - a for t in audits.values() for a, b in zip(t, t[1:], strict=False)]
    assert 100 < min(gaps) and max(gaps) < 115


def test_a_product_without_a_book_is_passed_over_and_keeps_its_place():
    clock = Clock()
    plan = RoundRobin()
    waiting, ready = FakePart("A-USD", auditable=False), FakePart("B-USD")
    plan.add(waiting, TARGET, clock.now)
    clock.now += 1
    plan.add(ready, TARGET, clock.now)
    assert plan.pick(clock.now) is None  # due one interval after they joined
    assert plan.until_due(clock.now) == pytest.approx(59.0)
    clock.now += 60
    entry = plan.pick(clock.now)
    assert entry.part is ready
    assert plan.pick(clock.now) is None  # A is due but has no book; B is not due
    assert plan.until_due(clock.now) == 0
    waiting.auditable = True
    assert plan.pick(clock.now).part is waiting  # its turn, at once
    clock.now += 100
    assert plan.pick(clock.now) is None  # both under audit: one at a time
    assert plan.until_due(clock.now) == float("inf")
    plan.done(entry)
    assert plan.pick(clock.now) is entry
    assert plan.remove(waiting) and not plan.has(waiting) and not plan.remove(waiting)
    plan.done(entry)
    assert plan.until_due(clock.now) == pytest.approx(60.0)


def test_which_statuses_back_off():
    assert classify(200) == (None, False)
    assert classify(429) == ("HTTP 429", True)
    assert classify(500) == ("HTTP 500", True)
    assert classify(503) == ("HTTP 503", True)
    assert classify(404) == ("HTTP 404", False)


# -- against a loopback HTTP server -------------------------------------------------------


def _audits(events: list) -> list:
    return [e for e in events if isinstance(e, (AuditStarted, BookAudit))]


class LoopPart(FakePart):
    """A fake partition whose events are put on the loop thread, as the real one's."""

    def put_audit(self, event) -> None:
        assert threading.current_thread().name == LOOP.name
        super().put_audit(event)


@pytest.mark.slow
def test_audits_stay_under_the_rate_and_arrive_in_order_with_the_parsed_books():
    books = {f"P{i}-USD": ladder(100 + i, 60) for i in range(4)}
    with RestBookServer(books) as server:
        scheduler = AuditScheduler(3.0, settle_seconds=0.2)
        target = AuditTarget(server.url, "exchange", 5, 0.5)
        parts = [LoopPart(p) for p in books]
        parts.append(LoopPart("NOBOOK-USD", auditable=False))
        for part in parts:
            scheduler.register(part, target)
        try:
            wait_until(
                lambda: all(
                    sum(isinstance(e, BookAudit) for e in p.events) >= 2
                    for p in parts[:-1]
                ),
                30,
                "two audits of each product",
            )
        finally:
            last = [scheduler.unregister(p) for p in parts]
        assert last[-1] and not any(last[:-1])
        assert scheduler.finished.wait(5)
    assert server.windows(1.0 - ARRIVAL_JITTER) <= 3, server.requests
    assert parts[-1].events == []  # no book, no audit
    assert all(status == 200 for _, _, status in server.requests)
    for part in parts[:-1]:
        kinds = [type(e) for e in part.events]
        assert kinds[:4] == [AuditStarted, BookAudit, AuditStarted, BookAudit]
        started, audit = part.events[0], part.events[1]
        bids, asks = books[part.product_id]
        assert audit.bids == [(D(p), D(s)) for p, s in bids[:5]]
        assert audit.asks == [(D(p), D(s)) for p, s in asks[:5]]
        assert audit.failure is None and audit.levels == 5
        assert started.received_ns == audit.requested_ns <= audit.replied_ns
        assert audit.received_ns - audit.replied_ns >= 0.2e9
        assert audit.feed == started.feed == "sim"


@pytest.mark.slow
def test_rest_failures_are_counted_backed_off_and_reported_as_audits():
    books = {"BTC-USD": ladder(100, 10)}
    with RestBookServer(books, timeout_seconds=2.0) as server:
        scheduler = AuditScheduler(10.0, settle_seconds=0.0, timeout_seconds=0.5)
        scheduler.budget.backoff = Backoff(0.2, 0.4, rng=random.Random(1))
        part = LoopPart("BTC-USD")
        server.fail_next("429")
        server.fail_next("500")
        server.fail_next("timeout")
        server.fail_next("not_json")
        scheduler.register(part, AuditTarget(server.url, "exchange", 3, 0.05))
        try:
            wait_until(
                lambda: any(
                    isinstance(e, BookAudit) and e.failure is None for e in part.events
                ),
                20,
                "a good audit after the faults",
            )
        finally:
            scheduler.unregister(part)
        assert scheduler.finished.wait(5)
    audits = [e for e in part.events if isinstance(e, BookAudit)]
    failures = [a.failure for a in audits]
    assert failures[:5] == ["HTTP 429", "HTTP 500", "timeout", "not JSON", None]
    assert all(a.bids == [] and a.asks == [] for a in audits[:4])
    assert dict(scheduler.failures) == {
        "HTTP 429": 1,
        "HTTP 500": 1,
        "timeout": 1,
        "not JSON": 1,
    }
    times = [t for t, _, _ in server.requests]
    # each of the first three faults paused the next request by its backoff (>= 0.1 s,
    # the first step's lower half); the product's own interval is 0.05 s
    assert all(b - a >= 0.1 for a, b in zip(times[:3], times[1:4], strict=True))


@pytest.fixture
def partitions() -> Iterator[list[_CoinbasePartition]]:
    yield from open_partitions()


@pytest.mark.slow
def test_a_sim_feed_gets_audit_events_in_its_stream(partitions):
    from local_exchange.server import LocalExchange

    with (
        LocalExchange(["BTC-USD", "ETH-USD"], depth=20, rate=50) as exchange,
        RestBookServer({"BTC-USD": ladder(500, 20)}) as server,
    ):
        scheduler = AuditScheduler(3.0, settle_seconds=0.3)
        parts = [
            build(
                partitions,
                ["BTC-USD", "ETH-USD"],
                exchange.url(),
                product,
                feed="sim",
                audit_interval=0.5,
                audit_levels=4,
                rest_url=server.url,
                audit_scheduler=scheduler,
            )
            for product in ("BTC-USD", "ETH-USD")
        ]
        streams: dict[str, list] = {"BTC-USD": [], "ETH-USD": []}

        def two_audits() -> bool:
            for part in parts:
                streams[part.product_id] += [
                    e for _, events in part.next_batch() for e in events
                ]
            return all(
                sum(isinstance(e, BookAudit) for e in s) >= 2 for s in streams.values()
            )

        wait_until(two_audits, 30, "two audits of each product", poll=0.005)
        btc, eth = streams["BTC-USD"], streams["ETH-USD"]
        # an audit comes after the book's snapshot, each answer after its request
        for stream in (btc, eth):
            first = next(i for i, e in enumerate(stream) if isinstance(e, AuditStarted))
            assert any(isinstance(e, BookSnapshot) for e in stream[:first])
            kinds = [type(e) for e in _audits(stream)]
            assert kinds[:4] == [AuditStarted, BookAudit] * 2
            assert all(
                isinstance(e, (BookReset, BookSnapshot, BookChanges))
                for e in stream
                if e not in _audits(stream)
            )
        audit = next(e for e in btc if isinstance(e, BookAudit))
        assert audit.failure is None and audit.feed == "sim"
        assert audit.bids == [(D(str(500 - i)), D(i) / 10) for i in range(1, 5)]
        eth_audit = next(e for e in eth if isinstance(e, BookAudit))
        assert eth_audit.failure == "HTTP 404"  # the fixture knows BTC-USD only
        assert server.windows(1.0 - ARRIVAL_JITTER) <= 3
        for part in parts:
            part.close()
        assert scheduler.finished.wait(5)


# -- the source's wiring -----------------------------------------------------------------


def test_the_source_audits_only_when_asked_and_knows_where():
    from coinbase_source import CoinbaseSource
    from common.validation import ConfigError

    off = CoinbaseSource(["BTC-USD"], feed="sim", url="ws://127.0.0.1:9/")
    assert off.audits is None and off.audit_target is None
    scheduler = AuditScheduler(3.0)
    sim = CoinbaseSource(
        ["BTC-USD"],
        feed="sim",
        url="ws://127.0.0.1:9/",
        audit_interval=5,
        audit_levels=7,
        audit_scheduler=scheduler,
    )
    assert sim.audits is scheduler
    assert sim.audit_target == AuditTarget("http://127.0.0.1:9", "exchange", 7, 5.0)
    at = CoinbaseSource(
        ["BTC-USD"], feed="advanced-trade", audit_interval=60, audit_scheduler=scheduler
    )
    assert at.audit_target.base_url == "https://api.coinbase.com"
    assert at.audit_target.protocol == "advanced-trade"
    given = CoinbaseSource(
        ["BTC-USD"],
        audit_interval=60,
        rest_url="http://127.0.0.1:5/",
        audit_scheduler=scheduler,
    )
    assert given.audit_target.base_url == "http://127.0.0.1:5/"
    for bad in (
        {"audit_interval": -1},
        {"audit_levels": 0},
        {"audit_rate": 11},
        {"rest_url": "ftp://x"},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CoinbaseSource(["BTC-USD"], **bad)


@pytest.mark.slow
def test_a_sim_run_audits_its_embedded_exchange_by_default():
    from service.inputs import build_source
    from service.settings import Settings

    class Shutdown:
        def failed(self, message: str) -> None:
            raise AssertionError(message)

        def add_closer(self, closer: object) -> None:
            pass

    settings = Settings.from_env({"ORDERBOOK_FEED": "sim"})
    source, _ = build_source(settings, Shutdown())
    ws = source.url.rstrip("/")
    assert ws.startswith("ws://127.0.0.1:")
    from local_exchange import embedded

    assert source.audit_target.base_url == embedded.rest_url() == "http" + ws[2:]
    assert source.audit_target.interval == 60.0 and source.audit_target.levels == 50


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["advanced-trade"])
def test_audits_of_the_local_exchange_read_its_book_under_the_budget(
    partitions, protocol
):
    """Against the local exchange's own REST (its default for sim): a still market, so
    each REST book must be exactly the top of the snapshot the stream delivered. (The
    Exchange protocol's REST book and budget: tests/test_audit_e2e.py's run.)"""
    from local_exchange.server import LocalExchange

    products = ["BTC-USD", "ETH-USD", "BTC-EUR"]
    with LocalExchange(products, depth=30, rate=50) as exchange:
        exchange.pause_market()  # before anyone subscribes: snapshots = REST books
        scheduler = AuditScheduler(3.0, settle_seconds=0.1)
        parts = [
            build(
                partitions,
                products,
                exchange.url(protocol),
                product,
                feed="sim",
                protocol=protocol,
                audit_interval=0.3,
                audit_levels=10,
                audit_scheduler=scheduler,
            )
            for product in products
        ]
        streams: dict[str, list] = {p: [] for p in products}

        def audited(n: int) -> bool:
            for part in parts:
                streams[part.product_id] += [
                    e for _, events in part.next_batch() for e in events
                ]
            return all(
                sum(isinstance(e, BookAudit) for e in s) >= n for s in streams.values()
            )

        wait_until(lambda: audited(2), 30, "two audits of each product", poll=0.005)
        exchange.rest_errors("429")
        before = len(exchange.rest_requests())
        wait_until(lambda: audited(4), 30, "two more audits of each", poll=0.005)
        requests = exchange.rest_requests()
    times = [t for t, _, _ in requests]
    assert busiest_window(times, 1.0 - ARRIVAL_JITTER) <= 3
    assert [s for _, _, s in requests].count(429) == 1
    after_429 = next(i for i, (_, _, s) in enumerate(requests) if s == 429)
    assert after_429 >= before  # and backed off (0.5 s at least; 0.33 s without)
    assert times[after_429 + 1] - times[after_429] >= 0.5 - ARRIVAL_JITTER
    failed = 0
    for product, stream in streams.items():
        snapshot = next(e for e in stream if isinstance(e, BookSnapshot))
        audits = [e for e in stream if isinstance(e, BookAudit)]
        failed += sum(a.failure == "HTTP 429" for a in audits)
        for audit in audits:
            assert audit.product_id == product and audit.levels == 10
            if audit.failure is None:
                assert audit.bids == snapshot.bids[:10]
                assert audit.asks == snapshot.asks[:10]
        kinds = [type(e) for e in _audits(stream)]
        assert kinds == [AuditStarted, BookAudit] * (len(kinds) // 2)
    assert failed == 1 and scheduler.failures == {"HTTP 429": 1}


@pytest.mark.slow
def test_a_replay_served_by_the_local_exchange_is_not_audited(partitions, caplog):
    """The local exchange serving a recording marks its data ``replay`` (see
    coinbase/session.py) and has no REST book (it answers 501): its products are not
    audited, and the process says so once."""
    import coinbase_source
    from tests.support.flow import free_port

    coinbase_source._replay_said = False
    scheduler = AuditScheduler(3.0)
    part = build(
        partitions,
        ["BTC-USD"],
        f"ws://127.0.0.1:{free_port()}/",
        audit_interval=0.1,
        audit_scheduler=scheduler,
    )
    part.session._awaiting_snapshot = False  # as if its snapshot had come
    part._group.running = True
    assert part.auditable
    part.session.local_exchange = "replay"  # what the marker sets
    assert not part.auditable and not part.auditable
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert said == ["replay: no REST books, audits skipped"]
