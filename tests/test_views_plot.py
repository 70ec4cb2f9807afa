"""python -m views.plot: per-product PNG and self-contained HTML of a run's summaries."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from orderbook import OrderBookSummary
from tests.support.flow import REPO, flow_env
from views import plot
from views.records import read_records

SAMPLE = REPO / "samples" / "sample.jsonl.gz"


def _summaries(product: str, n: int, start: datetime) -> list[dict]:
    out = []
    for i in range(n):
        bid = Decimal(100) + Decimal(i % 7) / 10
        ask = bid + Decimal("0.01") * (1 + i % 3) + (Decimal(1) if i == n // 2 else 0)
        summary = OrderBookSummary.from_top(
            product,
            bid,
            Decimal("1.5"),
            ask,
            Decimal("0.5") + Decimal(i % 4),
            time=start + timedelta(seconds=i),
            feed="sim",
        )
        out.append(summary.to_dict())
    return out


def _write_run(path: Path) -> list[dict]:
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    records = _summaries("BTC-USD", 40, start) + _summaries("ETH-USD", 30, start)
    depth = {"type": "depth", "product_id": "BTC-USD", "bids": [], "asks": []}
    lines = [json.dumps(r) for r in records] + [json.dumps(depth), "not json"]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return records


def _check_outputs(out: Path, products: list[str]) -> None:
    from PIL import Image

    for product in products:
        png, html = out / f"{product}.png", out / f"{product}.html"
        with Image.open(png) as image:
            assert image.size == plot.PNG_SIZE
        page = html.read_text()
        for panel in plot.PANELS:
            assert panel in page
        assert product in page
        # self-contained: no script or stylesheet from anywhere
        assert not re.search(r"<script[^>]+src=", page)
        assert not re.search(r"<link[^>]+href=", page)
        assert "uPlot" in page


@pytest.mark.slow  # matplotlib's import and two PNGs: about 2 s
def test_plot_writes_a_png_and_an_html_per_product(tmp_path):
    run = tmp_path / "run.jsonl.gz"
    _write_run(run)
    written = plot.render(run, tmp_path / "out", threshold_pct=0.5)
    assert sorted(p.name for p in written) == [
        "BTC-USD.html",
        "BTC-USD.png",
        "ETH-USD.html",
        "ETH-USD.png",
    ]
    _check_outputs(tmp_path / "out", ["BTC-USD", "ETH-USD"])


def test_html_page_is_self_contained_with_the_panels(tmp_path):
    run = tmp_path / "run.jsonl"
    _write_run(run)
    page = plot.html_page(plot.load(run)["ETH-USD"], threshold_pct=0.1)
    assert all(panel in page for panel in plot.PANELS)
    assert not re.search(r"<script[^>]+src=", page)
    assert '"threshold_bps":10.0' in page


def test_figure_has_the_three_panels_and_the_threshold_line(tmp_path):
    run = tmp_path / "run.jsonl"
    _write_run(run)
    series = plot.load(run)["BTC-USD"]
    assert len(series.t) == 40
    fig = plot.figure(series, threshold_pct=0.5)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == list(plot.PANELS)
    spread_axis = fig.axes[1]
    labels = [line.get_label() for line in spread_axis.get_lines()]
    assert any(label.startswith("threshold 0.5%") for label in labels)
    threshold = next(
        line for line in spread_axis.get_lines() if line.get_label().startswith("thr")
    )
    assert threshold.get_ydata()[0] == pytest.approx(50.0)  # 0.5% of the ask = 50 bps
    assert spread_axis.get_yscale() == "log"
    mid = fig.axes[0].get_lines()[0]
    assert len(mid.get_xdata()) == 40


def test_plot_reads_a_parquet_directory(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = _write_run(tmp_path / "run.jsonl")
    parts = tmp_path / "parquet" / "date=2026-11-01"
    parts.mkdir(parents=True)
    half = len(records) // 2
    for i, chunk in enumerate([records[:half], records[half:]]):
        pq.write_table(pa.Table.from_pylist(chunk), parts / f"part-{i}.parquet")
    assert len(list(read_records(tmp_path / "parquet"))) == len(records)
    from_parquet = plot.load(tmp_path / "parquet")
    from_jsonl = plot.load(tmp_path / "run.jsonl")
    assert list(from_parquet) == ["BTC-USD", "ETH-USD"]
    for product, series in from_jsonl.items():
        assert from_parquet[product] == series


@pytest.mark.slow
def test_plot_command_from_a_recorded_run(tmp_path):
    """The sample recording, replayed through the dataflow, then plotted by the CLI."""
    run = tmp_path / "run.jsonl"
    replay = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow:flow"],
        cwd=REPO,
        env=flow_env(
            ORDERBOOK_REPLAY=str(SAMPLE),
            ORDERBOOK_PRODUCTS="ETH-USD",  # one of the sample's four: one plot
            ORDERBOOK_OUTPUT=f"jsonl:{run}",
            ORDERBOOK_SPREAD_THRESHOLD="0",
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert replay.returncode == 0, replay.stderr[-2000:]
    out = tmp_path / "plots"
    done = subprocess.run(
        [sys.executable, "-m", "views.plot", str(run), "--threshold", "0.1"]
        + ["--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.stem for p in out.glob("*.png")) == ["ETH-USD"]
    assert len(plot.load(run)["ETH-USD"].t) > 500  # minutes of summaries
    _check_outputs(out, ["ETH-USD"])


@pytest.mark.slow
def test_plot_command_refuses_a_missing_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "views.plot", str(tmp_path / "nope.jsonl")]
        + ["--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no such file" in done.stderr
