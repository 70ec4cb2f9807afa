"""ORDERBOOK_OUTPUT as a list: checks at start, stdout + JSON lines + Parquet in one run,
Parquet closed cleanly on SIGTERM, and an output failing mid-run stopping the run."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from service.outputs import OutputSpec, parse_outputs
from service.settings import ConfigError, Settings
from tests.support.flow import REPO, FlowProcess, flow_env, read_jsonl
from tests.support.outputs import (
    canonical,
    parquet_records,
    sim_flow_to_jsonl_and_parquet,
    small_recording,
)


def test_a_list_of_outputs_is_parsed_in_order(tmp_path):
    specs = parse_outputs(f"text, jsonl:{tmp_path}/a.jsonl,parquet:{tmp_path}/pq").specs
    assert specs == (
        OutputSpec("text"),
        OutputSpec("jsonl", f"{tmp_path}/a.jsonl"),
        OutputSpec("parquet", f"{tmp_path}/pq"),
    )
    s = Settings.from_env({"ORDERBOOK_OUTPUT": f"parquet:{tmp_path}/pq,jsonl"})
    assert [str(o) for o in s.outputs] == [f"parquet:{tmp_path}/pq", "jsonl"]


@pytest.mark.parametrize(
    "raw, named",
    [
        ("text,csv", "'csv'"),
        ("text,,jsonl", "empty entry"),
        ("text:", "the path is empty"),
        ("parquet", "parquet:DIR needs its argument"),
        ("kafka:localhost/topic", "'localhost' is not HOST:PORT"),
        ("kafka:localhost:9092", "kafka:HOST:PORT/TOPIC"),
        ("jsonl,jsonl", "given twice"),
        ("jsonl:/dev/full", "jsonl:/dev/full"),
        ("jsonl:/no/such/dir/x", "does not exist"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(raw, named):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_OUTPUT": raw})
    message = str(err.value)
    assert "ORDERBOOK_OUTPUT" in message and named in message and "\n" not in message


def test_a_directory_is_refused_for_jsonl_and_a_file_for_parquet(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        parse_outputs(f"jsonl:{tmp_path}")
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        parse_outputs(f"parquet:{tmp_path}/f")


def test_dev_full_is_refused_with_the_error_of_a_real_write():
    with pytest.raises(ConfigError, match="No space left on device"):
        parse_outputs("jsonl:/dev/full")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["/dev/full", "DIR"])
def test_an_unwritable_jsonl_target_is_refused_at_start_in_one_line(tmp_path, target):
    entry = "jsonl:" + (str(tmp_path) if target == "DIR" else target)
    flow = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(ORDERBOOK_FEED="sim", ORDERBOOK_OUTPUT=f"text,{entry}"),
    )
    assert flow.finish(timeout=60) != 0
    assert "Traceback" not in flow.stderr
    lines = [line for line in flow.stderr.splitlines() if "ORDERBOOK_OUTPUT" in line]
    assert len(lines) == 1 and entry in lines[0], flow.stderr


@pytest.mark.slow
def test_one_replay_to_stdout_jsonl_and_parquet_gives_the_same_records(tmp_path):
    recording = small_recording(tmp_path / "session.jsonl.gz")
    out, pq = tmp_path / "a.jsonl", tmp_path / "pq"
    env = flow_env(
        ORDERBOOK_REPLAY=str(recording),
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_DEPTH_LEVELS="5",
        ORDERBOOK_DEPTH_INTERVAL="0.05",
        ORDERBOOK_OUTPUT=f"jsonl,jsonl:{out},parquet:{pq}",
    )
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
    assert flow.finish(timeout=120) == 0, flow.stderr[-3000:]
    records = read_jsonl(out)
    stdout = [json.loads(line) for line in flow.stdout.splitlines()]
    assert stdout == records
    kinds = {r["type"] for r in records}
    assert kinds == {"summary", "depth"}
    assert {r["feed"] for r in records} == {"replay"}
    assert not list(pq.rglob(".part-*"))  # every journal converted
    assert canonical(parquet_records(pq)) == canonical(records)
    files = list(pq.rglob("*.parquet"))
    assert {f.parent.parent.parent.name for f in files} == {
        "type=summary",
        "type=depth",
    }
    assert all(f.name.startswith("part-0-") for f in files)


@pytest.mark.slow
def test_parquet_files_are_finished_on_sigterm(tmp_path):
    out, pq = tmp_path / "a.jsonl", tmp_path / "pq"
    flow = sim_flow_to_jsonl_and_parquet(out, pq)
    flow.wait_for(lambda: len(read_jsonl(out)) >= 200, 60, "200 records")
    assert flow.stop(signal.SIGTERM) == 0
    assert not list(pq.rglob(".part-*"))  # every journal converted
    # Every Parquet file is readable and holds only records of the run. A batch that a
    # worker wrote to the JSON lines just as the signal came may be missing from it.
    written, kept = canonical(read_jsonl(out)), canonical(parquet_records(pq))
    assert set(kept) <= set(written)
    assert len(kept) >= 0.9 * len(written), (len(kept), len(written))
    assert {f.name.split("-")[1] for f in pq.rglob("*.parquet")} <= {"0", "1"}


def _limit_file_size(limit: int):
    def apply() -> None:
        # Writes past `limit` bytes fail with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_an_output_failing_mid_run_stops_it_with_one_line(tmp_path, kind):
    """A disk that fills up mid-run, made real with RLIMIT_FSIZE.

    The file passes the start check (it is empty, the disk has room); after 20 KB every
    write fails with EFBIG ("File too large") from the kernel, as a full disk fails them
    with ENOSPC: the same OSError path in the sink.
    """
    target = tmp_path / ("a.jsonl" if kind == "jsonl" else "pq")
    env = flow_env(
        ORDERBOOK_FEED="sim",
        ORDERBOOK_SIM_DEPTH="200",
        ORDERBOOK_SPREAD_THRESHOLD="0",
        ORDERBOOK_DEPTH_LEVELS="50",
        ORDERBOOK_DEPTH_INTERVAL="0",
        ORDERBOOK_OUTPUT=f"{kind}:{target}",
    )
    if kind == "parquet":
        env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size(20_000),
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if "failed, stopping" in ln]
    assert len(failed) == 1 and f"output {kind}:{target}" in failed[0], proc.stderr
    assert "File too large" in failed[0]
    assert os.path.exists(target)
    assert "closing an output failed" not in proc.stderr
    if kind == "parquet":  # what could be finished is readable; the rest journals
        parquet_records(target)
