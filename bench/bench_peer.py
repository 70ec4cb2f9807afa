"""Side by side with cryptofeed: the highest live rate kept up with and the CPU per message.

The peer: cryptofeed 3.0.1 with uvloop and the C ``order-book``, reading Coinbase Advanced
Trade ``level2``; its L2 book callback takes the top of the book and, when it changed,
writes one JSON line (lines of one event-loop turn go out in one write, as ours writes
a batch at once: the peer at its best, not a naive one). cryptofeed needs Python >= 3.13,
so it gets a virtual environment of its own (``~/.cache/orderbook-bench/cryptofeed-venv``,
made with ``uv`` from ``--python313`` and filled from PyPI on first use) and runs as a
process: a small consumer script that this bench writes to a temporary file. Offline,
its product list is set with ``Symbols.set`` before start (no REST call), and its
connections, which take only ``wss://`` addresses, are built for Coinbase's and then
pointed at the local exchange's ``ws://127.0.0.1:PORT/advanced-trade``; its log goes to
the temporary directory.

Ours: ``python -m bytewax.run dataflow:flow -w 1`` with ``ORDERBOOK_FEED=advanced-trade``,
``ORDERBOOK_SPREAD_THRESHOLD=0`` and ``ORDERBOOK_OUTPUT=jsonl:FILE``. Both write a line
per change of a product's top (never for a crossed or locked book), so both must write
exactly the lines the exchange's true tops say, and their last lines must equal the
exchange's final tops. One consumer process at a time, each alone with the exchange.

1. Highest rate kept up with, 4 products. The load is pre-generated (the local
   exchange's market model, 1,000 levels a side, 3 changes per update): a recording of
   Advanced Trade messages, one connection's worth (``sequence_num`` contiguous; both
   consumers carry 4 products on one connection), spaced evenly at 1,000 msg/s over all
   products, which ``python -m local_exchange --replay FILE --speed N`` (its own process)
   serves N times faster: the exchange only paces recorded text, so it is not the
   bottleneck (it keeps its schedule at 60,000 msg/s: ``bench_live_scale.py``). Each rate
   is ``LOAD_SECONDS`` of load on a fresh exchange. A consumer *keeps up* with a rate
   when every line arrives (at most ``DRAIN_GRACE_SECONDS`` after the load), ours never
   says it is behind, the lag's p99 is at most 250 ms, and the lag does not grow: the
   median lag of the load's last third exceeds that of its first third by at most
   ``GROWTH_BOUND``. The lag of a line: see :mod:`tests.support.paced_load`. The
   ladder: the first repeat walks up from ``FIRST_RATE`` in ``COARSE_STEP`` steps to the
   first miss, then probes halfway; later repeats walk in ``FINE_STEP`` steps from the
   consumer's previous figure (up while kept, down while missed). CPU per message at the
   figure: the consumer's CPU seconds (user + system, ``/proc``) from its first line to
   its last, over the messages served.
2. CPU per message at fixed loads: the local exchange's simulated market (in this
   process, on its own thread), 4 products x 200 batches/s and 50 products x 20
   batches/s; the consumer's CPU over ``FIXED_WINDOW`` s after a warm-up, over the
   messages the exchange sent in that window. Then the market is paused and each
   consumer's last line per product must equal the exchange's true top. cryptofeed puts
   every product on one connection (it cannot split Coinbase products over several),
   so the exchange's cap of 16 level2 products per connection is raised for it. Beside
   them, each repeat, ``Bytewax alone`` (:data:`FLOOR_FLOW`): a flow with ours' steps
   that does nothing, fed the same batches a second; its ratio to cryptofeed says how
   much of the target any Bytewax flow leaves for the work.

Three repeats per consumer, alternating (ours, then cryptofeed, then cryptofeed, then
ours, ...), and the medians; ``--quick`` runs one repeat of each, shorter (about 2
minutes; a full run about 10). The machine's 2 cores are shared with the exchange, this
bench and whatever else runs: figures are noisy, the load average is printed.

Targets (issue 21, one process): at least 1.5x cryptofeed's highest rate, at most 0.67x
its CPU per message.

    python bench/bench_peer.py [--quick] [--python313 PATH]

``--stages RATE`` instead shows where ours spends its time at RATE msg/s (CPU per thread,
and each Python step alone); ``--idle ROUNDS`` shows what an idle bare Bytewax flow costs
per ``next_awake`` policy (the bound Bytewax's 1-ms worker loop sets on a quiet service).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from process_stats import cpu_seconds  # noqa: E402

from coinbase.feeds import ADVANCED_TRADE, DEFAULT_PRODUCTS  # noqa: E402
from local_exchange.config import MAX_L2_STREAMS_DEFAULT  # noqa: E402
from local_exchange.market import Market  # noqa: E402
from local_exchange.protocol import iso_ns  # noqa: E402
from local_exchange.server import LocalExchange  # noqa: E402
from recording.writer import RecordingWriter  # noqa: E402
from tests.support.flow import wait_until  # noqa: E402
from tests.support.paced_load import (  # noqa: E402
    RECORDED_RATE,
    T0_NS,
    exited,
    jsonl_service_env,
    lag_stats,
    product_lags,
    replay_exchange,
    start,
    stop,
    tail,
    update_ns,
)

CRYPTOFEED = ("cryptofeed==3.0.1", "uvloop", "order-book")
VENV = Path.home() / ".cache" / "orderbook-bench" / "cryptofeed-venv"
PYTHON313 = Path.home() / ".pyenv" / "versions" / "3.13.0" / "bin" / "python"

PRODUCTS = list(DEFAULT_PRODUCTS)
"""The ladder's 4 products."""
DEPTH = 1_000
"""Levels per side of every book, replayed or simulated."""
CHANGES_PER_BATCH = 3
LAG_P99_BOUND = 0.250
GROWTH_BOUND = 0.050
"""Seconds the median lag may rise from the load's first third to its last: a consumer
at 98% of the rate piles up 2% x 5 s = 100 ms by the end, i.e. about 65 ms between the
thirds' medians; one short stall moves a p99, not a median."""
SETTLE_SECONDS = 0.5
"""The first half second of each load is left out of the lag figures: ours starts with a
transient (measured at 5,000 msg/s: lines due in the first 0.3 s up to 180 ms late, a
steady 2.5 ms after; cryptofeed's first 0.3 s up to 34 ms), a one-off that a live
service does not repeat, whereas the ladder asks for the rate it sustains."""
DRAIN_GRACE_SECONDS = 3.0
START_TIMEOUT = 60.0
FIXED_LOADS = ((4, 200.0), (50, 20.0))
FLOOR = "Bytewax alone"
"""The name of :func:`bytewax_floor`'s figures (a flow that does nothing)."""
"""(products, batches a second per product) of the fixed loads."""
WARM_UP_SECONDS = 1.0
TARGET_RATE = 1.5
TARGET_CPU = 0.67
BASES = ("BTC", "ETH", "SOL", "LTC", "ADA", "DOGE", "XRP", "DOT", "AVAX", "LINK")
QUOTES = ("USD", "EUR", "GBP", "USDT", "USDC", "BTC")


