"""Plots of a run: ``python -m views.plot OUTPUT.jsonl [--threshold 0.1] --out DIR``.

Reads the summaries of a run (``ORDERBOOK_OUTPUT=jsonl`` lines, ``.jsonl.gz``, or a
Parquet file or directory of them) and writes, per product:

* ``<PRODUCT>.png``: three panels over time, mid and microprice, spread in basis points
  of the ask with the threshold drawn (log scale: spreads and threshold are often
  orders of magnitude apart), imbalance;
* ``<PRODUCT>.html``: the same panels, zoomable (drag to zoom, double-click to reset),
  self-contained: the chart library (uPlot, vendored under ``views/static``) and the
  data are inlined, nothing is fetched from the network.

Depth records and anything else that is not a summary are ignored. Every summary is
checked where it enters (:meth:`Series.add`): a product id of Coinbase's shape (so a
file name is always ``<PRODUCT>.png`` inside ``--out``, and a page title holds no
markup), a time between 1970 and 9999, a finite mid; others are skipped and counted,
and the count is printed in one line. A file that cannot be read (not gzip, truncated,
a corrupt Parquet file) is named in one line; what was read before the damage is still
plotted, and the exit status is 1. Every text in a page is HTML-escaped, and the page's
JSON never holds ``Infinity`` or ``NaN`` (missing values are ``null``).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common import validation
from common.domain import is_product_id
from common.text import shown
from views.records import (
    SUMMARY,
    ReadReport,
    epoch_seconds,
    kind,
    num,
    read_records,
    spread_bps,
)

STATIC = Path(__file__).resolve().parent / "static"
PANELS = ("mid and microprice", "spread (bps of ask)", "imbalance")
"""Panel titles, in order, of both the PNG and the HTML."""
PNG_SIZE = (1200, 900)
"""Width and height in pixels of every PNG."""
STEP = {"drawstyle": "steps-post"}
"""A top of book holds until the next change: every series is drawn as steps."""
HTML_MAX_POINTS = 20_000
"""Points per product in the HTML (evenly thinned beyond that); the PNG gets them all."""
THRESHOLD_MAX = 100.0
"""A spread is always under 100% of the ask: a larger threshold is a typo."""
FEED_LIMIT = 24
"""Characters of a record's feed name kept for titles (``exchange``, ``replay``...)."""


@dataclass
class Series:
    """One product's summaries as columns of floats, in time order."""

    product_id: str
    feed: str = ""
    t: list[float] = field(default_factory=list)
    mid: list[float] = field(default_factory=list)
    microprice: list[float] = field(default_factory=list)
    spread_bps: list[float] = field(default_factory=list)
    imbalance: list[float] = field(default_factory=list)

    def add(self, record: dict) -> str | None:
        """Take one summary of this product; or say why not (it is then skipped)."""
        t = epoch_seconds(record.get("time"))
        if t is None:
            return "without a time from 1970 to 9999"
        mid = num(record.get("mid"))
        if mid is None:
            return "without a finite mid"
        self.t.append(t)
        self.mid.append(mid)
        micro = num(record.get("microprice"))
        self.microprice.append(mid if micro is None else micro)
        bps = spread_bps(record)
        self.spread_bps.append(float("nan") if bps is None else bps)
        imbalance = num(record.get("imbalance"))
        self.imbalance.append(float("nan") if imbalance is None else imbalance)
        feed = record.get("feed")
        if isinstance(feed, str) and feed:
            self.feed = shown(feed, FEED_LIMIT)
        return None

    def sort(self) -> None:
        order = sorted(range(len(self.t)), key=self.t.__getitem__)
        for name in ("t", "mid", "microprice", "spread_bps", "imbalance"):
            column = getattr(self, name)
            setattr(self, name, [column[i] for i in order])


def load(path: str | Path, report: ReadReport | None = None) -> dict[str, Series]:
    """Summaries per product, time-ordered (several workers may interleave a file).

    What is skipped, and files that cannot be read, go into ``report`` (without one, an
    unreadable file raises :class:`views.records.UnreadableFile`)."""
    skipped = report.skipped if report is not None else Counter()
    series: dict[str, Series] = {}
    for record in read_records(path, report):
        if kind(record) != SUMMARY:
            continue
        product = record.get("product_id")
        if not is_product_id(product):
            skipped["summaries without a product id like BTC-USD"] += 1
            continue
        why = series.setdefault(product, Series(product)).add(record)
        if why is not None:
            skipped[f"summaries {why}"] += 1
    for one in series.values():
        one.sort()
    return {p: s for p, s in sorted(series.items()) if s.t}


# -- PNG ------------------------------------------------------------------------------


