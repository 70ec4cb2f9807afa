"""The one flow runner of the tests: the real dataflow command in a subprocess.

``FlowProcess`` runs ``python -m bytewax.run dataflow:flow`` (or any module and
arguments) the way a user does; ``flow_env`` gives it a clean environment; ``wait_until``
and ``FlowProcess.wait_for`` wait for a condition instead of sleeping a fixed time;
``await_true_tops`` waits for a paused market's true tops; ``free_port`` gives a
loopback port nobody listens on (for ``BYTEWAX_DATAFLOW_API_PORT``); ``run_script``
runs a snippet of Python in a process of its own (for code that ends its process).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the kernel's ephemeral pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, poll: float = 0.02
) -> object:
    """Poll ``condition`` until it returns something true; return it, or fail naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def flow_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERBOOK_")}
    env.update(settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(
    script: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python -c script args`` from the repository, the project importable, in the
    clean environment of :func:`flow_env`: for code that ends its process (the
    output-failure path's ``os._exit``). Its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=flow_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class FlowProcess:
    """``python -m bytewax.run dataflow:flow`` (or any module args) in its own process.

    The command runs in a process group of its own, and signals go to the whole group,
    as a terminal's Ctrl-C does: ``python -m bytewax.testing -p 2`` starts its worker
    processes as children, and a test that signalled the parent alone left them
    running (found as dozens of orphaned ``bytewax.run -i N`` processes after loaded
    runs, each waiting forever for a peer on Bytewax's fixed ports 2101/2102).
    """

    def __init__(
        self, args: list[str], env: dict[str, str], *, die_with_parent: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        self.stdout = ""
        self.stderr = ""

    def wait_for(
        self, condition: Callable[[], bool], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                self.finish(timeout=1)
                raise AssertionError(
                    f"flow exited ({self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}"
                )
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # the whole group has exited
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self._signal_group(sig)
        return self.finish(timeout)

    def finish(self, timeout: float = 60) -> int:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            out, err = self.proc.communicate()
        finally:
            self._signal_group(signal.SIGKILL)  # children the command left behind
        self.stdout += out or ""
        self.stderr += err or ""
        return self.proc.returncode


def await_true_tops(
    exchange: Any,
    read: Callable[[], list[dict]],
    products: Iterable[str],
    sizes: bool = True,
    timeout: float = 30,
) -> list[dict]:
    """After ``exchange.pause_market()``: wait until the last summary ``read()`` holds
    for every product is the exchange's true top of book (prices, and sizes unless
    ``sizes`` is False); return those records.

    Exact, where waiting for the output to stay quiet a second was not: the paused
    true book no longer moves, so a correct flow's last summaries end there, and a
    wrong book never does (this fails, naming the first product that differs)."""
    products = list(products)

    def top(record: dict | None) -> tuple | None:
        if record is None:
            return None
        fields = ("bid_price", "bid_size", "ask_price", "ask_size")
        return tuple(Decimal(record[f]) for f in (fields if sizes else fields[::2]))

    def true(product: str) -> tuple:
        bid, bid_size, ask, ask_size = exchange.true_top(product)
        return (bid, bid_size, ask, ask_size) if sizes else (bid, ask)

    def matched() -> list[dict] | None:
        records = read()
        last = last_by_product(records)
        return records if all(top(last.get(p)) == true(p) for p in products) else None

    try:
        return wait_until(matched, timeout, "every last summary to be the true top")  # type: ignore[return-value]
    except AssertionError:
        last = last_by_product(read())
        for product in products:
            assert top(last.get(product)) == true(product), product
        raise


def last_by_product(records: list[dict]) -> dict[str, dict]:
    last: dict[str, dict] = {}
    for record in records:
        last[record["product_id"]] = record
    return last


def by_product(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["product_id"], []).append(record)
    return out


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it ends (Linux
    ``PR_SET_PDEATHSIG``), for a process started by a helper process that may itself
    be killed (the background audit run, tests/support/audit_run.py): its own process
    group would otherwise outlive it, found as services running for 45 minutes after
    a killed pytest."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