@dataclass(frozen=True)
class Mode:
    repeats: int
    load_seconds: float
    fixed_window: float
    first_rate: float
    coarse_step: float
    fine_step: float


FULL = Mode(3, 5.0, 8.0, 15_000, 5_000, 2_500)
QUICK = Mode(1, 3.0, 4.0, 20_000, 5_000, 2_500)


def product_list(n: int) -> list[str]:
    pairs = [f"{b}-{q}" for q in QUOTES for b in BASES if b != q]
    return pairs[:n]


# -- the peer ---------------------------------------------------------------------------

CONSUMER = r'''
"""cryptofeed 3.0.1 as a peer: Coinbase Advanced Trade level2 from the local exchange,
one JSON line per change of a product's top of book (written by bench/bench_peer.py)."""

import asyncio
import os
import sys

import msgspec
from cryptofeed import FeedHandler
from cryptofeed.defines import L2_BOOK
from cryptofeed.exchanges import Coinbase
from cryptofeed.symbols import Symbols

url, products, out_path, log_path = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
# offline: the product list is given, so the feed makes no REST call for it
Symbols.set(
    Coinbase.id,
    {p: p for p in products},
    {"tick_size": {}, "instrument_type": {p: "spot" for p in products}},
)


class LocalCoinbase(Coinbase):
    """Coinbase, its connections pointed at the local exchange: the connection class
    takes only wss:// addresses, so the address is swapped once they are built."""

    def connect(self):
        built = super().connect()
        for conn, _, _ in built:
            conn.address = url
        return built


fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
pending = []
last = {}
encode = msgspec.json.encode


def flush():
    data = b"".join(pending)
    pending.clear()
    while data:
        data = data[os.write(fd, data):]


async def on_book(book, receipt):
    """The top of the book; a line when it changed (never for a crossed or locked
    book), written with the others of the same loop turn in one write."""
    bids, asks = book.book.bids, book.book.asks
    if not len(bids) or not len(asks):
        last.pop(book.symbol, None)
        return
    bp, bs = bids.index(0)
    ap, az = asks.index(0)
    if bp >= ap:
        last.pop(book.symbol, None)
        return
    top = (bp, bs, ap, az)
    if last.get(book.symbol) == top:
        return
    last[book.symbol] = top
    if not pending:
        asyncio.get_running_loop().call_soon(flush)
    pending.append(encode({
        "product_id": book.symbol, "time": book.timestamp, "received": receipt,
        "bid_price": bp, "bid_size": bs, "ask_price": ap, "ask_size": az,
    }) + b"\n")


config = {"uvloop": True, "log": {"filename": log_path, "level": "WARNING"}}
handler = FeedHandler(config=config)
handler.add_feed(
    LocalCoinbase(symbols=products, channels=[L2_BOOK], callbacks={L2_BOOK: on_book})
)
handler.run()
'''