def figure(series: Series, threshold_pct: float):
    """The matplotlib figure of one product (Agg; the caller saves or closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(PNG_SIZE[0] / dpi, PNG_SIZE[1] / dpi), dpi=dpi)
    axes = fig.subplots(3, 1, sharex=True)
    times = mdates.date2num([_utc(t) for t in series.t])  # shared by the panels
    price, spread, imbalance = axes
    price.plot(times, series.mid, lw=0.9, label="mid", color="#1f77b4", **STEP)
    price.plot(
        times,
        series.microprice,
        lw=0.7,
        label="microprice",
        color="#ff7f0e",
        alpha=0.8,
        **STEP,
    )
    price.legend(loc="upper left", fontsize=8)
    price.ticklabel_format(axis="y", useOffset=False, style="plain")

    threshold_bps = threshold_pct * 100.0
    spread.plot(
        times, series.spread_bps, lw=0.8, color="#2ca02c", label="spread", **STEP
    )
    spread.axhline(
        threshold_bps,
        color="#d62728",
        ls="--",
        lw=1,
        label=f"threshold {threshold_pct:g}% = {threshold_bps:g} bps",
    )
    wide = [
        (x, y)
        for x, y in zip(times, series.spread_bps, strict=True)
        if y > threshold_bps
    ]
    if wide:
        spread.scatter(
            *zip(*wide, strict=True), s=6, color="#d62728", zorder=3, label="above"
        )
    if all(v > 0 for v in series.spread_bps if v == v):
        spread.set_yscale("log")
    spread.legend(loc="upper left", fontsize=8)

    imbalance.plot(times, series.imbalance, lw=0.6, color="#9467bd", **STEP)
    imbalance.axhline(0.5, color="grey", lw=0.6, ls=":")
    imbalance.set_ylim(0, 1)

    for ax, title in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
    locator = mdates.AutoDateLocator()
    imbalance.xaxis.set_major_locator(locator)
    imbalance.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    imbalance.set_xlabel("time (UTC)")
    fig.suptitle(  # no mathtext: a feed name with "$" is text, not a formula
        f"{series.product_id}  [{series.feed or '?'}]  {len(series.t):,} summaries",
        parse_math=False,
    )
    fig.tight_layout()
    return fig


def _utc(seconds: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, tz=UTC)


# -- HTML -----------------------------------------------------------------------------


def html_page(series: Series, threshold_pct: float) -> str:
    """One self-contained page: uPlot and the data inlined, three zoom-synced panels."""
    step = max(1, -(-len(series.t) // HTML_MAX_POINTS))

    def thin(column: list[float]) -> list[float | None]:
        return [round(v, 10) if math.isfinite(v) else None for v in column[::step]]

    data = {
        "product": series.product_id,
        "feed": series.feed,
        "threshold_bps": threshold_pct * 100.0,
        "panels": list(PANELS),
        "t": [round(t, 6) for t in series.t[::step]],
        "mid": thin(series.mid),
        "microprice": thin(series.microprice),
        "spread_bps": thin(series.spread_bps),
        "imbalance": thin(series.imbalance),
    }
    uplot_js = (STATIC / "uplot" / "uPlot.iife.min.js").read_text(encoding="utf-8")
    uplot_css = (STATIC / "uplot" / "uPlot.min.css").read_text(encoding="utf-8")
    script = (STATIC / "plot.js").read_text(encoding="utf-8")
    # strict JSON (no Infinity/NaN: JSON.parse refuses them and the page stays blank),
    # and no "<", ">" or "&" that could end the script element early
    payload = (
        json.dumps(data, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    title = html.escape(shown(f"{series.product_id} order book summaries"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{uplot_css}
body {{ font: 13px system-ui, sans-serif; margin: 12px 20px; color: #222; }}
h1 {{ font-size: 16px; margin: 4px 0 2px; }} h2 {{ font-size: 13px; margin: 14px 0 0; }}
.note {{ color: #666; }}
</style></head><body>
<h1>{title}</h1>
<div class="note">drag to zoom (all panels follow), double-click to reset; times UTC</div>
<div id="panels"></div>
<script>{uplot_js}</script>
<script id="data" type="application/json">{payload}</script>
<script>{script}</script>
</body></html>
"""


# -- command line ---------------------------------------------------------------------


def render(
    path: str | Path,
    out: str | Path,
    threshold_pct: float = 0.1,
    report: ReadReport | None = None,
) -> list[Path]:
    """Write every product's PNG and HTML into ``out``; returns the files written."""
    threshold_pct = validation.number(
        "threshold_pct", threshold_pct, low=0.0, low_open=False, high=THRESHOLD_MAX
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for product, series in load(path, report).items():
        if not is_product_id(product):  # load() checked it; a file name depends on it
            raise ValueError(f"not a product id: {shown(product)}")
        fig = figure(series, threshold_pct)
        png = out / f"{product}.png"
        fig.savefig(png)
        html_file = out / f"{product}.html"
        html_file.write_text(html_page(series, threshold_pct), encoding="utf-8")
        written += [png, html_file]
    return written


def _threshold(name: str, text: str) -> float:
    return validation.number(name, text, low=0.0, low_open=False, high=THRESHOLD_MAX)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m views.plot",
        description="Per-product PNG and zoomable HTML plots of a run's summaries.",
    )
    parser.add_argument(
        "input", help="a run's output: .jsonl, .jsonl.gz, .parquet or a directory"
    )
    parser.add_argument(
        "--threshold",
        type=validation.argparse_type("--threshold", _threshold),
        default=0.1,
        help="spread threshold in percent of the ask, 0 to 100, drawn on the spread "
        "panel (default 0.1)",
    )
    parser.add_argument("--out", required=True, help="directory to write into")
    args = parser.parse_args(argv)
    if not Path(args.input).exists():
        parser.error(f"{shown(args.input)}: no such file or directory")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {shown(args.out)}: not a directory")
    report = ReadReport()
    try:
        written = render(args.input, args.out, args.threshold, report)
    except OSError as exc:  # --out not writable, a full disk
        print(f"--out {shown(args.out)}: cannot write ({shown(exc)})", file=sys.stderr)
        return 1
    for line in report.errors:  # each names its file
        print(line, file=sys.stderr)
    skipped = report.skipped_line()
    if skipped:
        print(f"{shown(args.input)}: {skipped}", file=sys.stderr)
    if not written:
        print(f"{shown(args.input)}: no summaries found", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
