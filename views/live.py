"""``ORDERBOOK_OUTPUT=live``: a full-screen table of every product, refreshed 4 times a
second (what it shows and when: see docs/views.md, "Live terminal view").

When its terminal is not one it falls back to text: one line per product and second.
The screen is restored (alternate screen left, cursor shown) when the run ends, and on
SIGINT/SIGTERM through the closer hook the composer passes in (``add_closer``: the
service's :meth:`service.runtime.Shutdown.add_closer`). Its terminal is the stream the
composer passes in too (the service's stdout kept for records).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from views.state import (
    AWAITING,
    BEHIND,
    CONNECTED,
    ENDED,
    REPLAY,
    RESYNCING,
    MarketBoard,
)

REFRESH_PER_SECOND = 4
TEXT_INTERVAL = 1.0
LADDER_LEVELS = 5
_RESTORE_SCREEN = b"\x1b[?1049l\x1b[?25h"
"""Leave the alternate screen, show the cursor: what a killed full-screen view owes."""

STATE_STYLE = {
    CONNECTED: "green",
    REPLAY: "cyan",
    ENDED: "dim",
    AWAITING: "yellow",
    RESYNCING: "bold yellow",
    BEHIND: "bold magenta",
}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _size(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _raw(row: dict, name: str) -> str:
    """A price or size as the record spelled it (exact), else the float."""
    raw = row.get("raw") or {}
    text = raw.get(name)
    return text if isinstance(text, str) else _fmt(row.get(name), 8)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.0f}m"


def _audit(row: dict) -> str:
    """The last audit's result and age (``match 12.0s``), ``-`` before any."""
    if row.get("audit") is None:
        return "-"
    return f"{row['audit']} {_age(row['audit_age'])}"


def text_line(row: dict) -> str:
    """The text fallback's line for one product."""
    audit = f"  audit {_audit(row)}" if row.get("audit") else ""
    if row["bid_price"] is None:
        return f"{row['product_id']}  {row['state']}  age {_age(row['age'])}{audit}"
    liq = ""
    if row["bid_liquidity_10bps"] is not None:
        liq = (
            f"  liq10bps {_fmt(row['bid_liquidity_10bps'], 4)}"
            f"/{_fmt(row['ask_liquidity_10bps'], 4)}"
        )
    wide = "  WIDE" if row["wide"] else ""
    return (
        f"{row['product_id']}  bid {_raw(row, 'bid_price')} x {_raw(row, 'bid_size')}"
        f"  ask {_raw(row, 'ask_price')} x {_raw(row, 'ask_size')}"
        f"  spread {row['spread_bps']:.4f} bps ({row['spread_pct']:.7f}%){wide}"
        f"  mid {_raw(row, 'mid')}  micro {_raw(row, 'microprice')}"
        f"  imb {_fmt(row['imbalance'], 3)}{liq}  {row['rate']:.1f} upd/s"
        f"  {row['state']}  age {_age(row['age'])}{audit}  [{row['feed']}]"
    )


class _LogTail(logging.Handler):
    """Keeps the last log lines for the screen while the full-screen view owns it."""

    def __init__(self, lines: int = 3) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record).replace("\n", " ")[:300])
        except Exception:  # logging must never break the view
            pass


Closer = Callable[[], None]


