"""What the service says and does at start: threshold, ignored settings, resumed
partitions, signals before the flow is built."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from decimal import Decimal

import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from service.inputs import ResumeLoggingSource, log_resumes
from service.runtime import announce_settings
from service.settings import METRICS_API_ENABLED, Settings
from tests.support.flow import FlowProcess, flow_env, wait_until


def test_threshold_is_announced_in_plain_notation(caplog):
    with caplog.at_level(logging.INFO):
        announce_settings(Settings(spread_threshold_pct=Decimal("1E+1")))
        announce_settings(Settings(spread_threshold_pct=Decimal("0.10000")))
    text = caplog.text
    assert "exceeds 10% of the ask" in text and "exceeds 0.1% of the ask" in text
    assert "E+" not in text


def test_settings_warnings_are_logged_once_each(caplog, tmp_path):
    rec = tmp_path / "r.jsonl.gz"
    rec.write_bytes(b"")
    settings = Settings.from_env(
        {"ORDERBOOK_REPLAY": str(rec), "ORDERBOOK_FEED": "sim", "ORDERBOK_FEED": "x"}
    )
    with caplog.at_level(logging.INFO):
        announce_settings(settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the replay's REST audits: said by service.inputs
    assert any("ORDERBOOK_FEED is ignored" in w for w in warnings)
    assert any("did you mean ORDERBOOK_FEED" in w for w in warnings)


def test_an_api_switched_off_with_false_is_really_off(monkeypatch):
    monkeypatch.setenv(METRICS_API_ENABLED, "false")
    announce_settings(Settings.from_env({METRICS_API_ENABLED: "false"}))
    assert METRICS_API_ENABLED not in os.environ  # Bytewax would serve on any value


class _Part(StatefulSourcePartition):
    def next_batch(self):
        return []

    def snapshot(self):
        return None


class _Source(FixedPartitionedSource):
    def list_parts(self):
        return ["BTC-USD", "ETH-USD"]

    def build_part(self, step_id, for_part, resume_state):
        return _Part()


def test_a_resumed_partition_says_so_and_a_fresh_one_does_not(caplog):
    source = log_resumes(_Source())
    assert isinstance(source, ResumeLoggingSource) and log_resumes(source) is source
    assert source.list_parts() == ["BTC-USD", "ETH-USD"]
    with caplog.at_level(logging.INFO, logger="service.inputs"):
        assert isinstance(source.build_part("s", "BTC-USD", None), _Part)
        assert isinstance(source.build_part("s", "ETH-USD", "saved"), _Part)
    assert "ETH-USD: resuming from recovery state" in caplog.text
    assert "BTC-USD" not in caplog.text


# -- signals during start-up (issue 17, finding 24) ---------------------------------------

DEEP_BOOKS = {
    "ORDERBOOK_FEED": "sim",
    "ORDERBOOK_SIM_DEPTH": "50000",  # about 0.15 s of start-up per product
    "ORDERBOOK_PRODUCTS": "BTC-USD,ETH-USD,BTC-EUR,ETH-EUR,SOL-USD,LTC-USD",
    "ORDERBOOK_SPREAD_THRESHOLD": "0",
}


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except FileNotFoundError:  # exited
        pass
    return False


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["as soon as it can", "while deep books build"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_ends_the_run_cleanly(moment, sig):
    """Before, the handlers came once the flow was built: Ctrl-C or SIGTERM during the
    start-up (0.3 s; 0.8 s with a deep sim book) left a traceback and status 130/143.
    Now they are in place from the import of ``dataflow``; the test waits for that
    (the process catches SIGTERM), or for the books' build to be under way (0.2 s of CPU
    later), and signals then: the start-up must not have finished."""
    flow = FlowProcess(["bytewax.run", "dataflow:flow"], flow_env(**DEEP_BOOKS))
    pid = flow.proc.pid
    wait_until(
        lambda: _catches(pid, signal.SIGTERM) or flow.proc.poll() is not None,
        30,
        "the process to install its signal handlers",
    )
    if moment == "while deep books build":
        cpu = _cpu_seconds(pid)
        wait_until(lambda: _cpu_seconds(pid) >= cpu + 0.2, 30, "0.2 s of start-up")
    status = flow.stop(sig, timeout=30)
    assert status == 0, flow.stderr[-2000:]
    assert "Traceback" not in flow.stderr
    assert f"{signal.Signals(sig).name} received, stopping" in flow.stderr
    assert "emitting summaries" not in flow.stderr  # it was still starting
    assert flow.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_kafka_broker_is_asked_at_start_ends_the_run_at_once(
    tmp_path, sig
):
    """The output probe waits up to 10 s for a broker inside librdkafka, where no
    Python handler can run: the signal relay ends the run anyway, within a second.
    The "broker" accepts the connection and never answers."""
    accepted = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        held: list[socket.socket] = []

        def accept() -> None:
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])
                accepted.set()

        threading.Thread(target=accept, daemon=True).start()
        env = flow_env(
            ORDERBOOK_FEED="sim", ORDERBOOK_OUTPUT=f"kafka:127.0.0.1:{port}/books"
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        wait_until(accepted.is_set, 30, "the output probe to reach the broker")
        signalled = time.monotonic()
        status = flow.stop(sig, timeout=30)
        took = time.monotonic() - signalled
        for conn in held:
            conn.close()
    assert status == 0, flow.stderr[-2000:]
    assert took < 5.0, f"{took:.1f} s"  # the probe's own timeout is 10 s
    assert "Traceback" not in flow.stderr
    assert f"{signal.Signals(sig).name} received, stopping" in flow.stderr