def cryptofeed_python(python313: Path) -> Path:
    """The peer's interpreter: its virtual environment, made and filled on first use."""
    python = VENV / "bin" / "python"
    check = "import importlib.metadata as m, uvloop, order_book; print(m.version('cryptofeed'))"
    if python.exists():
        found = subprocess.run([python, "-c", check], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == "3.0.1":
            return python
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("bench_peer: needs uv to make cryptofeed's environment")
    if not python313.exists():
        raise SystemExit(
            f"bench_peer: cryptofeed 3.0.1 needs Python >= 3.13; {python313} is missing "
            "(--python313 PATH)"
        )
    print(f"making cryptofeed's environment in {VENV} (once)", flush=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([uv, "venv", "-q", "-p", str(python313), str(VENV)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), *CRYPTOFEED], check=True
    )
    return python


@dataclass
class Consumer:
    name: str
    python: Path | None = None
    """cryptofeed's interpreter; None: ours."""
    script: Path | None = None

    def command(
        self, url: str, products: list[str], out: Path, tmp: Path
    ) -> tuple[list[str], dict[str, str] | None]:
        if self.python is None:
            env = jsonl_service_env(url, products, out, ORDERBOOK_FEED=ADVANCED_TRADE)
            return [
                sys.executable,
                "-m",
                "bytewax.run",
                "dataflow:flow",
                "-w",
                "1",
            ], env
        args = [url, ",".join(products), str(out), str(tmp / "cryptofeed.log")]
        return [str(self.python), str(self.script), *args], None


def event_seconds(record: dict) -> float:
    """A line's event time, seconds since the epoch: ours writes ISO text, the peer's
    callback cryptofeed's float."""
    t = record["time"]
    return t if isinstance(t, float) else datetime.fromisoformat(t).timestamp()


def top_of(record: dict) -> tuple[Decimal, ...]:
    return tuple(
        Decimal(str(record[k]))
        for k in ("bid_price", "bid_size", "ask_price", "ask_size")
    )


# -- the ladder's load -------------------------------------------------------------------


def _envelope(channel: str, seq: int, t_ns: int, events: str) -> str:
    return (
        f'{{"channel":"{channel}","client_id":"","timestamp":"{iso_ns(t_ns)}",'
        f'"sequence_num":{seq},"events":{events}}}'
    )


class Session:
    """One connection's Advanced Trade messages: the subscriptions reply, a snapshot per
    product, then updates round robin, ``sequence_num`` contiguous from 0; and the true
    top after every message (the market holds the true book)."""

    def __init__(self, products: list[str]) -> None:
        self.products = products
        self.market = Market(
            products, depth=DEPTH, changes_per_batch=CHANGES_PER_BATCH, seed=3
        )
        events = orjson.dumps([{"subscriptions": {"level2": products}}]).decode()
        self.head = [(products[0], _envelope("subscriptions", 0, T0_NS, events))]
        self.first_tops: dict[str, tuple] = {}
        for k, pid in enumerate(products, 1):
            bids, asks = self.market.snapshot(pid)
            levels = [("bid", p, s) for p, s in bids] + [
                ("offer", p, s) for p, s in asks
            ]
            self.head.append((pid, self._l2(k, T0_NS + k, "snapshot", pid, levels)))
            self.first_tops[pid] = self.market.top(pid)
        self.updates: list[tuple[str, str]] = []
        self.tops: list[tuple] = []
        self._files: dict[int, Path] = {}

    def _l2(self, seq: int, t_ns: int, kind: str, pid: str, levels) -> str:
        t = iso_ns(t_ns)
        updates = [
            {"side": s, "event_time": t, "price_level": p, "new_quantity": q}
            for s, p, q in levels
        ]
        events = [{"type": kind, "product_id": pid, "updates": updates}]
        return _envelope("l2_data", seq, t_ns, orjson.dumps(events).decode())

    def extend(self, messages: int) -> None:
        sides = {"bid": "bid", "ask": "offer"}
        for i in range(len(self.updates), messages):
            pid = self.products[i % len(self.products)]
            batch = [(sides[s], p, q) for s, p, q in self.market.next_batch(pid)]
            seq = len(self.head) + i
            self.updates.append(
                (pid, self._l2(seq, update_ns(i), "update", pid, batch))
            )
            self.tops.append(self.market.top(pid))

    def recording(self, messages: int, tmp: Path) -> Path:
        """The recording of the head and the first ``messages`` updates (made once)."""
        if messages not in self._files:
            self.extend(messages)
            path = tmp / f"load-{messages}.jsonl.gz"
            header = {
                "protocol": ADVANCED_TRADE,
                "feed": ADVANCED_TRADE,
                "url": "bench",
                "products": self.products,
                "started": "bench",
            }
            writer = RecordingWriter(path, header)
            for k, (pid, text) in enumerate(self.head):
                writer.frame(pid, text, T0_NS + k)  # distinct times: served in order
            for i, (pid, text) in enumerate(self.updates[:messages]):
                writer.frame(pid, text, update_ns(i))
            writer.close()
            self._files[messages] = path
        return self._files[messages]

    def expected(self, messages: int) -> tuple[dict[str, int], dict[str, tuple]]:
        """Lines per product a consumer writes for the first ``messages`` updates (a
        line per change of a valid top), and the final true tops."""
        last: dict[str, tuple | None] = {}
        lines = dict.fromkeys(self.products, 0)
        final = dict(self.first_tops)

        def see(pid: str, top: tuple) -> None:
            final[pid] = top
            if (
                top[0] >= top[2]
            ):  # crossed or locked: no line, and the next valid is new
                last[pid] = None
            elif top != last.get(pid):
                last[pid] = top
                lines[pid] += 1

        for pid in self.products:
            see(pid, self.first_tops[pid])
        for i in range(messages):
            see(self.products[i % len(self.products)], self.tops[i])
        return lines, final


# -- one run -----------------------------------------------------------------------------


@dataclass
class Step:
    consumer: str
    rate: float
    lines: int
    expected: int
    complete: bool
    tops_equal: bool
    behind: bool
    lag_p50: float
    lag_p99: float
    growth: float
    cpu_us: float
    cores: float
    exchange_cores: float

    @property
    def kept_up(self) -> bool:
        return (
            self.complete
            and not self.behind
            and self.lag_p99 <= LAG_P99_BOUND
            and self.growth <= GROWTH_BOUND
        )

    def verdict(self) -> str:
        if self.kept_up:
            return "keeps up"
        why = []
        if not self.complete:
            why.append(f"{self.lines:,} lines of {self.expected:,}")
        if self.behind:
            why.append("says behind")
        if self.lag_p99 > LAG_P99_BOUND:
            why.append(f"lag p99 > {LAG_P99_BOUND * 1000:.0f} ms")
        if self.growth > GROWTH_BOUND:
            why.append(f"lag grows {self.growth * 1000:.0f} ms")
        return "MISSED: " + ", ".join(why)


def run_step(
    consumer: Consumer, session: Session, rate: float, mode: Mode, tmp: Path
) -> Step:
    """``mode.load_seconds`` of the session at ``rate`` msg/s to ``consumer`` alone."""
    messages = round(rate * mode.load_seconds)
    recording = session.recording(messages, tmp)
    lines, final = session.expected(messages)
    speed = rate / RECORDED_RATE
    out = tmp / "out.jsonl"
    out.unlink(missing_ok=True)
    exchange, port = replay_exchange(recording, speed, tmp / "exchange.log")
    log = tmp / "consumer.log"
    procs = [exchange]
    cpu: dict[str, tuple[float, float, float]] = {}
    try:
        url = f"ws://127.0.0.1:{port}/advanced-trade"
        command, env = consumer.command(url, session.products, out, tmp)
        proc = start(command, log, env)
        procs.insert(0, proc)

        def mark(key: str) -> None:
            cpu[key] = (
                time.monotonic(),
                cpu_seconds(proc.pid),
                cpu_seconds(exchange.pid),
            )

        seen = tail(
            out,
            expected=sum(lines.values()),
            running=lambda: not exited(proc),
            start_timeout=START_TIMEOUT,
            after_first=mode.load_seconds + DRAIN_GRACE_SECONDS,
            on_first=lambda: mark("first"),
        )
        mark("last")
    except RuntimeError as exc:
        raise RuntimeError(
            f"{consumer.name}: {exc}\n{log.read_text()[-3000:]}"
        ) from None
    finally:
        stop(procs)
    records = seen.records(orjson.loads)
    got: dict[str, list[dict]] = {}
    for _, record in records:
        got.setdefault(record["product_id"], []).append(record)
    t0 = T0_NS / 1e9
    lag = lag_stats(
        product_lags(
            ((when, r["product_id"], event_seconds(r) - t0) for when, r in records),
            speed,
        ),
        settle=SETTLE_SECONDS,
    )
    (a_t, a_cpu, a_ex), (b_t, b_cpu, b_ex) = cpu["first"], cpu["last"]
    span = max(b_t - a_t, 1e-9)
    text = log.read_text()
    return Step(
        consumer=consumer.name,
        rate=rate,
        lines=seen.lines,
        expected=sum(lines.values()),
        complete=all(len(got.get(p, ())) == n for p, n in lines.items()),
        tops_equal=all(
            got.get(p) and top_of(got[p][-1]) == final[p] for p in session.products
        ),
        behind="behind" in text,
        lag_p50=lag.p50,
        lag_p99=lag.p99,
        growth=lag.growth,
        cpu_us=(b_cpu - a_cpu) / messages * 1e6,
        cores=(b_cpu - a_cpu) / span,
        exchange_cores=(b_ex - a_ex) / span,
    )


@dataclass
class Fixed:
    consumer: str
    products: int
    rate: float
    messages: int
    cpu_us: float
    cores: float
    tops_equal: bool


def run_fixed(consumer: Consumer, n: int, rate: float, mode: Mode, tmp: Path) -> Fixed:
    """The simulated market, ``n`` products x ``rate`` batches/s, to ``consumer`` alone."""
    products = product_list(n)
    exchange = LocalExchange(
        products,
        depth=DEPTH,
        rate=rate,
        changes_per_batch=CHANGES_PER_BATCH,
        seed=5,
        max_l2_streams=max(MAX_L2_STREAMS_DEFAULT, n),
    ).start()
    out = tmp / "out.jsonl"
    out.unlink(missing_ok=True)
    log = tmp / "consumer.log"
    proc = None
    try:
        command, env = consumer.command(
            exchange.url(ADVANCED_TRADE), products, out, tmp
        )
        proc = start(command, log, env)
        running = proc

        def last_lines() -> dict[str, dict]:
            if exited(running):
                raise RuntimeError(
                    f"{consumer.name} exited:\n{log.read_text()[-3000:]}"
                )
            last: dict[str, dict] = {}
            if out.exists():
                text = out.read_bytes()
                for line in text[: text.rfind(b"\n") + 1].splitlines():
                    record = orjson.loads(line)
                    last[record["product_id"]] = record
            return last

        wait_until(
            lambda: len(last_lines()) == n, START_TIMEOUT, f"{consumer.name}'s books"
        )
        time.sleep(WARM_UP_SECONDS)
        sent0 = exchange.stats["frames_sent"].get("l2_data", 0)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(mode.fixed_window)
        sent1 = exchange.stats["frames_sent"].get("l2_data", 0)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        exchange.pause_market()

        def equal() -> bool:
            last = last_lines()
            return all(
                p in last and top_of(last[p]) == exchange.true_top(p) for p in products
            )

        try:
            tops_equal = bool(wait_until(equal, 10.0, "the final tops"))
        except AssertionError:
            tops_equal = False
    finally:
        if proc is not None:
            stop([proc])
        exchange.stop()
    messages = sent1 - sent0
    return Fixed(
        consumer.name,
        n,
        rate,
        messages,
        (cpu1 - cpu0) / max(messages, 1) * 1e6,
        (cpu1 - cpu0) / (t1 - t0),
        tops_equal,
    )


# -- where ours spends its time (--stages) ------------------------------------------------

BARE_CLIENT = r"""
import asyncio, json, os, sys, time
from websockets.asyncio.client import connect

async def main(url, products, out):
    n = 0
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": "level2", "product_ids": products}))
        async for _ in ws:
            n += 1
            if n == 100:
                t = os.times()
                first = (time.monotonic(), t.user + t.system)
    t = os.times()
    with open(out, "w") as f:
        json.dump({"messages": n - 100, "cpu": t.user + t.system - first[1]}, f)

asyncio.run(main(sys.argv[1], sys.argv[2].split(","), sys.argv[3]))
"""
"""A bare websockets client on the default asyncio loop: what reading the frames alone
costs (the feed thread's floor with this WebSocket library)."""


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """``tid -> (Python thread or comm name, CPU seconds)`` of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        name = (
            "Bytewax worker (main thread)"
            if int(tid) == pid
            else f"thread {tid} (the feed's event loop when busy)"
        )
        out[int(tid)] = (
            name,
            (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        )
    return out


def live_threads(session: Session, rate: float, seconds: float, tmp: Path) -> None:
    """Ours alone at ``rate``: CPU per message of each thread, and of a bare client."""
    messages = round(rate * seconds)
    recording = session.recording(messages, tmp)
    lines, _ = session.expected(messages)
    for who in ("ours", "bare websockets client"):
        exchange, port = replay_exchange(
            recording, rate / RECORDED_RATE, tmp / "exchange.log"
        )
        url = f"ws://127.0.0.1:{port}/advanced-trade"
        out = tmp / "out.jsonl"
        out.unlink(missing_ok=True)
        procs = [exchange]
        try:
            if who == "ours":
                command, env = Consumer("ours").command(url, session.products, out, tmp)
                proc = start(command, tmp / "consumer.log", env)
                procs.insert(0, proc)
                before: dict = {}
                tail(
                    out,
                    expected=sum(lines.values()),
                    running=lambda proc=proc: not exited(proc),
                    start_timeout=START_TIMEOUT,
                    after_first=seconds + DRAIN_GRACE_SECONDS,
                    on_first=lambda proc=proc, b=before: b.update(thread_cpu(proc.pid)),
                )
                after = thread_cpu(proc.pid)
                total = 0.0
                for tid, (name, cpu) in sorted(after.items()):
                    used = cpu - before.get(tid, (name, 0.0))[1]
                    total += used
                    if used >= 0.02:
                        print(f"  ours, {name}: {used / messages * 1e6:5.1f} us/msg")
                print(f"  ours, whole process: {total / messages * 1e6:5.1f} us/msg")
            else:
                result = tmp / "bare.json"
                proc = start(
                    [sys.executable, "-c", BARE_CLIENT, url, ",".join(session.products)]
                    + [str(result)],
                    tmp / "bare.log",
                )
                procs.insert(0, proc)
                proc.wait(timeout=START_TIMEOUT + seconds * 3)
                got = orjson.loads(result.read_bytes())
                print(
                    f"  bare websockets client (asyncio, no decoding): "
                    f"{got['cpu'] / got['messages'] * 1e6:5.1f} us/msg"
                )
        finally:
            stop(procs)


def in_process_stages(session: Session, messages: int) -> None:
    """Each Python step of ours on the session's frames, timed alone (CPU time, the
    best of 5)."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from book_step import SpreadFilter, update_book
    from coinbase.multiplex import ConnectionSession
    from coinbase.session import Session as ProductSession
    from service.outputs.streams import format_jsonl
    from service.placement import RouteByProduct

    session.extend(messages)
    frames = [t for _, t in session.head] + [t for _, t in session.updates[:messages]]
    products = session.products

    def best(run) -> float:
        times = []
        for _ in range(5):
            t = time.process_time_ns()
            run()
            times.append(time.process_time_ns() - t)
        return min(times) / messages / 1000

    def receive() -> list:
        """A fresh connection's session (its decoder's price cache filling as live)."""
        conn = ConnectionSession(ADVANCED_TRADE, name="bench")
        for p in products:
            conn.add(ProductSession(p, ADVANCED_TRADE))
        conn.connect()
        items = []
        for text in frames:
            for pid, events in conn.receive(text, 1).events:
                items.extend([(pid, e) for e in events])
        return items

    items = receive()
    route = RouteByProduct(products)
    keyed = [route(i) for i in items]
    states: dict = {}
    books = []
    for k, e in keyed:
        states[k], summary = update_book(states.get(k), e)
        books.append((k, summary))
    spread = SpreadFilter(Decimal(0), depth=False)
    kept = [x for x in map(spread, books) if x is not None]

    def book_step() -> None:
        states: dict = {}
        for k, e in keyed:
            states[k], _ = update_book(states.get(k), e)

    sink = tempfile.TemporaryFile()
    line = b"x" * 300
    rows = [
        (
            "decode + session rules (coinbase.multiplex, the feed's loop)",
            lambda: receive(),
        ),
        ("route step (RouteByProduct)", lambda: [route(i) for i in items]),
        ("book step (update_book: apply, top, summary)", book_step),
        ("spread filter", lambda: [spread(b) for b in books]),
        ("output: jsonl text of each summary", lambda: [format_jsonl(x) for x in kept]),
        (
            "output: one write (300 bytes, a file) per summary",
            lambda: [os.write(sink.fileno(), line) for _ in kept],
        ),
    ]
    for label, run in rows:
        print(f"  {label}: {best(run):5.2f} us/msg")
    print(f"  ({len(kept):,} summaries for {messages:,} messages)")

    class Null(TestingSink):
        def __init__(self) -> None:
            super().__init__([])

    for batch in (1, 16):
        flow = Dataflow("bare")
        stream = op.input("in", flow, TestingSource(keyed, batch_size=batch))
        stream = op.map("route", stream, lambda x: x)
        stream = op.stateful_map("book", stream, lambda s, x: (s, x))
        stream = op.filter_map("filter", stream, lambda x: None)
        op.output("out", stream, Null())
        t = time.process_time_ns()
        run_main(flow)
        cost = (time.process_time_ns() - t) / messages / 1000
        print(
            f"  Bytewax alone, input + map + stateful_map + filter_map, {batch} item(s) "
            f"per poll: {cost:5.2f} us/msg"
        )


