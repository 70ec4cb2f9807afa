"""Remake the pictures of README.md and docs/views.md from ``samples/sample.jsonl.gz``.

``python docs/make_screenshots.py``.

The sample is served at its original pace by the local exchange; the dataflow reads it
with the live view (in a 160x40 tmux pane, captured with its colours and drawn by
headless Chromium) and with the dashboard (a headless Chromium screenshot); the plot is
``python -m views.plot`` of the sample replayed to JSON lines. Needs tmux and chromium.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

DOCS = REPO / "docs"
SAMPLE = REPO / "samples" / "sample.jsonl.gz"


def _wait_for(path: Path, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (m := re.search(pattern, path.read_text())):
            return m.group(1)
        time.sleep(0.1)
    raise SystemExit(f"{pattern!r} never appeared in {path}")


def _small_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)


def main() -> int:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp())
    env_base = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONUNBUFFERED": "1"}
    import os

    env_base["PATH"] = os.environ["PATH"]
    exchange_log = work / "exchange.log"
    exchange = subprocess.Popen(
        [sys.executable, "-m", "local_exchange", "--port", "0"]
        + ["--replay", str(SAMPLE), "--speed", "1"],
        cwd=REPO,
        stdout=exchange_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    flows = []
    socket = str(work / "tmux.sock")
    try:
        url = _wait_for(exchange_log, r"(ws://127\.0\.0\.1:\d+/)")
        # the live view, in a terminal
        script = work / "live.sh"
        script.write_text(
            f"export PATH={shlex.quote(env_base['PATH'])} TERM=xterm-256color\n"
            "unset COLUMNS LINES\n"
            f"cd {shlex.quote(str(REPO))}\n"
            f"ORDERBOOK_WS_URL={url} ORDERBOOK_OUTPUT=live ORDERBOOK_SPREAD_THRESHOLD=0.0005 "
            f"{shlex.quote(sys.executable)} -m bytewax.run dataflow:flow\nsleep 60\n"
        )
        subprocess.run(
            ["tmux", "-S", socket, "new-session", "-d", "-x", "160", "-y", "34"]
            + [f"sh {script}"],
            check=True,
        )
        # the dashboard
        dash_log = work / "dashboard.log"
        flows.append(
            subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
                cwd=REPO,
                env={
                    **env_base,
                    "ORDERBOOK_WS_URL": url,
                    "ORDERBOOK_DASHBOARD": "127.0.0.1:0",
                    "ORDERBOOK_OUTPUT": f"jsonl:{work / 'dash.jsonl'}",
                },
                stdout=subprocess.DEVNULL,
                stderr=dash_log.open("w"),
            )
        )
        page_url = _wait_for(dash_log, r"dashboard: (http://\S+/)")
        time.sleep(45)  # some minutes of history... well, 45 s of the sample's pace
        screen = subprocess.run(
            ["tmux", "-S", socket, "capture-pane", "-e", "-p"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        from rich.console import Console
        from rich.text import Text

        console = Console(
            record=True, width=160, force_terminal=True, file=open(os.devnull, "w")
        )
        console.print(Text.from_ansi(screen.rstrip("\n")))
        terminal_html = work / "terminal.html"
        terminal_html.write_text(console.export_html(inline_styles=True))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1180, "height": 640})
            page.goto(terminal_html.as_uri())
            page.screenshot(path=str(DOCS / "live.png"), full_page=True)
            page = browser.new_page(viewport={"width": 1180, "height": 900})
            page.goto(page_url)
            page.wait_for_function(
                "Object.values(window.dashboardStats||{}).length >= 4"
            )
            page.wait_for_timeout(1500)
            page.screenshot(path=str(DOCS / "dashboard.png"), full_page=False)
            browser.close()
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True)
        for flow in flows:
            flow.terminate()
            flow.wait(10)
        exchange.terminate()
        exchange.wait(10)
    # the plot: the whole sample, replayed as fast as possible
    run = work / "run.jsonl"
    subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        cwd=REPO,
        env={
            **env_base,
            "ORDERBOOK_REPLAY": str(SAMPLE),
            "ORDERBOOK_OUTPUT": f"jsonl:{run}",
            "ORDERBOOK_SPREAD_THRESHOLD": "0",
        },
        check=True,
        stderr=subprocess.DEVNULL,
    )
    subprocess.run(
        [sys.executable, "-m", "views.plot", str(run), "--out", str(work / "plots")],
        cwd=REPO,
        check=True,
    )
    (work / "plots" / "ETH-USD.png").replace(DOCS / "plot-ETH-USD.png")
    for name in ("live.png", "dashboard.png", "plot-ETH-USD.png"):
        _small_png(DOCS / name)
        print(DOCS / name, (DOCS / name).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
