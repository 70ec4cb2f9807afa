"""The recorder on the shared connection layer: refusals before connecting, append,
reconnects through the watchdog."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from local_exchange.server import LocalExchange
from recording.reader import Recording
from recording.recorder import check_output, record
from tests.support.flow import FlowProcess, flow_env, wait_until


def test_check_output_refusals(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "no-such-dir" / "x.jsonl.gz"
    assert "does not exist" in (check_output(missing) or "")
    taken = tmp_path / "taken.jsonl.gz"
    taken.write_bytes(b"")
    assert "--overwrite" in (check_output(taken) or "")
    assert check_output(taken, "overwrite") is None
    assert "cannot append" in (check_output(taken, "append") or "")  # not a recording
    assert check_output(tmp_path / "fresh.jsonl.gz") is None


@pytest.mark.slow
def test_record_appends_to_a_recording_and_refuses_to_clobber(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "r.jsonl.gz"
    with LocalExchange(["BTC-USD", "ETH-USD"], depth=20, rate=40) as exchange:
        first = asyncio.run(record(path, ["BTC-USD"], url=exchange.url(), duration=1))
        with pytest.raises(FileExistsError, match="--overwrite"):
            asyncio.run(record(path, ["BTC-USD"], url=exchange.url(), duration=1))
        with pytest.raises(FileExistsError, match="cannot append ETH-USD"):
            asyncio.run(
                record(path, ["ETH-USD"], url=exchange.url(), duration=1, mode="append")
            )
        second = asyncio.run(
            record(path, ["BTC-USD"], url=exchange.url(), duration=1, mode="append")
        )
    records = [r for _, r in Recording.open(path).records()]
    assert sum("frame" in r for r in records) == first["frames"] + second["frames"]
    assert [r.get("event") for r in records].count("connected") == 2
    assert "format" not in str(records)  # no second header in the appended part


@pytest.mark.slow
def test_the_recorder_reconnects_a_silent_connection(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "silent.jsonl.gz"

    async def main(exchange: LocalExchange) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            record(
                path, ["BTC-USD"], url=exchange.url(), stop=stop, watchdog_seconds=0.3
            )
        )
        # Waited for in a thread: the recorder runs on this event loop meanwhile.
        await asyncio.to_thread(
            wait_until,
            lambda: exchange.stats["frames_sent"].get("snapshot"),
            30,
            "the first connection's snapshot",
        )
        exchange.go_silent(1.0)
        await asyncio.to_thread(
            wait_until,
            lambda: exchange.stats["subscribes"] >= 2,  # "connected" written before it
            30,
            "the recorder to subscribe again",
        )
        stop.set()
        await task

    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        asyncio.run(main(exchange))
        assert exchange.stats["subscribes"] >= 2
    events = [r.get("event") for _, r in Recording.open(path).records()]
    assert events.count("connected") >= 2


@pytest.mark.slow
def test_the_command_refuses_a_missing_directory_and_an_existing_file(
    tmp_path: pathlib.Path,
) -> None:
    missing = tmp_path / "nope" / "x.jsonl.gz"
    cmd = FlowProcess(
        ["recording", str(missing), "--url", "ws://127.0.0.1:9"], flow_env()
    )
    assert cmd.finish(timeout=30) == 2
    assert cmd.stderr.strip().splitlines() == [
        f"recording: error: output directory {str(missing.parent)!r} does not exist"
    ]
    taken = tmp_path / "taken.jsonl.gz"
    taken.write_text("precious")
    cmd = FlowProcess(
        ["recording", str(taken), "--url", "ws://127.0.0.1:9"], flow_env()
    )
    assert cmd.finish(timeout=30) == 2
    assert len(cmd.stderr.strip().splitlines()) == 1 and "--overwrite" in cmd.stderr
    assert taken.read_text() == "precious"