_BARE_PLUMBING = r"""
class Source(FixedPartitionedSource):
    def list_parts(self):
        return ["0"]
    def build_part(self, step_id, key, resume):
        return Part()

class Null(StatelessSinkPartition):
    def write_batch(self, items):
        pass

class Sink(DynamicSink):
    def build(self, *args):
        return Null()
"""
"""The bare flows' source of one partition (their ``Part``) and a sink that keeps
nothing."""

IDLE_FLOW = r"""
import json, os, re, sys, threading, time
from datetime import datetime, timedelta, timezone
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

AFTER = None if sys.argv[1] == "none" else timedelta(milliseconds=float(sys.argv[1]))
WARM, WINDOW = float(sys.argv[2]), float(sys.argv[3])
polls = [0]

class Part(StatefulSourcePartition):
    def next_batch(self):
        polls[0] += 1
        return []
    def next_awake(self):
        return None if AFTER is None else datetime.now(timezone.utc) + AFTER
    def snapshot(self):
        return None

# ONE PARTITION, NO OUTPUT

def wakeups():
    text = open(f"/proc/self/task/{threading.main_thread().native_id}/status").read()
    return int(re.search(r"\nvoluntary_ctxt_switches:\s+(\d+)", text).group(1))

def measure():
    time.sleep(WARM)
    t0, c0, p0, w0 = time.monotonic(), time.process_time(), polls[0], wakeups()
    time.sleep(WINDOW)
    t1, c1, p1, w1 = time.monotonic(), time.process_time(), polls[0], wakeups()
    span = t1 - t0
    print(json.dumps({"cores": (c1 - c0) / span, "polls": (p1 - p0) / span,
                      "wakeups": (w1 - w0) / span}), flush=True)
    os._exit(0)

flow = Dataflow("idle")
op.output("out", op.input("in", flow, Source()), Sink())
threading.Thread(target=measure, daemon=True).start()
cli_main(flow, workers_per_process=1)
""".replace("# ONE PARTITION, NO OUTPUT\n", _BARE_PLUMBING)
"""A bare Bytewax flow, one worker, one partition that never has data, and whose
``next_awake`` returns ``sys.argv[1]`` (``none``, or milliseconds from now): its CPU,
polls and the worker thread's wake-ups (voluntary context switches) a second."""

