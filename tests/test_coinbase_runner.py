"""The loop the connections run on: a thread of its own, or inline, run by the polls.

The inline runner's own rules are checked without sockets; the inline source against a
real WebSocket server on 127.0.0.1 (the scripted server), driven as Bytewax drives it:
by its polls alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

import coinbase.runner
from coinbase.runner import LoopRunner
from coinbase_source import (
    BUSY_FRAMES,
    POLL_INTERVAL,
    QUIET_POLL_INTERVAL,
    QUIET_POLLS,
    _CoinbasePartition,
    _on_the_grid,
)
from tests.support.scripted_server import ScriptedConnection, ScriptedServer
from tests.support.source_partitions import (
    build,
    collect,
    count,
    kinds,
    open_partitions,
    polled,
    snapshot_frame,
    update_frame,
    wait_until,
)

ME, OTHER = object(), object()
"""Two pollers."""


@pytest.fixture
def inline() -> Iterator[LoopRunner]:
    runner = LoopRunner("inline-test", inline=True)
    yield runner
    runner.close()


def test_an_inline_runner_runs_its_loop_only_when_pumped_and_on_no_thread(
    inline: LoopRunner,
) -> None:
    ran: list[int] = []
    inline.call_soon(ran.append, 1)
    assert ran == []
    assert inline.pump(ME)
    assert ran == [1]
    assert not _thread_named(inline.name)


def test_a_pump_runs_the_timers_due_and_never_waits_for_the_others(
    inline: LoopRunner,
) -> None:
    fired: list[str] = []
    inline.loop().call_later(3600, fired.append, "later")
    inline.loop().call_later(0.01, fired.append, "soon")
    assert inline.pump(ME)  # returns at once: the hour-long timer does not hold it
    wait_until(lambda: inline.pump(ME) and fired == ["soon"])
    assert fired == ["soon"]


def test_pumps_closer_than_the_interval_are_skipped(
    inline: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coinbase.runner, "PUMP_INTERVAL", 3600.0)
    ran: list[int] = []
    assert inline.pump(ME)
    inline.call_soon(ran.append, 1)
    assert not inline.pump(ME)  # another partition of the same step pumped already
    assert ran == []


def test_one_poller_runs_the_loop_until_it_stops_polling(
    inline: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coinbase.runner, "PUMP_INTERVAL", 0.0)
    monkeypatch.setattr(coinbase.runner, "TAKE_OVER_SECONDS", 3600.0)
    assert inline.pump(ME)
    assert inline.pumps_for(ME) and not inline.pumps_for(OTHER)
    assert not inline.pump(OTHER)  # the loop ran just now: ME runs it
    assert inline.pump(ME)
    monkeypatch.setattr(coinbase.runner, "TAKE_OVER_SECONDS", 0.0)
    assert inline.pump(OTHER)  # ME has not run it for TAKE_OVER_SECONDS: taken over
    assert inline.pumps_for(OTHER) and not inline.pumps_for(ME)


def test_pumps_that_read_no_frame_are_counted_until_one_does(
    inline: LoopRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coinbase.runner, "PUMP_INTERVAL", 0.0)
    for _ in range(3):
        assert inline.pump(ME)
    assert inline.idle_pumps == 3
    inline.call_soon(lambda: setattr(inline, "frames", inline.frames + 1))
    assert inline.pump(ME)  # a connection's handler counted a frame
    assert inline.idle_pumps == 0


def test_polls_fall_due_on_whole_milliseconds() -> None:
    """Partitions polled in one step are due again at one instant: one wake-up."""
    before = datetime.now(UTC)
    due = _on_the_grid(POLL_INTERVAL)
    after = datetime.now(UTC)
    assert due.microsecond % 1000 == 0 and due.tzinfo is UTC
    assert before < due <= after + POLL_INTERVAL
    quiet = _on_the_grid(QUIET_POLL_INTERVAL)
    assert after + QUIET_POLL_INTERVAL - POLL_INTERVAL < quiet


def test_a_pump_from_the_loops_own_work_does_nothing(inline: LoopRunner) -> None:
    seen: list[tuple[bool, bool]] = []
    inline.call_soon(lambda: seen.append((inline.on_loop(), inline.pump(ME))))
    assert inline.pump(ME)
    assert seen == [(True, False)]
    assert not inline.on_loop()


def test_wait_runs_an_inline_loop_until_its_event_or_the_timeout(
    inline: LoopRunner,
) -> None:
    done = threading.Event()
    inline.loop().call_later(0.01, done.set)
    assert inline.wait(done, 10.0)
    never = threading.Event()
    started = time.monotonic()
    assert not inline.wait(never, 0.05)
    assert time.monotonic() - started >= 0.05


@pytest.mark.slow
def test_a_threaded_runner_is_never_pumped() -> None:
    runner = LoopRunner("threaded-test")
    ran = threading.Event()
    runner.call_soon(ran.set)
    assert ran.wait(10.0)  # its own thread ran it
    assert not runner.pump(ME)
    assert _thread_named("threaded-test")


def _thread_named(name: str) -> bool:
    return any(t.name == name for t in threading.enumerate())


# -- an inline source, driven by its polls alone ------------------------------------------


@pytest.fixture
def partitions() -> Iterator[list[_CoinbasePartition]]:
    yield from open_partitions()


@pytest.mark.slow
def test_an_inline_source_reads_its_feed_in_its_polls_and_closes_its_connection(
    partitions: list, inline: LoopRunner
) -> None:
    closed: list[int] = []

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.send(update_frame())
        await conn.hold(10)
        closed.append(conn.index)

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, runner=inline)
        items = collect(part, count("changes", 1))
        assert kinds(items) == ["reset", "snapshot", "changes"]
        assert not _thread_named(inline.name)  # no feed thread
        part.close()  # runs the loop while the connection says goodbye
        assert not part.running
        wait_until(lambda: bool(closed))
    assert closed == [0]
    assert server.connections == 1


@pytest.mark.slow
def test_an_inline_source_nobody_polls_reports_its_feed_waiting_since_the_last_poll(
    partitions: list, inline: LoopRunner
) -> None:
    """The stall watchdog's signal (``service/health.py``): inline, a dataflow that
    stops polling leaves the socket unread, so no event queues; the partition reports
    its feed as waiting since the loop last ran instead."""

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(
            partitions, ["BTC-USD"], server.url, runner=inline, watchdog_seconds=60
        )
        collect(part, count("snapshot", 1))
        polled(part)
        last_run = inline.pumped_ns
        assert part.progress().pending == 0
        wait_until(lambda: part.progress().pending == 1)  # over a second unpolled
        progress = part.progress()
        assert progress.waiting_since_ns == last_run == inline.pumped_ns
        assert progress.drained == 2  # nothing taken since
        polled(part)  # the dataflow polls again: nothing waits
        assert part.progress().pending == 0
        assert part.progress().waiting_since_ns == 0
        part.close()  # inside: an unpolled client would keep the server's close waiting


@pytest.mark.slow
def test_the_partition_that_runs_the_loop_polls_like_a_quiet_one_once_the_loop_is_quiet(
    partitions: list, inline: LoopRunner
) -> None:
    go = threading.Event()

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await asyncio.to_thread(go.wait, 30)
        await conn.send(update_frame())
        await conn.hold()

    def wait_after_poll() -> float:
        polled(part)
        return (part.next_awake() - datetime.now(UTC)).total_seconds()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, runner=inline)
        collect(part, count("snapshot", 1))
        assert inline.pumps_for(part)
        busy = POLL_INTERVAL.total_seconds()
        assert wait_after_poll() <= busy  # the loop read a frame lately
        wait_until(lambda: wait_after_poll() > busy)  # 16 runs of the loop read none
        assert inline.idle_pumps >= QUIET_POLLS
        assert wait_after_poll() <= QUIET_POLL_INTERVAL.total_seconds()
        go.set()  # a frame: the loop is busy again
        collect(part, count("changes", 1))
        assert wait_after_poll() <= busy
        part.close()


@pytest.mark.slow
def test_the_partition_that_runs_the_loop_is_polled_at_once_while_frames_pour_in(
    partitions: list, inline: LoopRunner
) -> None:
    """A pump that read ``BUSY_FRAMES`` or more asks for the next poll at once: the
    worker does not park a millisecond while the socket holds more."""
    go = threading.Event()

    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send(snapshot_frame())
        await asyncio.to_thread(go.wait, 30)
        for _ in range(BUSY_FRAMES * 50):  # some pump reads BUSY_FRAMES at least
            await conn.send(update_frame())
        await conn.hold()

    with ScriptedServer(script) as server:
        part = build(partitions, ["BTC-USD"], server.url, runner=inline)
        collect(part, count("snapshot", 1))
        wait_until(lambda: not polled(part) and inline.last_frames == 0)
        assert part.next_awake() is not None  # a quiet loop: polled on the grid
        go.set()
        wait_until(lambda: polled(part) and inline.last_frames >= BUSY_FRAMES)
        assert part.next_awake() is None
        part.close()
