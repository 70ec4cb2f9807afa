"""Issue 19's end-to-end run of the REST audit, in a process of its own:
``python -m tests.support.audit_run WORKDIR``.

One run serves the three "Done when" checks of tests/test_audit_e2e.py, so that the
suite pays for the two minutes once, in the background of the other tests (started at
the session's start by tests/conftest.py, its test collected last):

* a :class:`~local_exchange.server.LocalExchange` (this process; Exchange protocol,
  :data:`RATE` update batches a second per product) and the real service
  (``python -m bytewax.run dataflow:flow``, a process) auditing every product every
  second, the process under a budget of :data:`AUDIT_RATE` REST requests a second;
* (a) once the first audits are in, one level of each of :data:`CORRUPTED` is silently
  corrupted (:meth:`LocalExchange.corrupt`); :data:`CLEAN` products are left alone;
* (c) once each corruption is found and its product audited clean again, REST errors of
  every kind are armed (:data:`REST_ERRORS`);
* (b) the run goes on until audits have run for :data:`AUDIT_SECONDS`; then the market
  is paused, the exchange's true books are taken, with a depth record (50 levels) of a
  paused book and an audit of every paused book (nothing touched: every level of the
  top 50 compared with REST, the true book).

Everything is written to ``WORKDIR/report.json`` for the test to judge: the injections,
the audit records, the REST request log, the metrics, the final books, the summaries'
times. The run itself asserts nothing but that it could take each step (conditions,
generous timeouts: it shares a 2-core machine with the rest of the suite).
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path

from local_exchange.server import LocalExchange
from tests.support.flow import FlowProcess, flow_env, free_port

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR", "SOL-USD"]
CORRUPTED = {"BTC-USD": "skip", "ETH-USD": "wrong_size", "BTC-EUR": "skip"}
CLEAN = [p for p in PRODUCTS if p not in CORRUPTED]
RATE = 200.0
"""Update batches a second per product (issue 19: a clean feed at 200 a second)."""
AUDIT_INTERVAL = 1.0
AUDIT_RATE = 5.0
"""The budget: every product audited every second uses all of it."""
LEVELS = 50
AUDIT_SECONDS = 125.0
"""How long audits run before the final books are taken (issue 19: at least 2 min)."""
REST_ERRORS = [("429", 1), ("500", 1), ("not_json", 1), ("timeout", 1)]
TIMEOUT_HOLD = 12.0
"""A ``timeout`` fault holds the request past the client's 10 s timeout."""
STEP_TIMEOUT = 90.0
"""Generous: each step waits on a condition, never on a fixed time."""


