"""The recorder on the shared connection layer: refusals before connecting, append,
reconnects through the watchdog."""

from __future__ import annotations

import asyncio
import os
import pathlib
import resource
import subprocess
import sys

import pytest

from local_exchange.server import LocalExchange
from recording.reader import Recording
from recording.recorder import check_output, record
from tests.support.flow import REPO, FlowProcess, flow_env, free_port, wait_until


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
        exchange.go_silent(60)  # at most: ended once the recorder subscribed again
        await asyncio.to_thread(
            wait_until,
            lambda: exchange.stats["subscribes"] >= 2,  # "connected" written before it
            30,
            "the recorder to subscribe again",
        )
        exchange.end_silence()
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


# -- a recorder that can never succeed ends, in one line (issue 17: 19, 26) ---------------


def _recorder(out, *args: str, url: str | None = None) -> list[str]:
    return [
        "recording",
        str(out),
        "--url",
        url or f"ws://127.0.0.1:{free_port()}",
        *args,
    ]


def _ended_in_one_line(cmd: FlowProcess, status: int) -> str:
    """The error line (the last line; progress and connection warnings may precede it)."""
    got = cmd.finish(timeout=50)
    return _one_error_line(cmd.stderr, status, got)


def _one_error_line(stderr: str, status: int, got: int) -> str:
    assert got == status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [x for x in stderr.splitlines() if x.startswith("recording: error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_the_recorder_ends_in_one_line_when_the_feed_refuses_an_unknown_product(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "unknown.jsonl.gz"
    with LocalExchange(["BTC-USD"], depth=20, rate=40) as exchange:
        cmd = FlowProcess(
            _recorder(
                out,
                "--products",
                "BTC-USD,NOPE-USD",
                "--duration",
                "60",
                url=exchange.url(),
            ),
            flow_env(),
        )
        line = _ended_in_one_line(cmd, 1)
    assert "NOPE-USD" in line and "unknown product" in line, line
    assert Recording.open(out).products == ["BTC-USD", "NOPE-USD"]
    list(Recording.open(out).records())  # what was written is readable


@pytest.mark.slow
@pytest.mark.parametrize("duration", ["nan", "inf"])
def test_the_recorder_refuses_a_duration_that_is_not_a_finite_number(
    tmp_path: pathlib.Path, duration: str
) -> None:
    out = tmp_path / "never.jsonl.gz"
    cmd = FlowProcess(_recorder(out, "--duration", duration), flow_env())
    assert cmd.finish(timeout=20) == 2, cmd.stderr[-2000:]
    assert f"--duration={duration!r} is not allowed" in cmd.stderr, cmd.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_recorder_ends_in_one_line_when_the_url_is_unreachable(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "unreachable.jsonl.gz"
    port = free_port()  # nobody listens: every attempt is refused at once
    cmd = FlowProcess(
        _recorder(out, "--duration", "60", url=f"ws://127.0.0.1:{port}"), flow_env()
    )
    line = _ended_in_one_line(cmd, 1)
    assert f"cannot connect to ws://127.0.0.1:{port} after " in line, line
    assert Recording.open(out).header["url"] == f"ws://127.0.0.1:{port}"


@pytest.mark.slow
def test_the_recorders_file_and_log_never_show_the_urls_credentials(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "secret.jsonl.gz"
    port = free_port()
    url = f"ws://alice:hunter2@127.0.0.1:{port}/?token=s3cret"
    cmd = FlowProcess(_recorder(out, "--duration", "60", url=url), flow_env())
    line = _ended_in_one_line(cmd, 1)
    header = Recording.open(out).header
    assert header["url"] == f"ws://***@127.0.0.1:{port}/?token=***", header
    for text in (line, cmd.stderr, str(header)):
        assert "hunter2" not in text and "s3cret" not in text, text


@pytest.mark.slow
def test_the_recorder_ends_in_one_line_on_a_full_disk(tmp_path: pathlib.Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    cmd = FlowProcess(
        _recorder("/dev/full", "--overwrite", "--duration", "60"), flow_env()
    )
    line = _ended_in_one_line(cmd, 1)
    assert "cannot write '/dev/full': No space left on device" in line, line
    assert "network error" not in cmd.stderr


@pytest.mark.slow
def test_the_recorder_ends_in_one_line_where_it_cannot_create_the_file() -> None:
    # As root, chmod stops nothing; sysfs refuses to create a file even to root.
    out = pathlib.Path("/sys/orderbook-recorder-test.jsonl.gz")
    if not out.parent.is_dir() or out.exists():
        pytest.skip("no sysfs here")
    cmd = FlowProcess(_recorder(out, "--duration", "60"), flow_env())
    line = _ended_in_one_line(cmd, 1)
    assert line.startswith(f"recording: error: cannot write {str(out)!r}: "), line
    assert not out.exists()


@pytest.mark.slow
def test_the_recorder_ends_in_one_line_at_a_file_size_limit_keeping_what_it_wrote(
    tmp_path: pathlib.Path,
) -> None:
    """RLIMIT_FSIZE makes the file full mid-run (EFBIG), as a disk filling up would,
    without root tricks; what was written before stays readable."""
    out = tmp_path / "limited.jsonl.gz"
    limit = 16 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with LocalExchange(["BTC-USD"], depth=50, rate=200) as exchange:
        args = _recorder(
            out, "--products", "BTC-USD", "--duration", "60", url=exchange.url()
        )
        done = subprocess.run(
            [sys.executable, "-m", *args],
            cwd=REPO,
            env=flow_env(PYTHONDONTWRITEBYTECODE="1"),
            capture_output=True,
            text=True,
            timeout=50,
            preexec_fn=limited,
        )
    line = _one_error_line(done.stderr, 1, done.returncode)
    assert f"cannot write {str(out)!r}: File too large" in line, line
    assert "network error" not in done.stderr
    assert 0 < out.stat().st_size <= limit
    records = [r for _, r in Recording.open(out).records()]
    assert any("frame" in r for r in records)  # the frames before the limit are kept
    reader = Recording.open(out).of_products({"BTC-USD": 0})
    assert sum(len(items) for _, _, items in reader) == len(records)