IDLE_AWAKES = ("none", "1", "10", "100")

FLOOR_FLOW = r"""
import json, os, sys, threading, time
from datetime import datetime, timedelta, timezone
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

N, RATE = int(sys.argv[1]), float(sys.argv[2])
WARM, WINDOW = float(sys.argv[3]), float(sys.argv[4])
KEYS = [str(k) for k in range(N)]
START = time.monotonic()
sent = [0] * N
total = [0]

class Part(StatefulSourcePartition):
    def next_batch(self):
        elapsed = time.monotonic() - START
        batch = []
        for k in range(N):  # each product's batches on a phase of its own
            due = int(elapsed * RATE + k / N)
            if due > sent[k]:
                batch.append((KEYS[k], [due - sent[k]]))
                total[0] += due - sent[k]
                sent[k] = due
        return batch
    def next_awake(self):
        return datetime.now(timezone.utc) + timedelta(milliseconds=1)
    def snapshot(self):
        return None

# ONE PARTITION, NO OUTPUT

def measure():
    time.sleep(WARM)
    t0, c0, m0 = time.monotonic(), time.process_time(), total[0]
    time.sleep(WINDOW)
    t1, c1, m1 = time.monotonic(), time.process_time(), total[0]
    print(json.dumps({"cores": (c1 - c0) / (t1 - t0),
                      "us": (c1 - c0) / max(m1 - m0, 1) * 1e6}), flush=True)
    os._exit(0)

flow = Dataflow("floor")
books = op.stateful_map("book", op.input("in", flow, Source()), lambda s, v: (None, v))
op.output("out", op.flat_map("keep", books, lambda kv: kv[1]), Sink())
threading.Thread(target=measure, daemon=True).start()
cli_main(flow, workers_per_process=1)
""".replace("# ONE PARTITION, NO OUTPUT\n", _BARE_PLUMBING)
"""Bytewax's own floor at a fixed load: one worker, the one partition any source needs,
polled every millisecond, handing over an item per product with batches due, through
the steps ours has (``stateful_map``, ``flat_map``, output) doing nothing.
``sys.argv``: products, batches a second per product, warm-up and window seconds."""


