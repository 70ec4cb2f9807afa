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

from records import OrderBookSummary
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


# -- hostile and broken input (issue 17, findings 12 and 29) ---------------------------


def _good(product: str = "BTC-USD", second: int = 0, **changes) -> dict:
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    record = _summaries(product, 1, start + timedelta(seconds=second))[0]
    return {**record, **changes}


def _lines(records: list) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def _page_data(page: str) -> dict:
    """The page's JSON as a browser's JSON.parse sees it: Infinity and NaN refused."""

    def refuse(constant: str):
        raise ValueError(f"{constant} in the page's JSON")

    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', page)
    assert match, "no data in the page"
    return json.loads(match.group(1), parse_constant=refuse)


def test_a_crafted_product_id_is_neither_markup_in_a_page_nor_a_path_outside_out(
    tmp_path, capsys
):
    """Finding 12: ids are checked where they enter (Coinbase's shape), and every text
    of the page is escaped besides."""
    run = tmp_path / "run.jsonl"
    crafted = ["<img src=x onerror=alert(1)>", "../../escaped", "..", "A-B/../../C-D"]
    records = [_good(second=i) for i in range(5)]
    records += [_good(p, second=i) for i in range(3) for p in crafted]
    run.write_bytes(_lines(records))
    out = tmp_path / "deep" / "er" / "out"
    assert plot.main([str(run), "--out", str(out)]) == 0
    everything = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in everything if p.is_relative_to("deep/er/out")] == [
        Path("deep/er/out"),
        Path("deep/er/out/BTC-USD.html"),
        Path("deep/er/out/BTC-USD.png"),
    ]
    assert len(everything) == 3 + 3  # run.jsonl, deep, deep/er: nothing else
    assert "<img" not in (out / "BTC-USD.html").read_text()
    err = capsys.readouterr().err
    assert "skipped 12: 12 summaries without a product id like BTC-USD" in err


def test_page_title_and_heading_escape_their_text():
    """Finding 12, the page's own layer: a Series made by other code is escaped too."""
    series = plot.Series("<img src=x onerror=alert(1)>", feed="</script><b>")
    series.add(_good())
    page = plot.html_page(series, threshold_pct=0.1)
    assert "<img" not in page and "<b>" not in page
    assert "<title>&lt;img src=x onerror=alert(1)&gt; order book" in page
    assert "<h1>&lt;img src=x onerror=alert(1)&gt; order book" in page
    assert _page_data(page)["product"] == "<img src=x onerror=alert(1)>"