class LiveView:
    """The full-screen view (or the text fallback) of a :class:`MarketBoard`.

    ``stream``: the terminal (default ``sys.stdout``); ``add_closer``: registers a
    function to run before the process ends on a signal (the terminal restored)."""

    def __init__(
        self,
        board: MarketBoard,
        *,
        stream: TextIO | None = None,
        add_closer: Callable[[Closer], None] | None = None,
        refresh_per_second: float = REFRESH_PER_SECOND,
        force_terminal: bool | None = None,
    ) -> None:
        self.board = board
        self.stream = stream or sys.stdout
        self._add_closer = add_closer
        self.refresh_per_second = refresh_per_second
        is_tty = self.stream.isatty() if force_terminal is None else force_terminal
        self.full_screen = bool(is_tty)
        self._live = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._log_tail = _LogTail()
        self._moved_handlers: list[logging.Handler] = []
        self.started = False

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
            if self.full_screen:
                self._start_screen()
            else:
                self._thread = threading.Thread(
                    target=self._text_loop, name="live-view-text", daemon=True
                )
                self._thread.start()
        atexit.register(self.stop)
        if self._add_closer is not None:
            self._add_closer(self.restore_now)

    def _start_screen(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream, force_terminal=True)
        self._capture_logs()
        self._live = Live(
            console=console,
            screen=True,
            auto_refresh=True,
            refresh_per_second=self.refresh_per_second,
            redirect_stdout=False,
            redirect_stderr=False,
            get_renderable=self.render,
        )
        self._live.start()

    def stop(self) -> None:
        """End the view: the terminal gets its normal screen and cursor back."""
        with self._lock:
            if not self.started or self._stopping.is_set():
                return
            self._stopping.set()
            live = self._live
        if live is not None:
            try:
                live.stop()
                # the last state stays on the normal screen, above the shell prompt
                self.board.finished = True
                live.console.print(self._table(self.board.rows(depth_levels=0)))
            finally:
                self._release_logs()
        elif self._thread is not None:
            self._thread.join(timeout=2)
            self._print_text()  # the final state

    def restore_now(self) -> None:
        """For a signal handler about to ``os._exit``: restore the terminal, no locks."""
        if self._live is None or self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self.stream.flush()
        except Exception:
            pass
        try:
            os.write(self.stream.fileno(), _RESTORE_SCREEN)
        except Exception:
            pass
        self._release_logs()

    # -- logs while the screen is ours ------------------------------------------------
    def _capture_logs(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                root.removeHandler(handler)
                self._moved_handlers.append(handler)
        root.addHandler(self._log_tail)

    def _release_logs(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._log_tail)
        for handler in self._moved_handlers:
            root.addHandler(handler)
        self._moved_handlers = []
        for line in self._log_tail.lines:  # what was logged last stays visible
            try:
                sys.stderr.write(line + "\n")
            except Exception:
                pass
        self._log_tail.lines.clear()

    # -- text fallback ----------------------------------------------------------------
    def _text_loop(self) -> None:
        while not self._stopping.wait(TEXT_INTERVAL):
            self._print_text()

    def _print_text(self) -> None:
        rows = self.board.rows(depth_levels=0)
        try:
            self.stream.write("".join(text_line(r) + "\n" for r in rows))
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            self._stopping.set()

    # -- the screen -------------------------------------------------------------------
    def render(self):
        from rich.console import Group
        from rich.text import Text

        rows = self.board.rows(depth_levels=LADDER_LEVELS)
        feeds = ", ".join(sorted({r["feed"] for r in rows if r["feed"]})) or "-"
        parts = [
            Text.assemble(
                ("Order books", "bold"),
                f"  {len(rows)} products  feed: {feeds}  ",
                (
                    f"highlighted: spread > {self.board.threshold_pct:g}% of the ask",
                    "red",
                ),
                "  Ctrl-C quits",
            ),
            self._table(rows),
        ]
        ladders = [self._ladder(r) for r in rows if r["bids"] or r["asks"]]
        if ladders:
            from rich.columns import Columns

            parts.append(Columns(ladders, padding=(0, 2)))
        if self._log_tail.lines:
            parts.append(Text("\n".join(self._log_tail.lines), style="dim"))
        return Group(*parts)

    def _table(self, rows: list[dict]):
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(
            box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1)
        )
        for name in (
            "product",
            "bid size",
            "bid",
            "ask",
            "ask size",
            "spread bps",
            "spread %",
            "mid",
            "microprice",
            "imbal",
            "liq 10bps bid/ask",
            "upd/s",
            "feed state",
            "age",
            "audit",
        ):
            justify = "left" if name in ("product", "feed state") else "right"
            table.add_column(name, justify=justify, no_wrap=True)
        for r in rows:
            state = Text(
                r["state"], style="" if r["wide"] else STATE_STYLE.get(r["state"], "")
            )
            if r["bid_price"] is None:
                table.add_row(
                    r["product_id"],
                    *["-"] * 11,
                    state,
                    _age(r["age"]),
                    _audit(r),
                    style="dim",
                )
                continue
            liq = "-"
            if r["bid_liquidity_10bps"] is not None:
                liq = f"{_fmt(r['bid_liquidity_10bps'], 3)}/{_fmt(r['ask_liquidity_10bps'], 3)}"
            table.add_row(
                r["product_id"],
                _size(r["bid_size"]),
                Text(_raw(r, "bid_price"), style="" if r["wide"] else "green"),
                Text(_raw(r, "ask_price"), style="" if r["wide"] else "red"),
                _size(r["ask_size"]),
                f"{r['spread_bps']:.4f}",
                f"{r['spread_pct']:.6f}",
                _raw(r, "mid"),
                _fmt(r["microprice"], 3),
                _fmt(r["imbalance"], 3),
                liq,
                f"{r['rate']:.1f}",
                state,
                _age(r["age"]),
                Text(_audit(r), style="bold red" if r["audit"] == "drift" else ""),
                style="bold white on dark_red" if r["wide"] else None,
            )
        return table

    def _ladder(self, row: dict):
        from rich.table import Table

        ladder = Table(
            title=row["product_id"],
            title_justify="left",
            show_edge=False,
            header_style="dim",
            pad_edge=False,
        )
        for name in ("bid size", "bid", "ask", "ask size"):
            ladder.add_column(name, justify="right", no_wrap=True)
        bids, asks = row["bids"], row["asks"]
        for i in range(max(len(bids), len(asks))):
            bid = bids[i] if i < len(bids) else None
            ask = asks[i] if i < len(asks) else None
            ladder.add_row(
                f"{bid[1]:.4f}" if bid else "",
                f"[green]{bid[0]:,.2f}[/]" if bid else "",
                f"[red]{ask[0]:,.2f}[/]" if ask else "",
                f"{ask[1]:.4f}" if ask else "",
            )
        return ladder