class Tail:
    """The JSON lines appended to a file so far, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.records
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self.records += [json.loads(line) for line in lines if line.strip()]
        return self.records

    def audits(self, product: str | None = None) -> list[dict]:
        return [
            r
            for r in self.read()
            if r.get("type") == "audit" and product in (None, r["product_id"])
        ]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def wait(condition, what: str, flow: FlowProcess, timeout: float = STEP_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if flow.proc.poll() is not None:
            flow.finish(1)
            raise RuntimeError(f"the flow exited before {what}: {flow.stderr[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def top(book: dict, bids: bool) -> list[list[str]]:
    prices = sorted(book, reverse=bids)[:LEVELS]
    return [[str(p), str(book[p])] for p in prices]


def run(workdir: Path) -> dict:
    out = workdir / "records.jsonl"
    metrics_port = free_port()
    report: dict = {"products": PRODUCTS, "corrupted": {}, "clean": CLEAN}
    with LocalExchange(PRODUCTS, depth=300, rate=RATE, seed=19) as exchange:
        env = flow_env(
            ORDERBOOK_FEED="exchange",
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_REST_URL=exchange.rest_url(),
            ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
            ORDERBOOK_SPREAD_THRESHOLD="0",
            ORDERBOOK_OUTPUT=f"jsonl:{out}",
            ORDERBOOK_DEPTH_LEVELS=str(LEVELS),
            ORDERBOOK_DEPTH_INTERVAL="1",
            ORDERBOOK_AUDIT_INTERVAL=str(AUDIT_INTERVAL),
            ORDERBOOK_AUDIT_LEVELS=str(LEVELS),
            ORDERBOOK_AUDIT_RATE=str(AUDIT_RATE),
            BYTEWAX_DATAFLOW_API_ENABLED="true",
            BYTEWAX_DATAFLOW_API_PORT=str(metrics_port),
            ORDERBOOK_METRICS_ADDRESS="0.0.0.0",
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env, die_with_parent=True)
        tail = Tail(out)
        try:
            _scenario(exchange, flow, tail, report)
            report["audit_counts_before_scrape"] = _counts(tail.audits())
            report["metrics"] = scrape(metrics_port)
            report["audit_counts_after_scrape"] = _counts(tail.audits())
        finally:
            report["rest_requests"] = exchange.rest_requests()
            report["exit"] = flow.stop(signal.SIGTERM)
            report["stderr"] = flow.stderr[-20_000:]
    records = tail.read()
    report["audits"] = [r for r in records if r.get("type") == "audit"]
    report["summary_times"] = {
        p: [r["time"] for r in records if r.get("product_id") == p and "bid_price" in r]
        for p in PRODUCTS
    }
    return report


def _scenario(exchange: LocalExchange, flow: FlowProcess, tail: Tail, report: dict):
    wait(
        lambda: all(tail.audits(p) for p in PRODUCTS),
        "a first audit of every product",
        flow,
    )
    report["audits_began"] = time.time()
    began = time.monotonic()
    # (a) silent corruption of one level of each corrupted product
    for product, kind in CORRUPTED.items():
        wait(
            lambda p=product: any(a["result"] == "match" for a in tail.audits(p)),
            f"a first clean audit of {product}",
            flow,
        )
        injected = exchange.corrupt(product, kind).as_json()
        injected["at"] = time.time()
        report["corrupted"][product] = injected

    def repaired(product: str) -> bool:
        audits = tail.audits(product)
        drift = [i for i, a in enumerate(audits) if a["result"] == "drift"]
        return bool(drift) and any(a["result"] == "match" for a in audits[drift[0] :])

    wait(
        lambda: all(map(repaired, CORRUPTED)),
        "every corruption found and repaired",
        flow,
    )
    # (c) REST failures of every kind
    report["rest_errors_at"] = time.time()
    failed_before = sum(a["result"] == "failed" for a in tail.audits())
    for kind, count in REST_ERRORS:
        exchange.rest_errors(kind, count, hold=TIMEOUT_HOLD)
    wanted = failed_before + sum(count for _, count in REST_ERRORS)
    wait(
        lambda: sum(a["result"] == "failed" for a in tail.audits()) >= wanted,
        "every REST error seen by the audits",
        flow,
    )
    report["rest_errors_done"] = time.time()
    # (b) audits for at least AUDIT_SECONDS, then the final books
    wait(
        lambda: time.monotonic() - began >= AUDIT_SECONDS,
        f"{AUDIT_SECONDS} s of audits",
        flow,
        timeout=AUDIT_SECONDS + STEP_TIMEOUT,
    )
    report["audits_ended"] = time.time()
    exchange.pause_market()
    paused = time.time()
    true_books = {p: exchange.true_book(p) for p in PRODUCTS}
    report["true_books"] = {
        p: {"bids": top(bids, True), "asks": top(asks, False)}
        for p, (bids, asks) in true_books.items()
    }

    def final_depths() -> dict | None:
        # a depth record is due once a second of feed time passed, on the next change:
        # a marker (a restated best bid, the true book unchanged) is that change; the
        # exchange sends it for the first product of each connection only (the others
        # are judged by their audits once paused)
        exchange.send_malformed(kinds=["bad_timestamp"])
        depths = {}
        for r in tail.read():
            if r.get("type") == "depth" and _epoch(r["time"]) >= paused + 1.0:
                depths[r["product_id"]] = r
        return depths or None

    depths = wait(final_depths, "a depth record of a paused book", flow)
    report["final_depths"] = {
        p: {"bids": d["bids"], "asks": d["asks"]} for p, d in depths.items()
    }

    still = report["still"] = time.time()  # no marker from here on

    def audited_still() -> bool:
        return all(
            any(_epoch(a["requested"]) >= still for a in tail.audits(p))
            for p in PRODUCTS
        )

    wait(audited_still, "an audit of every paused book", flow)


def _counts(audits: list[dict]) -> dict[str, int]:
    return dict(Counter(f"{a['product_id']}/{a['result']}" for a in audits))


def _epoch(text: str | None) -> float:
    from datetime import datetime

    if text is None:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main(argv: list[str]) -> int:
    workdir = Path(argv[0])
    # SIGTERM (stop_background) unwinds: the flow and the exchange are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        report = run(workdir)
    except Exception as exc:  # the test reads why
        report = {"error": f"{type(exc).__name__}: {exc}"}
    (workdir / "report.json").write_text(json.dumps(report, default=_plain))
    return 0


def _plain(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# -- for tests/conftest.py: the run in the background of the session ---------------------


def start_background(workdir: Path):
    """Start the run as a process of its own (its output in ``WORKDIR/run.log``)."""
    import subprocess

    from tests.support.flow import REPO

    log = (workdir / "run.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.audit_run", str(workdir)],
        cwd=REPO,
        env=flow_env(PYTHONPATH=str(REPO)),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def report_of(proc, workdir: Path, timeout: float) -> dict:
    """Wait for the run (at most ``timeout`` s) and return its report."""
    import subprocess

    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_background(proc)
        log = (workdir / "run.log").read_text()[-3000:]
        raise AssertionError(f"the audit run took over {timeout} s:\n{log}") from None
    path = workdir / "report.json"
    if not path.exists():
        log = (workdir / "run.log").read_text()[-3000:]
        raise AssertionError(f"the audit run left no report:\n{log}")
    return json.loads(path.read_text())


def stop_background(proc) -> None:
    """End the run: SIGTERM first, so that it stops its flow and exchange itself,
    SIGKILL to its process group 30 s later (its flow dies with it then)."""
    import os
    import subprocess

    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