def test_bad_records_are_skipped_and_counted_and_the_page_json_stays_strict(
    tmp_path, capsys
):
    """Finding 29: ids with "/" or of the wrong type, absurd times, infinite mids and
    spreads, bad UTF-8: each skipped and counted; what is left is plotted."""
    run = tmp_path / "run.jsonl"
    records = [_good(second=i) for i in range(6)]
    records[2]["spread_pct"] = "1e307"  # x 100 bps overflows: a missing spread
    records[3]["imbalance"] = "NaN"
    records[4]["microprice"] = "-inf"
    bad = [
        _good("BTC/USD"),
        _good(["BTC-USD"]),
        _good({"id": 1}),
        _good(time=1e300),
        _good(time=float("nan")),
        _good(time=10**400),
        _good(time="0001-01-01T00:00:00Z"),
        _good(mid="inf"),
        _good(mid=float("inf")),
        _good(mid="1e400"),
        b'{"product_id": "BTC-USD", "bid_price": "1", "mid": "\xff\xfe"}',
        b'{"product_id": ' + b"[" * 100_000,
    ]
    run.write_bytes(_lines(records + bad))
    out = tmp_path / "out"
    assert plot.main([str(run), "--out", str(out), "--threshold", "0.5"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{run}: skipped 12: 4 summaries without a time from 1970 to 9999, "
        "3 summaries without a product id like BTC-USD, "
        "3 summaries without a finite mid, 1 lines not UTF-8, 1 lines not JSON"
    ]
    data = _page_data((out / "BTC-USD.html").read_text())
    assert len(data["t"]) == 6
    assert data["spread_bps"][2] is None and data["imbalance"][3] is None
    assert data["microprice"][4] == data["mid"][4]  # a missing microprice: the mid
    assert data["threshold_bps"] == 50.0


def _gzip_truncated(path: Path) -> None:
    lines = _lines([_good(second=i) for i in range(2000)])
    path.write_bytes(gzip.compress(lines)[:-300])


def _not_gzip(path: Path) -> None:
    path.write_bytes(_lines([_good()]))


def _corrupt_parquet(path: Path) -> None:
    path.write_bytes(b"PAR1" + b"\x00" * 100)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("run.jsonl.gz", _gzip_truncated, "not a readable gzip file after"),
        ("run.jsonl.gz", _not_gzip, "not a readable gzip file (Not a gzipped file"),
        ("run.parquet", _corrupt_parquet, "not a readable Parquet file"),
    ],
    ids=["truncated-gzip", "not-gzip", "corrupt-parquet"],
)
def test_an_unreadable_file_is_refused_in_one_line(
    tmp_path, capsys, name, make, message
):
    """Finding 29: the file named in one line, exit status 1; what could be read before
    the damage (a recorder killed mid-write) is still plotted."""
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    run = tmp_path / name
    make(run)
    out = tmp_path / "out"
    assert plot.main([str(run), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith(f"{run}: {message}"), lines
    if make is _gzip_truncated:
        assert len(lines) == 1
        assert captured.out.split() == [
            str(out / "BTC-USD.png"),
            str(out / "BTC-USD.html"),
        ]
        assert 0 < len(_page_data((out / "BTC-USD.html").read_text())["t"]) < 2000
    else:
        assert lines[1:] == [f"{run}: no summaries found"]
        assert not out.exists() or not any(out.iterdir())


def test_a_corrupt_file_in_a_parquet_directory_leaves_the_others_plotted(
    tmp_path, capsys
):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    parts = tmp_path / "parquet"
    parts.mkdir()
    pq.write_table(
        pa.Table.from_pylist([_good(second=i) for i in range(5)]), parts / "a.parquet"
    )
    _corrupt_parquet(parts / "b.parquet")
    assert plot.main([str(parts), "--out", str(tmp_path / "out")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"{parts / 'b.parquet'}: not a readable"
    )
    assert (tmp_path / "out" / "BTC-USD.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{file}"], "--out {file}: not a directory"),
        (["--out", "{out}", "--threshold", "inf"], "--threshold='inf' is not allowed"),
        (["--out", "{out}", "--threshold", "nan"], "--threshold='nan' is not allowed"),
        (
            ["--out", "{out}", "--threshold", "1e999"],
            "--threshold='1e999' is not allowed",
        ),
    ],
    ids=["out-is-a-file", "threshold-inf", "threshold-nan", "threshold-overflow"],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, capsys, args, message):
    """Finding 29: ``--out`` naming a file, a threshold of inf: argparse's usage and
    one line, exit status 2, nothing written."""
    run = tmp_path / "run.jsonl"
    run.write_bytes(_lines([_good()]))
    file = tmp_path / "a-file"
    file.write_text("keep me")
    values = {"file": str(file), "out": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as done:
        plot.main([str(run)] + [a.format(**values) for a in args])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("usage:")
    assert message.format(**values) in err[1]
    assert file.read_text() == "keep me" and not (tmp_path / "out").exists()


@pytest.mark.slow  # headless Chromium: about 3 s
def test_a_page_with_an_infinite_mid_and_spread_draws_its_panels(tmp_path):
    """Finding 29: ``Infinity`` in the page's JSON made JSON.parse throw and the page
    blank; now the bad points are left out and the three panels are drawn."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    run = tmp_path / "run.jsonl"
    records = [_good(second=i) for i in range(20)]
    records[5]["mid"] = "inf"
    records[6]["spread_pct"] = "Infinity"
    records[7]["imbalance"] = "-Infinity"
    run.write_bytes(_lines(records))
    page_file = plot.render(run, tmp_path / "out")[1]
    assert page_file.suffix == ".html"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri())
            page.wait_for_function(
                "document.querySelectorAll('.uplot').length === 3", timeout=30_000
            )
            titles = page.eval_on_selector_all(
                "h2", "els => els.map(e => e.textContent)"
            )
        finally:
            browser.close()
    assert errors == []
    assert titles == list(plot.PANELS)
