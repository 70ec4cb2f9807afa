"""Formats are told from content, never from names; anything else is refused in one line
that says what the file looked like."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import zstandard

from importers.detect import (
    CRYPTOFEED_CAPTURE,
    CRYPTOFEED_RAW,
    TARDIS_L2,
    ImportFormatError,
    detect,
)
from tests.support.foreign_files import (
    TARDIS_HEADER,
    market_session,
    write_cryptofeed_capture,
    write_cryptofeed_raw,
    write_tardis,
)
from tests.support.frames import write_exchange_recording


@pytest.fixture(scope="module")
def session():
    return market_session(("BTC-USD",), batches=5)


def test_each_format_is_found_from_its_content_whatever_its_name(tmp_path, session):
    # names that say the wrong thing: content decides
    tardis = write_tardis(tmp_path / "capture.jsonl.zst", session, compress=True)
    plain = write_tardis(tmp_path / "data.bin", session, compress=False)
    raw = write_cryptofeed_raw(tmp_path, session, uuid="book", files=2)
    capture = write_cryptofeed_capture(tmp_path / "x.csv.gz", session)
    plain_capture = write_cryptofeed_capture(tmp_path / "y", session, compress=False)
    assert (detect(tardis).format, detect(tardis).compression) == (TARDIS_L2, "gzip")
    assert (detect(plain).format, detect(plain).compression) == (TARDIS_L2, "plain")
    # the first file of a 2.x set starts with its configuration, the next ones do not
    assert [detect(p).format for p in raw] == [CRYPTOFEED_RAW, CRYPTOFEED_RAW]
    assert not raw[1].read_text().startswith("configuration")
    assert (detect(capture).format, detect(capture).compression) == (
        CRYPTOFEED_CAPTURE,
        "zstd",
    )
    assert detect(plain_capture).format == CRYPTOFEED_CAPTURE


def _refusal(path) -> str:
    with pytest.raises(ImportFormatError) as caught:
        detect(path)
    message = str(caught.value)
    assert "\n" not in message, "a refusal is one line"
    assert str(path.name) in message
    return message


@pytest.mark.parametrize(
    ("content", "looks_like"),
    [
        (b"", "an empty file"),
        (random.Random(1).randbytes(4096), "binary data"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
        (b'{"type": "ticker", "price": "1"}\n', "JSON lines of another kind"),
        (b"[1, 2, 3]\n", "JSON that is not an object"),
        (b'{"t": "header", "format": 1}\n', "capture of format 1"),
        (
            b"exchange,symbol,timestamp,local_timestamp,asks[0].price,asks[0].amount\n",
            "tardis.dev CSV of another data type",
        ),
        (b"date,open,high,low,close\n1,2,3,4,5\n", "a CSV with columns"),
        (b"hello \x1b[31mworld\n", "text starting 'hello \\x1b[31mworld'"),
    ],
    ids=[
        "empty",
        "random",
        "png",
        "other-json",
        "json-array",
        "capture-v1",
        "tardis-snapshots",
        "other-csv",
        "text-with-escapes",
    ],
)
def test_other_files_are_refused_in_one_line_naming_what_they_looked_like(
    tmp_path, content, looks_like
):
    path = tmp_path / "input.csv.gz"
    path.write_bytes(content)
    assert looks_like in _refusal(path)


def test_compressed_files_are_looked_into(tmp_path):
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(b"date,open\n1,2\n"))
    assert "gzip-compressed a CSV with columns 'date,open'" in _refusal(gz)
    zst = tmp_path / "a.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b"\x00\x01\x02\x03"))
    assert "zstd-compressed binary data" in _refusal(zst)
    broken = tmp_path / "b.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    assert "gzip data that does not decompress" in _refusal(broken)


def test_this_projects_own_recording_is_named_as_such(tmp_path):
    path = write_exchange_recording(tmp_path / "rec.gz", updates=2)
    assert "already a recording of this project" in _refusal(path)


def test_a_tardis_header_must_be_exactly_incremental_book_l2(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TARDIS_HEADER + ",extra\n")
    assert "another data type" in _refusal(path)
    path.write_text("\ufeff" + TARDIS_HEADER + "\r\n")  # a BOM and CRLF are fine
    assert detect(path).format == TARDIS_L2
    path.write_text(json.dumps({"t": "header", "format": 2}) + "\n")
    assert detect(path).format == CRYPTOFEED_CAPTURE
