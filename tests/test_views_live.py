"""ORDERBOOK_OUTPUT=live in a real terminal (tmux) on the sim feed, and without one."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_exchange.server import LocalExchange
from tests.support.flow import REPO, FlowProcess, flow_env, wait_until
from tests.support.recovery import saved_book_states, state_product

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]
ROW = re.compile(
    r"^\W*(BTC-USD|ETH-USD|BTC-EUR|ETH-EUR)\s*\W\s*([\d.]+)\s*\W\s*([\d.]+)"
)

pytestmark = pytest.mark.slow


class Tmux:
    """A private tmux server (its own socket) running one command in a 200x50 pane."""

    def __init__(self, tmp_path: Path, command: str, **settings: str) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed (apt-get install -y tmux)")
        self.socket = str(tmp_path / "tmux.sock")
        script = tmp_path / "run.sh"
        env = flow_env(
            **{"ORDERBOOK_FEED": "sim", "ORDERBOOK_OUTPUT": "live", **settings}
        )
        exports = "".join(
            f"export {k}={shlex.quote(v)}\n"
            for k, v in env.items()
            if k.startswith(("ORDERBOOK_", "PYTHON", "PATH", "HOME", "LANG", "LC_"))
        )
        script.write_text(
            f"{exports}export TERM=xterm-256color\nunset COLUMNS LINES\n"
            # the shell outlives Ctrl-C (which goes to the whole foreground group)
            f"trap true INT\ncd {shlex.quote(str(REPO))}\n"
            f"{command}\necho EXITED $?\nsleep 120\n"
        )
        self.tmux("new-session", "-d", "-x", "200", "-y", "50", f"sh {script}")

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, f"tmux {args}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def flags(self) -> str:
        return self.tmux("display", "-p", "#{alternate_on} #{cursor_flag}").strip()

    def wait(self, condition, timeout: float, what: str):
        try:
            return wait_until(condition, timeout, what, poll=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; screen:\n{self.screen()}") from None

    def python_pid(self) -> int:
        shell = int(self.tmux("display", "-p", "#{pane_pid}").strip())
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        return int(children[0])

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


def _rows(screen: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in screen.splitlines():
        match = ROW.match(line)
        if match and match.group(1) not in rows:  # the table comes before the ladders
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_live_view_shows_every_product_changing_and_restores_the_terminal(
    tmp_path, stop
):
    tmux = Tmux(tmp_path, f"{shlex.quote(sys.executable)} -m bytewax.run dataflow:flow")
    try:
        seen: dict[str, set] = {p: set() for p in PRODUCTS}

        def every_product_changed() -> bool:
            assert "EXITED" not in (screen := tmux.screen()), screen
            for product, prices in _rows(screen).items():
                seen[product].add(prices)
            return all(len(prices) >= 2 for prices in seen.values()) and screen

        screen = tmux.wait(
            every_product_changed, 60, "every product's prices to change"
        )
        assert tmux.flags() == "1 0"  # alternate screen, cursor hidden
        assert "connected" in screen and "liq 10bps" in screen
        assert screen.count("bid size") == 1 + len(PRODUCTS)  # table, then ladders
        if stop == "ctrl-c":
            tmux.tmux("send-keys", "C-c")
        else:
            os.kill(tmux.python_pid(), signal.SIGTERM)
        tmux.wait(lambda: "EXITED 0" in tmux.screen(), 30, "the view to exit")
        assert tmux.flags() == "0 1"  # normal screen, cursor visible
        assert "received, stopping" in tmux.screen()
    finally:
        tmux.close()


def test_live_view_falls_back_to_text_lines_without_a_terminal(tmp_path):
    flow = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(ORDERBOOK_FEED="sim", ORDERBOOK_OUTPUT="live"),
    )
    lines: list[str] = []
    try:

        def every_product_twice() -> bool:
            line = flow.proc.stdout.readline()
            if line:
                lines.append(line)
            firsts = [ln.split()[0] for ln in lines if " bid " in ln]
            return all(firsts.count(p) >= 2 for p in PRODUCTS)

        flow.wait_for(every_product_twice, 60, "two text lines per product")
    finally:
        assert flow.stop(signal.SIGTERM) == 0
    text = "".join(lines)
    assert "\x1b[" not in text  # no escape sequences in a pipe
    assert re.search(r"BTC-USD  bid [\d.]+ x [\d.]+  ask [\d.]+ x [\d.]+  spread", text)
    assert "connected" in text and "[sim]" in text


AWAITING_ROW = re.compile(
    r"^\W*(BTC-USD|ETH-USD|BTC-EUR|ETH-EUR)(\s+-){11}\s+awaiting snapshot\b", re.M
)
SILENCE = 60.0
"""Seconds the exchange sends nothing after the restart at most: the books await
snapshots until the test saw them awaiting and ends the silence (it waited out a fixed
8 s before; the view's restart takes 1-3 s of it)."""


def test_live_view_shows_a_restart_with_every_book_awaiting_its_snapshot(tmp_path):
    """A run with ``-r`` recovery stops and starts again while the exchange withholds
    every snapshot: the restarted view lists every product as "awaiting snapshot",
    with no prices (nothing of the run before is shown as live), and its log lines say
    the run resumed; once the snapshots come every product has prices again. The view
    needed no change for this (a restarted process starts with an empty board); this
    test holds it."""
    db = tmp_path / "recovery"
    db.mkdir()
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(db), "1"], check=True, cwd=REPO
    )
    go = tmp_path / "go"
    run = (
        f"{shlex.quote(sys.executable)} -m bytewax.run dataflow:flow "
        f"-r {shlex.quote(str(db))} -s 1 -b 0"
    )
    # the second run starts only once the test has silenced the exchange
    command = (
        f"{run}; echo FIRST $?; "
        f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.1; done; {run}"
    )
    with LocalExchange(PRODUCTS, depth=50, rate=20, seed=5) as exchange:
        tmux = Tmux(
            tmp_path,
            command,
            ORDERBOOK_FEED="exchange",
            ORDERBOOK_WS_URL=exchange.url(),
            ORDERBOOK_PRODUCTS=",".join(PRODUCTS),
        )
        try:
            tmux.wait(
                lambda: set(_rows(tmux.screen())) == set(PRODUCTS),
                60,
                "every product's prices",
            )
            tmux.wait(
                lambda: (
                    {state_product(k) for k in saved_book_states(db)} >= set(PRODUCTS)
                ),
                30,
                "a committed recovery snapshot of every book",
            )
            tmux.tmux("send-keys", "C-c")
            tmux.wait(lambda: "FIRST 0" in tmux.screen(), 30, "the first run's end")
            exchange.go_silent(SILENCE)
            silent_until = time.monotonic() + SILENCE
            go.touch()

            def every_book_awaiting() -> bool:
                screen = tmux.screen()
                assert "EXITED" not in screen, screen
                awaiting = {m.group(1) for m in AWAITING_ROW.finditer(screen)}
                return awaiting == set(PRODUCTS) and screen

            screen = tmux.wait(every_book_awaiting, SILENCE, "every book awaiting")
            assert time.monotonic() < silent_until, "the view started too slowly"
            assert _rows(screen) == {}  # no prices of the run before
            tmux.wait(
                lambda: (
                    "resuming from recovery state" in tmux.screen()
                    or "book reset (resume)" in tmux.screen()
                ),
                SILENCE,
                "the log lines of the resume",
            )
            exchange.end_silence()
            tmux.wait(
                lambda: set(_rows(tmux.screen())) == set(PRODUCTS),
                60,
                "every product's prices again",
            )
            assert "connected" in tmux.screen()
        finally:
            tmux.close()