def bytewax_floor(n: int, rate: float, mode: Mode) -> Fixed:
    """CPU per message of :data:`FLOOR_FLOW` at ``n`` products x ``rate`` batches/s."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            FLOOR_FLOW,
            str(n),
            str(rate),
            str(WARM_UP_SECONDS),
            str(mode.fixed_window),
        ],
        capture_output=True,
        text=True,
        timeout=WARM_UP_SECONDS + mode.fixed_window + 60,
        cwd=ROOT,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"the bare flow failed:\n{done.stderr[-2000:]}")
    got = orjson.loads(lines[-1])
    messages = round(n * rate * mode.fixed_window)
    return Fixed(FLOOR, n, rate, messages, got["us"], got["cores"], True)


def idle(rounds: int, warm: float = 2.0, window: float = 6.0) -> None:
    """Does a later ``next_awake`` let an idle Bytewax worker sleep? (See
    docs/performance.md: it does not; the worker steps at least every millisecond.)"""
    print(
        f"a bare Bytewax flow (one worker, one empty partition), {window:g} s after "
        f"{warm:g} s, per next_awake; {rounds} alternating round(s):"
    )
    for r in range(rounds):
        for awake in IDLE_AWAKES if r % 2 == 0 else IDLE_AWAKES[::-1]:
            done = subprocess.run(
                [sys.executable, "-c", IDLE_FLOW, awake, str(warm), str(window)],
                capture_output=True,
                text=True,
                timeout=warm + window + 60,
                cwd=ROOT,
            )
            lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
            if not lines:
                raise RuntimeError(f"idle flow failed:\n{done.stderr[-2000:]}")
            got = orjson.loads(lines[-1])
            when = "None" if awake == "none" else f"now + {awake} ms"
            print(
                f"  next_awake {when:>14}: {got['cores']:.4f} of a core, "
                f"{got['polls']:5.0f} polls/s, worker wake-ups {got['wakeups']:5.0f}/s"
            )


def stages(rate: float, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp_dir:
        tmp = Path(tmp_dir)
        session = Session(PRODUCTS)
        print(
            f"ours alone at {rate:,.0f} msg/s for {seconds:g} s, CPU per thread (/proc):"
        )
        live_threads(session, rate, seconds, tmp)
        print("in process, each step alone:")
        in_process_stages(session, 60_000)


# -- the comparison ----------------------------------------------------------------------


def ladder(
    measure, start_rate: float, step: float, probe: float | None = None
) -> float:
    """Walk from ``start_rate`` in ``step`` steps: up while kept up with, else down until
    kept; then, if ``probe``, one rate ``probe`` above the highest kept (below the first
    missed). The highest rate kept up with (0 if none)."""
    rate = start_rate
    if measure(rate):
        best = rate
        while measure(rate + step):
            rate += step
            best = rate
    else:
        best = 0.0
        while rate - step > 0:
            rate -= step
            if measure(rate):
                best = rate
                break
    if probe and best and measure(best + probe):
        best += probe
    return best


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass
class Results:
    """Everything measured, per consumer name."""

    best: dict[str, list[float]] = field(default_factory=dict)
    cpu_at_best: dict[str, list[float]] = field(default_factory=dict)
    fixed: dict[tuple[int, float], dict[str, list[Fixed]]] = field(default_factory=dict)
    tops: dict[str, list[bool]] = field(default_factory=dict)


def ladders(
    consumers: list[Consumer], session: Session, mode: Mode, tmp: Path, res: Results
) -> None:
    """Each consumer's ladder, ``mode.repeats`` times, the order alternating."""
    for r in range(mode.repeats):
        for consumer in consumers if r % 2 == 0 else consumers[::-1]:
            name = consumer.name
            steps: dict[float, Step] = {}

            def measure(rate: float, consumer=consumer, steps=steps, r=r) -> bool:
                step = run_step(consumer, session, rate, mode, tmp)
                steps[rate] = step
                if step.kept_up:  # a missed run may stop before the last message
                    res.tops.setdefault(consumer.name, []).append(step.tops_equal)
                print(
                    f"  [{r + 1}] {consumer.name:<10} {rate:7,.0f} msg/s  lag p50 "
                    f"{step.lag_p50 * 1000:6.1f} p99 {step.lag_p99 * 1000:6.1f} ms "
                    f"growth {step.growth * 1000:+6.1f} ms  {step.cpu_us:5.1f} us/msg "
                    f"({step.cores:.2f} cores, exchange {step.exchange_cores:.2f})  "
                    f"tops {'equal' if step.tops_equal else 'DIFFER'}  {step.verdict()}",
                    flush=True,
                )
                return step.kept_up

            previous = res.best.setdefault(name, [])
            if previous:  # from the last figure, in fine steps
                found = ladder(measure, previous[-1] or mode.fine_step, mode.fine_step)
            else:
                found = ladder(
                    measure, mode.first_rate, mode.coarse_step, mode.fine_step
                )
            previous.append(found)
            if found:
                res.cpu_at_best.setdefault(name, []).append(steps[found].cpu_us)