# -- the sink: every worker of the process feeds one view -----------------------------

_shared: dict[str, object] = {}
_shared_lock = threading.Lock()


def shared_view(
    threshold_pct: float,
    products=(),
    stream: TextIO | None = None,
    add_closer: Callable[[Closer], None] | None = None,
) -> tuple[MarketBoard, LiveView]:
    """The process's one board and view (created on first use): one terminal."""
    with _shared_lock:
        if "view" not in _shared:
            board = MarketBoard(products, threshold_pct=threshold_pct)
            _shared["board"] = board
            _shared["view"] = LiveView(board, stream=stream, add_closer=add_closer)
            _shared["open"] = 0
        board, view = _shared["board"], _shared["view"]
        board.add_products(products)
        return board, view


class _LivePartition(StatelessSinkPartition):
    def __init__(self, board: MarketBoard, view: LiveView) -> None:
        self._board = board
        self._view = view

    def write_batch(self, items: list) -> None:
        if items:  # (received_ns, record) pairs
            self._board.update([record for _, record in items])

    def close(self) -> None:
        with _shared_lock:
            _shared["open"] = int(_shared.get("open", 1)) - 1
            last = _shared["open"] <= 0
        if last:
            self._view.stop()


class LiveSink(DynamicSink):
    """``(received_ns, record)`` pairs into the process's live view.

    ``terminal`` returns the stream to draw on, called when the view starts;
    ``add_closer``: see :class:`LiveView`."""

    def __init__(
        self,
        threshold_pct: float = 0.1,
        products=(),
        *,
        terminal: Callable[[], TextIO] = lambda: sys.stdout,
        add_closer: Callable[[Closer], None] | None = None,
    ) -> None:
        self.threshold_pct = float(threshold_pct)
        self.products = tuple(products)
        self.terminal = terminal
        self.add_closer = add_closer

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition:
        board, view = shared_view(
            self.threshold_pct, self.products, self.terminal(), self.add_closer
        )
        with _shared_lock:
            _shared["open"] = int(_shared.get("open", 0)) + 1
        view.start()
        return _LivePartition(board, view)
