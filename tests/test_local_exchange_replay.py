"""The local exchange serving a recording (--replay)."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from local_exchange.connections import Stats
from local_exchange.replay import ReplayServer
from local_exchange.server import LocalExchange
from recording.reader import Recording
from recording.writer import RecordingWriter
from tests.support.exchange_client import (
    open_ws,
    recv,
)
from tests.support.frames import (
    at_subscribe,
    at_subscriptions,
    exchange_error,
    exchange_l2update,
    exchange_subscribe_channels,
    exchange_subscribe_root,
    exchange_subscriptions,
    text,
)

pytestmark = pytest.mark.slow


def _recording(tmp_path: Path) -> Path:
    path = tmp_path / "rec.jsonl.gz"
    base = 1_700_000_000_000_000_000
    frames = [(base, "BTC-USD", text(exchange_subscriptions([], channels=())))]
    for i in range(6):
        pid = "BTC-USD" if i % 2 == 0 else "ETH-USD"
        frame = exchange_l2update(pid, [("buy", f"{100 + i}.00", "1")], time="x")
        frames.append((base + (i + 1) * 100_000_000, pid, text(frame)))  # 100 ms apart
    writer = RecordingWriter(
        path,
        {
            "protocol": "exchange",
            "url": "wss://ws-feed",
            "products": ["BTC-USD", "ETH-USD"],
            "started": "2026-01-01T00:00:00Z",
        },
    )
    for t_ns, pid, frame in frames:
        writer.frame(pid, frame, t_ns)
    writer.close()
    return path


def test_replay_sends_recorded_frames_in_order_paced_then_closes_normally(
    tmp_path: Path,
) -> None:
    path = _recording(tmp_path)
    assert Recording.open(path).protocol == "exchange"
    recorded = [r["frame"] for _, r in Recording.open(path).records()]
    with (
        LocalExchange(recording=path, replay_speed=2.0, announce=True) as ex,
        open_ws(ex) as ws,
    ):
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        got, arrived = [], []
        for _ in range(4):
            got.append(ws.recv(timeout=5))
            arrived.append(time.monotonic())
        with pytest.raises(ConnectionClosed) as info:  # the recording's end: closed
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    expected = [f for f in recorded if '"ETH-USD"' not in f]
    # The recorded subscriptions reply says it is replayed; nothing else is touched.
    assert got[0] == expected[0][:-1] + ',"local_exchange":"replay"}'
    assert got[1:] == expected[1:]
    # Recorded at +0, +100, +300, +500 ms; at speed 2 they are 50, 100, 100 ms apart.
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert gaps[0] >= 0.03 and gaps[1] >= 0.08 and gaps[2] >= 0.08


def test_replay_as_fast_as_possible_and_refusals(tmp_path: Path) -> None:
    path = _recording(tmp_path)
    with LocalExchange(recording=path) as ex:
        with open_ws(ex) as ws:
            ws.send(
                text(
                    exchange_subscribe_channels(
                        {"level2_batch": ["ETH-USD", "BTC-USD", "SOL-USD"]}
                    )
                )
            )
            got = [json.loads(ws.recv(timeout=5)) for _ in range(8)]
        assert got[0] == exchange_error(
            "Failed to subscribe", "SOL-USD is not a valid product"
        )
        # Both products merged in recorded order.
        assert [m.get("changes", [[None, None]])[0][1] for m in got[1:]] == [None] + [
            f"{100 + i}.00" for i in range(6)
        ]
        with open_ws(ex, "advanced-trade") as ws:
            ws.send(text(at_subscribe(["BTC-USD"])))
            assert "exchange feed" in recv(ws)["message"]
        with pytest.raises(RuntimeError, match="replays a recording"):
            ex.true_book("BTC-USD")


def test_bad_recording_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    import gzip

    with gzip.open(path, "wt") as fh:
        fh.write('{"format":"something-else"}\n')
    with pytest.raises(ValueError, match="header"):
        LocalExchange(recording=path)


def _raw_recording(path: Path, protocol: str, lines: list[str]) -> Path:
    header = {
        "format": "coinbase-l2-recording",
        "version": 1,
        "protocol": protocol,
        "products": ["BTC-USD"],
    }
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(header) + "\n")
        for line in lines:
            fh.write(line + "\n")
    return path


def test_replay_skips_counts_and_logs_records_that_are_not_objects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    update = text(exchange_l2update("BTC-USD", [], time="x"))
    good = json.dumps({"t_ns": 1, "product_id": "BTC-USD", "frame": update})
    bad_time = json.dumps({"t_ns": "soon", "product_id": "BTC-USD", "frame": update})
    path = _raw_recording(
        tmp_path / "odd.jsonl.gz",
        "exchange",
        ["[1,2,3]", good, '"x"', "null", bad_time, good],
    )
    with caplog.at_level(logging.WARNING, logger="local_exchange.replay"):
        ex = LocalExchange(recording=path)
    with ex, open_ws(ex) as ws:
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        assert [ws.recv(timeout=5) for _ in range(2)] == [update, update]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    assert ex.stats["replay_records_skipped"] == 4
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1  # rate-limited: one line a second at most
    assert "record 0 skipped: JSON array, not an object" in skipped[0].getMessage()


def test_advanced_trade_replay_marks_its_subscriptions_reply(tmp_path: Path) -> None:
    ack = text(at_subscriptions(0, ["BTC-USD"]))
    record = json.dumps({"t_ns": 1, "product_id": "BTC-USD", "frame": ack})
    path = _raw_recording(tmp_path / "at.jsonl.gz", "advanced-trade", [record])
    with (
        LocalExchange(recording=path, announce=True) as ex,
        open_ws(ex, "advanced-trade") as ws,
    ):
        ws.send(text(at_subscribe(["BTC-USD"])))
        reply = json.loads(ws.recv(timeout=5))
    assert reply["local_exchange"] == "replay"
    assert reply["events"] == [{"subscriptions": {"level2": ["BTC-USD"]}}]
    assert reply["sequence_num"] == 0  # the recorded frame, otherwise untouched


def test_a_client_reconnecting_after_the_end_does_not_read_the_recording_twice(
    tmp_path: Path,
) -> None:
    path = _recording(tmp_path)
    sub = text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"]))
    with LocalExchange(recording=path) as ex:
        with open_ws(ex) as ws:
            ws.send(sub)
            assert len([ws.recv(timeout=5) for _ in range(4)]) == 4
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        with open_ws(ex) as ws:  # the reconnect: nothing again, a normal close at once
            ws.send(sub)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1000
        with open_ws(ex) as ws:  # a product not played yet is still served
            ws.send(text(exchange_subscribe_root(["ETH-USD"], ["level2_batch"])))
            assert "ETH-USD" in ws.recv(timeout=5)


def test_replay_skips_and_counts_records_whose_product_id_is_malformed(
    tmp_path: Path,
) -> None:
    """Issue 17, finding 11: a served product's name reaches clients and logs."""
    update = text(exchange_l2update("BTC-USD", [], time="x"))
    lines = [
        json.dumps({"t_ns": 1, "product_id": "BTC-USD", "frame": update}),
        json.dumps({"t_ns": 2, "product_id": "../../../etc", "frame": update}),
        json.dumps({"t_ns": 3, "product_id": "\x1b[31mX-Y\nZ", "frame": update}),
    ]
    path = _raw_recording(tmp_path / "ids.jsonl.gz", "exchange", lines)
    stats = Stats()
    served = ReplayServer(path, None, stats)
    assert served.products == ("BTC-USD",)
    assert stats.snapshot()["replay_records_skipped"] == 2


