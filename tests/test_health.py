"""The stall watchdog (``ORDERBOOK_STALL_SECONDS``) and the health endpoint
(``ORDERBOOK_HEALTH``): the rule on hand-made counters, then real members (a dataflow
whose output pipe nobody reads; a feed that holds a product's snapshot back)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from coinbase_source import PartitionProgress
from service.health import FlowHealth, StallWatch, serve_health
from service.settings import ConfigError, Settings
from tests.support import frames
from tests.support.flow import FlowProcess, flow_env, free_port, wait_until
from tests.support.scripted_server import ScriptedConnection, ScriptedServer
from tests.support.source_partitions import (
    build,
    collect,
    count,
    kinds,
    open_partitions,
    snapshot_frame,
    update_frame,
)
from tests.support.source_partitions import (
    wait_until as wait_for_partition,
)


def _part(
    product: str = "BTC-USD",
    delivered: int = 0,
    drained: int = 0,
    pending: int = 0,
    waiting_since_ns: int = 0,
    ready: bool = False,
    state: str = "connected",
    closed: bool = False,
) -> PartitionProgress:
    return PartitionProgress(
        product, delivered, drained, pending, waiting_since_ns, ready, state, closed
    )


# -- the rule -------------------------------------------------------------------------------


def test_a_quiet_feed_is_not_a_stall_however_long():
    watch = StallWatch(stall_seconds=2)
    for second in range(100):
        verdict = watch.observe([_part(delivered=5, drained=5)], float(second))
        assert verdict.state == "quiet"


def test_events_waiting_with_none_taken_stall_after_the_window():
    watch = StallWatch(stall_seconds=2)
    assert watch.observe([_part(delivered=10, drained=10)], 0.0).state == "quiet"
    verdicts = [
        watch.observe([_part(delivered=10 + 5 * t, drained=10, pending=5 * t)], t / 2)
        for t in range(1, 6)
    ]
    assert [v.state for v in verdicts] == [
        "behind",
        "behind",
        "behind",
        "stalled",
        "stalled",
    ]
    stalled = verdicts[3]
    assert stalled.behind_seconds == 2.0 and stalled.products == ("BTC-USD",)
    assert stalled.delivered == 20 and stalled.pending == 20
    assert stalled.line() == (
        "the dataflow made no progress for 2.0 s while BTC-USD delivered 20 events, "
        "20 waiting"
    )


def test_the_window_runs_from_when_the_oldest_waiting_event_arrived():
    """A tick sees the queue empty; events arrive 0.9 s later and are never taken:
    behind since they arrived, capped by the ticks (a clock set forward)."""
    watch = StallWatch(stall_seconds=2, tick=1.0)
    second = 1_000_000_000
    assert watch.observe([_part(delivered=1, drained=1)], 10.0, 100 * second).state
    waiting = 100 * second + 9 * second // 10
    for now, state, behind in ((11.0, "behind", 0.1), (12.0, "behind", 1.1)):
        verdict = watch.observe(
            [_part(delivered=5, drained=1, pending=4, waiting_since_ns=waiting)],
            now,
            int((now + 90) * second),
        )
        assert (verdict.state, round(verdict.behind_seconds, 6)) == (state, behind)
    verdict = watch.observe(
        [_part(delivered=5, drained=1, pending=4, waiting_since_ns=waiting)],
        13.0,
        waiting + 2 * second,
    )
    assert verdict.state == "stalled" and verdict.behind_seconds == 2.0
    jumped = watch.observe(
        [_part(delivered=5, drained=1, pending=4, waiting_since_ns=waiting)],
        13.5,
        waiting + 3600 * second,  # the wall clock jumped an hour
    )
    assert jumped.behind_seconds == 4.5  # 3.5 s since the last progress + a tick


def test_any_event_taken_restarts_the_window_and_a_stall_names_only_the_stuck():
    watch = StallWatch(stall_seconds=2)
    watch.observe([_part("A-USD", 1, 1), _part("B-USD", 1, 1)], 0.0)
    for t in range(1, 10):  # A keeps draining, B's queue fills and is never taken
        verdict = watch.observe(
            [_part("A-USD", 1 + t, 1 + t), _part("B-USD", 1 + t, 1, pending=t)],
            float(t),
        )
    assert verdict.state == "stalled" and verdict.products == ("B-USD",)
    # B drains once: its window starts again
    after = watch.observe([_part("A-USD", 11, 11), _part("B-USD", 11, 5, 6)], 10.0)
    assert after.state == "flowing"


def test_closed_partitions_are_not_watched():
    watch = StallWatch(stall_seconds=1)
    assert watch.observe([], 0.0).state == "starting"
    parts = [_part(delivered=9, drained=1, pending=8, closed=True)]
    assert watch.observe(parts, 0.0).state == "closed"
    assert watch.observe(parts, 50.0).state == "closed"


class _Source:
    def __init__(self) -> None:
        self.parts: list[PartitionProgress] = []

    def progress(self) -> list[PartitionProgress]:
        return list(self.parts)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_warns_at_half_the_window_and_ends_once_at_the_whole(caplog):
    source, clock, lines = _Source(), _Clock(), []
    health = FlowHealth(source, 4, lines.append, clock, wall_clock=lambda: 0)
    assert health.tick == 1.0
    source.parts = [_part("BTC-USD", 3, 3, ready=True), _part("ETH-USD", 3, 3)]
    health.check()
    assert health.liveness() == (True, {"dataflow": "quiet", "for_seconds": 0.0})
    for t in range(1, 7):
        clock.now = float(t)
        source.parts = [
            _part("BTC-USD", 3 + 100 * t, 3, 100 * t, ready=True),
            _part("ETH-USD", 3 + 10 * t, 3, 10 * t),
        ]
        health.check()
        alive, body = health.liveness()
        assert alive is (t < 2), (t, body)
        ready, why = health.readiness()  # ETH-USD has no book; then stale books
        assert not ready and why["reason"] == (
            "awaiting a snapshot: ETH-USD" if t < 2 else body["reason"]
        )
    assert lines == [
        "the dataflow made no progress for 4.0 s while BTC-USD, ETH-USD delivered 440 "
        "events, 440 waiting (an output blocked, or a cluster peer unreachable?), "
        "exiting"
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "the dataflow made no progress for 2.0 s while BTC-USD, ETH-USD delivered 220 "
        "events, 220 waiting; exiting at 4 s unless it recovers"
    ]
    assert body["dataflow"] == "stalled" and "no progress for 6.0 s" in body["reason"]


def test_readiness_names_the_books_that_are_not_live():
    source = _Source()
    health = FlowHealth(source, 30, print)
    ready, body = health.readiness()
    assert not ready and "no partition" in body["reason"]
    source.parts = [
        _part("BTC-USD", ready=True),
        _part("ETH-USD"),
        _part("NOPE-USD", state="failed"),
    ]
    ready, body = health.readiness()
    assert not ready
    assert body == {
        "books": 1,
        "of": 3,
        "reason": "awaiting a snapshot: ETH-USD; failed for good: NOPE-USD",
    }
    source.parts = [_part("BTC-USD", ready=True), _part("ETH-USD", ready=True)]
    assert health.readiness() == (True, {"books": 2})


def test_an_input_without_counters_is_not_watched():
    health = FlowHealth(object(), 30, print)
    health.start()  # nothing to start
    assert health.liveness() == (True, {"dataflow": "not watched", "for_seconds": 0.0})
    assert health.readiness()[0] is True
    assert not FlowHealth(_Source(), 0, print).watched  # 0: off


# -- settings ---------------------------------------------------------------------------


def test_stall_seconds_setting():
    assert Settings.from_env({}).stall_seconds == 30.0
    assert Settings.from_env({"ORDERBOOK_STALL_SECONDS": "0"}).stall_seconds == 0.0
    assert Settings.from_env({"ORDERBOOK_STALL_SECONDS": " 2.5 "}).stall_seconds == 2.5
    for bad, why in (
        ("abc", "not a number"),
        ("-1", "[0, 3600]"),
        ("0.5", "under 1 s"),
        ("inf", "[0, 3600]"),
        ("nan", "[0, 3600]"),
        ("3601", "[0, 3600]"),
    ):
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"ORDERBOOK_STALL_SECONDS": bad})
        message = str(exc.value)
        assert message.startswith(f"ORDERBOOK_STALL_SECONDS={bad!r} is not allowed")
        assert why in message and "\n" not in message


def test_health_setting():
    assert Settings.from_env({}).health is None
    assert Settings.from_env({"ORDERBOOK_HEALTH": "8081"}).health == ("127.0.0.1", 8081)
    assert Settings.from_env({"ORDERBOOK_HEALTH": "0.0.0.0:8081"}).health == (
        "0.0.0.0",
        8081,
    )
    for bad in ("x:y", "70000", "a b:80"):
        with pytest.raises(ConfigError) as exc:
            Settings.from_env({"ORDERBOOK_HEALTH": bad})
        assert str(exc.value).startswith("ORDERBOOK_HEALTH=")
        assert "\n" not in str(exc.value)


# -- the endpoint ---------------------------------------------------------------------------


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict | None]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    return status, json.loads(data) if data else None


@pytest.mark.slow
def test_the_endpoint_answers_and_never_echoes_the_request():
    source = _Source()
    server = serve_health(("127.0.0.1", 0), FlowHealth(source, 30, print))
    try:
        port = server.port
        assert _get(port, "/livez") == (
            200,
            {"status": "ok", "dataflow": "starting", "for_seconds": 0.0},
        )
        assert _get(port, "/readyz")[0] == 503
        source.parts = [_part(ready=True)]
        assert _get(port, "/readyz") == (200, {"status": "ok", "books": 1})
        assert _get(port, "/readyz", "HEAD") == (200, None)
        hostile = "/\x1b[31m<script>secret"
        status, body = _get(port, urllib.request.quote(hostile))
        assert (status, body) == (404, {"status": "not found"})
        status, body = _get(port, "/livez", "DELETE")
        assert status == 501 and body == {"status": "Not Implemented"}
    finally:
        server.close()


@pytest.mark.slow
def test_a_port_in_use_is_one_line_at_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        member = FlowProcess(
            ["bytewax.run", "dataflow:flow"],
            flow_env(
                ORDERBOOK_FEED="sim",
                ORDERBOOK_PRODUCTS="BTC-USD",
                ORDERBOOK_HEALTH=f"127.0.0.1:{port}",
            ),
        )
        assert member.finish(timeout=60) == 1
    lines = member.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"orderbook: ORDERBOOK_HEALTH='127.0.0.1:{port}' is not allowed (cannot listen"
    )
    assert "Traceback" not in member.stderr


# -- real members -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_member_whose_dataflow_blocks_while_the_feed_delivers_says_so_and_exits():
    """The output pipe nobody reads fills (a depth record of 200 levels at every
    change); the worker blocks in its write while the sim feed keeps delivering."""
    port = free_port()
    stall = 4.0
    member = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(
            ORDERBOOK_FEED="sim",
            ORDERBOOK_PRODUCTS="BTC-USD,ETH-USD",
            ORDERBOOK_SIM_RATE="50",
            ORDERBOOK_OUTPUT="jsonl",
            ORDERBOOK_DEPTH_LEVELS="200",
            ORDERBOOK_DEPTH_INTERVAL="0",
            ORDERBOOK_STALL_SECONDS=str(stall),
            ORDERBOOK_HEALTH=f"127.0.0.1:{port}",
        ),
    )
    try:
        seen: list[tuple[float, int, dict | None]] = []

        def livez_unhealthy() -> bool:
            try:
                status, body = _get(port, "/livez")
            except OSError:  # not listening yet, or gone
                return member.proc.poll() is not None
            seen.append((time.monotonic(), status, body))
            return status == 503

        wait_until(livez_unhealthy, 60, "/livez to turn 503")
        unhealthy_at, status, body = seen[-1]
        assert status == 503, member.proc.poll()
        assert body["status"] == "unhealthy" and body["dataflow"] == "behind"
        assert "BTC-USD, ETH-USD delivered" in body["reason"]
        assert stall / 2 <= body["behind_seconds"] < stall
        assert member.proc.wait(timeout=60) == 1
        exited_at = time.monotonic()
    finally:
        member.finish(timeout=20)
    line = member.stderr.strip().splitlines()[-1]
    found = re.fullmatch(
        r"orderbook: the dataflow made no progress for ([0-9.]+) s while BTC-USD, "
        r"ETH-USD delivered [0-9,]+ events, [0-9,]+ waiting \(an output blocked, or "
        r"a cluster peer unreachable\?\), exiting",
        line,
    )
    assert found, line
    # the bound: the window, plus one tick (1 s), plus a loaded machine's lag
    assert stall <= float(found.group(1)) <= stall + 1.0 + 3.0
    assert "Traceback" not in member.stderr
    # the bound: behind for at least half the window at the 503, exit once the whole
    # window is over; two ticks of 1 s bound the lag of each, plus a loaded machine
    behind_at_503 = body["behind_seconds"]
    assert exited_at - unhealthy_at <= stall - behind_at_503 + 2 * 1.0 + 5.0


@pytest.mark.slow
def test_readyz_waits_for_every_snapshot_and_a_quiet_feed_is_no_stall():
    """The feed sends BTC-USD's snapshot and holds ETH-USD's until the test says so:
    meanwhile the member is alive (a quiet feed, for well over its window) and not
    ready; with both books, it is ready."""
    release = threading.Event()

    async def script(conn: ScriptedConnection) -> None:
        wanted: set[str] = set()
        while wanted != {"BTC-USD", "ETH-USD"}:
            subscribe = await conn.recv_json(timeout=30)
            products = sorted(
                {p for c in subscribe["channels"] for p in c["product_ids"]}
            )
            wanted.update(products)
            await conn.send(frames.exchange_subscriptions(products))
            if "BTC-USD" in products:
                await conn.send(frames.exchange_snapshot("BTC-USD"))
        await asyncio.to_thread(release.wait, 120)
        await conn.send(frames.exchange_snapshot("ETH-USD", *frames.ladder(50)))
        await conn.hold(120)

    port = free_port()
    stall = 1.0
    with ScriptedServer(script) as server:
        member = FlowProcess(
            ["bytewax.run", "dataflow:flow"],
            flow_env(
                ORDERBOOK_FEED="exchange",
                ORDERBOOK_WS_URL=server.url,
                ORDERBOOK_PRODUCTS="BTC-USD,ETH-USD",
                ORDERBOOK_WATCHDOG_SECONDS="120",
                ORDERBOOK_STALL_SECONDS=str(stall),
                ORDERBOOK_HEALTH=f"127.0.0.1:{port}",
            ),
        )
        try:

            def answer(path: str) -> tuple[int, dict | None] | None:
                try:
                    return _get(port, path)
                except OSError:
                    return None

            def quiet_for_long() -> bool:
                got = answer("/livez")
                return bool(
                    got
                    and got[0] == 200
                    and got[1]["dataflow"] == "quiet"
                    and got[1]["for_seconds"] >= 3 * stall
                )

            member.wait_for(quiet_for_long, 60, "/livez quiet for 3 windows")
            assert member.proc.poll() is None
            assert answer("/readyz") == (
                503,
                {
                    "status": "unhealthy",
                    "books": 1,
                    "of": 2,
                    "reason": "awaiting a snapshot: ETH-USD",
                },
            )
            release.set()
            member.wait_for(
                lambda: answer("/readyz") == (200, {"status": "ok", "books": 2}),
                60,
                "/readyz 200",
            )
            assert answer("/livez")[0] == 200
        finally:
            release.set()
            member.stop()
    assert "no progress" not in member.stderr


# -- the partitions' counters -------------------------------------------------------------


@pytest.fixture
def partitions():
    yield from open_partitions()


@pytest.mark.slow
def test_a_partition_counts_what_it_queued_and_what_was_taken_and_when_its_book_is_live(
    partitions: list,
) -> None:
    """Live once its snapshot was taken; not live from the reset of a dropped
    connection until the next snapshot is taken."""
    drop = threading.Event()

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.send(update_frame())
        if conn.index == 0:
            await asyncio.to_thread(drop.wait, 30)
            return  # the connection closes: a reset, then a reconnect
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url)
        progress = part.progress()
        assert (progress.delivered, progress.drained, progress.ready) == (1, 0, False)
        assert progress.pending == 1 and progress.waiting_since_ns > 0  # the reset
        wait_for_partition(lambda: part.progress().delivered == 3)
        queued = part.progress()  # reset, snapshot, change: queued, none taken
        assert (queued.pending, queued.ready) == (3, False)
        items = collect(part, count("changes", 1))
        assert kinds(items) == ["reset", "snapshot", "changes"]
        taken = part.progress()
        assert (taken.drained, taken.pending, taken.ready) == (3, 0, True)
        assert taken.waiting_since_ns == 0
        drop.set()
        wait_for_partition(lambda: not part.progress().ready)  # the reset queued
        items = collect(part, count("changes", 1))
        assert kinds(items) == ["reset", "snapshot", "changes"]
        again = part.progress()
        assert (again.delivered, again.drained, again.ready) == (6, 6, True)
        assert part._source.progress() == [again]


@pytest.mark.slow
def test_a_member_whose_peer_stops_answering_says_so_and_exits():
    """A cluster peer that stops (SIGSTOP: its sockets stay open, nothing resets them,
    as under a network partition) leaves the other member's epoch unconfirmed: it
    takes nothing more from its feed and ends within the window, one epoch (``-s 1``)
    and one tick, plus a loaded machine's lag."""
    stall = 3.0
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    ports = [free_port(), free_port()]
    members = [
        FlowProcess(
            ["bytewax.run", "dataflow:flow", "-i", str(i), "-a", addresses, "-s", "1"],
            flow_env(
                ORDERBOOK_FEED="sim",
                ORDERBOOK_PRODUCTS="BTC-USD,ETH-USD,BTC-EUR,ETH-EUR",
                ORDERBOOK_OUTPUT="jsonl",
                ORDERBOOK_STALL_SECONDS=str(stall),
                ORDERBOOK_HEALTH=f"127.0.0.1:{ports[i]}",
            ),
        )
        for i in range(2)
    ]
    first, second = members
    try:

        def ready(port: int) -> bool:
            try:
                return _get(port, "/readyz")[0] == 200
            except OSError:
                return False

        first.wait_for(lambda: ready(ports[0]) and ready(ports[1]), 60, "both ready")
        second.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        assert first.proc.wait(timeout=60) == 1
        took = time.monotonic() - stopped_at
    finally:
        for member in members:
            member.stop(signal.SIGKILL)
    line = first.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"orderbook: the dataflow made no progress for [0-9.]+ s while [A-Z, -]+ "
        r"delivered [0-9,]+ events, [0-9,]+ waiting \(an output blocked, or a cluster "
        r"peer unreachable\?\), exiting",
        line,
    ), line
    assert "Traceback" not in first.stderr
    assert stall <= took <= stall + 1.0 + 0.75 + 5.0