def fixed_loads(consumers: list[Consumer], mode: Mode, tmp: Path, res: Results) -> None:
    for n, rate in FIXED_LOADS:
        runs = res.fixed.setdefault((n, rate), {})
        for r in range(mode.repeats):
            for consumer in consumers if r % 2 == 0 else consumers[::-1]:
                run = run_fixed(consumer, n, rate, mode, tmp)
                runs.setdefault(consumer.name, []).append(run)
                res.tops.setdefault(consumer.name, []).append(run.tops_equal)
                print(
                    f"  [{r + 1}] {consumer.name:<10} {n} products x {rate:g}/s: "
                    f"{run.messages / mode.fixed_window:7,.0f} msg/s  "
                    f"{run.cpu_us:6.1f} us/msg ({run.cores:.2f} cores)  final tops "
                    f"{'equal' if run.tops_equal else 'DIFFER'}",
                    flush=True,
                )
            floor = bytewax_floor(n, rate, mode)
            runs.setdefault(FLOOR, []).append(floor)
            print(
                f"  [{r + 1}] {FLOOR} {n} products x {rate:g}/s: "
                f"{floor.cpu_us:6.1f} us/msg ({floor.cores:.3f} cores)",
                flush=True,
            )


def summary(res: Results) -> None:
    print("summary (medians; ours beside cryptofeed measured in the same run):")
    mine, theirs = res.best.get("ours", []), res.best.get("cryptofeed", [])
    a, b = _median(mine), _median(theirs)
    ratio = a / b if b else float("nan")
    print(
        f"  highest rate kept up with, {len(PRODUCTS)} products: ours {a:,.0f} msg/s "
        f"{[round(x) for x in mine]}, cryptofeed {b:,.0f} {[round(x) for x in theirs]}"
        f": {ratio:.2f}x  target >= {TARGET_RATE}x  {_verdict(ratio >= TARGET_RATE)}"
    )
    rows = [
        (
            "CPU per message at that rate",
            res.cpu_at_best.get("ours", []),
            res.cpu_at_best.get("cryptofeed", []),
        )
    ]
    for (n, rate), runs in res.fixed.items():
        rows.append(
            (
                f"CPU per message, {n} products x {rate:g} batches/s",
                [f.cpu_us for f in runs.get("ours", [])],
                [f.cpu_us for f in runs.get("cryptofeed", [])],
            )
        )
    for label, mine_us, theirs_us in rows:
        a, b = _median(mine_us), _median(theirs_us)
        ratio = a / b if b else float("nan")
        each = f"[{', '.join(f'{x:.0f}' for x in mine_us)}] vs [{', '.join(f'{x:.0f}' for x in theirs_us)}]"
        print(
            f"  {label}: ours {a:.1f} us, cryptofeed {b:.1f} us {each}: {ratio:.2f}x  "
            f"target <= {TARGET_CPU}x  {_verdict(ratio <= TARGET_CPU)}"
        )
    for (n, rate), runs in res.fixed.items():
        if runs.get(FLOOR) and runs.get("cryptofeed"):
            floor = _median([f.cpu_us for f in runs[FLOOR]])
            theirs = _median([f.cpu_us for f in runs["cryptofeed"]])
            share = floor / theirs
            print(
                f"  {FLOOR.strip()} at {n} products x {rate:g} batches/s: {floor:.1f} "
                f"us, {share:.2f}x cryptofeed's: "
                + (
                    f"the {TARGET_CPU}x target lies below this floor"
                    if share > TARGET_CPU
                    else f"{TARGET_CPU * theirs - floor:.1f} us left for the work"
                )
            )
    for name, results in res.tops.items():
        print(
            f"  final tops equal to the exchange's: {name} in {sum(results)} of "
            f"{len(results)} runs kept up with"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one repeat, shorter loads"
    )
    parser.add_argument("--python313", type=Path, default=PYTHON313)
    parser.add_argument(
        "--stages",
        type=float,
        metavar="RATE",
        help="instead: where ours spends its time at RATE msg/s (see docs/performance.md)",
    )
    parser.add_argument(
        "--idle",
        type=int,
        metavar="ROUNDS",
        help="instead: an idle bare Bytewax flow's CPU and wake-ups per next_awake",
    )
    args = parser.parse_args()
    if args.idle:
        idle(args.idle)
        return 0
    if args.stages:
        stages(args.stages, 10.0)
        return 0
    mode = QUICK if args.quick else FULL
    began = time.monotonic()
    peer_python = cryptofeed_python(args.python313)
    res = Results()
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp_dir:
        tmp = Path(tmp_dir)
        script = tmp / "cryptofeed_consumer.py"
        script.write_text(CONSUMER)
        consumers = [Consumer("ours"), Consumer("cryptofeed", peer_python, script)]
        print(
            f"ours: python -m bytewax.run dataflow:flow -w 1 (ORDERBOOK_FEED=advanced-trade, "
            f"threshold 0, jsonl to a file); peer: cryptofeed 3.0.1 + uvloop + order-book "
            f"(Python 3.13, {VENV}), a line per top change. Both read Advanced Trade "
            f"level2 from the local exchange, one consumer process at a time; "
            f"{mode.repeats} alternating repeat(s)."
        )
        print(
            f"1. highest rate kept up with, {len(PRODUCTS)} products on one connection: "
            f"a pre-generated recording ({DEPTH:,} levels a side, {CHANGES_PER_BATCH} "
            f"changes per update) replayed by python -m local_exchange --speed, "
            f"{mode.load_seconds:g} s per rate; keeps up = every line, lag p99 <= "
            f"{LAG_P99_BOUND * 1000:.0f} ms, median lag growth first->last third <= "
            f"{GROWTH_BOUND * 1000:.0f} ms (the first {SETTLE_SECONDS:g} s left out)",
            flush=True,
        )
        ladders(consumers, Session(PRODUCTS), mode, tmp, res)
        cap = max(n for n, _ in FIXED_LOADS)
        print(
            f"2. CPU per message at fixed loads: the local exchange's simulated market "
            f"(in this process), {mode.fixed_window:g} s after a {WARM_UP_SECONDS:g}-s "
            f"warm-up. NOTE: its cap of {MAX_L2_STREAMS_DEFAULT} level2 products per "
            f"connection is raised to {cap} for cryptofeed, which carries every product "
            f"on one connection (ours: {MAX_L2_STREAMS_DEFAULT} a connection at most)",
            flush=True,
        )
        fixed_loads(consumers, mode, tmp, res)
    summary(res)
    print(
        f"  ({os.cpu_count()} cores shared with the exchange, this bench and other work; "
        f"load average at the end {os.getloadavg()[0]:.1f}; "
        f"{(time.monotonic() - began) / 60:.1f} min)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