def _served_book(ex: LocalExchange, product: str) -> tuple[dict, dict]:
    """A product's whole served stream applied to a book, until the normal close."""
    from decimal import Decimal

    bids: dict = {}
    asks: dict = {}
    with open_ws(ex) as ws:
        ws.send(text(exchange_subscribe_root([product], ["level2_batch"])))
        while True:
            try:
                msg = json.loads(ws.recv(timeout=10))
            except ConnectionClosed:
                break
            if msg.get("type") == "snapshot":
                bids = {Decimal(p): Decimal(s) for p, s in msg["bids"]}
                asks = {Decimal(p): Decimal(s) for p, s in msg["asks"]}
            for side, price, size in msg.get("changes", []):
                book = bids if side == "buy" else asks
                book[Decimal(price)] = Decimal(size)
                if not Decimal(size):
                    del book[Decimal(price)]
    return bids, asks


@pytest.mark.parametrize("kind", ["tardis", "cryptofeed raw"])
def test_foreign_files_are_converted_first_and_served(tmp_path, capsys, kind) -> None:
    """``--replay`` of a tardis.dev file or a cryptofeed capture: converted into a
    temporary recording (the summary and quality report on stderr), then served: the
    served frames rebuild the true book."""
    from local_exchange.cli import _config, build_parser
    from tests.support.foreign_files import (
        market_session,
        write_cryptofeed_raw,
        write_tardis,
    )

    session = market_session(("BTC-USD", "ETH-USD"), batches=60)
    if kind == "tardis":
        replay = str(write_tardis(tmp_path / "day.csv.gz", session))
    else:
        write_cryptofeed_raw(tmp_path, session)
        replay = str(tmp_path / "COINBASE.ws.28.*")
    config = _config(build_parser(), ["--replay", replay, "--port", "0"])
    err = capsys.readouterr().err
    assert "to a temporary recording to serve" in err
    assert "quality of the data:" in err and "BTC-USD: " in err
    served = Path(config.recording)
    assert served.exists() and Recording.open(served).products == ["BTC-USD", "ETH-USD"]
    with LocalExchange(config=config) as ex:
        for product, truth in session.truth.items():
            assert _served_book(ex, product) == truth, product


def test_a_file_no_importer_reads_is_refused_in_one_line(tmp_path, capsys) -> None:
    from local_exchange.cli import _config, build_parser

    junk = tmp_path / "notes.txt"
    junk.write_text("hello\x1b[2J there\n")
    with pytest.raises(SystemExit) as ended:
        _config(build_parser(), ["--replay", str(junk)])
    assert ended.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--replay: " in last and "notes.txt: not importable: text starting" in last
    assert "\x1b" not in last
