"""ORDERBOOK_OUTPUT refusals at start that need no socket and no process: the same target
named twice, secrets in a refused list, Kafka options that are not plain settings, an
empty path, a FIFO that nobody reads (issue 17, findings 7, 9, 23, 28)."""

from __future__ import annotations

import os

import pytest

from common.validation import ConfigError
from service.outputs import parse_outputs


def _refusal(raw: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_outputs(raw)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "first, second",
    [
        ("jsonl:F", "jsonl:./F"),
        ("jsonl:F", "text:F"),
        ("text:F", "jsonl:LINK"),  # a symbolic link to the same file
        ("jsonl:F", "jsonl:HARD"),  # a hard link: the same file under another name
        ("parquet:D", "parquet:./D/"),
        ("text", "jsonl"),  # both on stdout
    ],
)
def test_same_file_twice_is_refused(tmp_path, monkeypatch, first, second):
    """Finding 7: two outputs writing to one file wrote every record twice."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "F").write_text("")
    (tmp_path / "LINK").symlink_to(tmp_path / "F")
    os.link(tmp_path / "F", tmp_path / "HARD")
    message = _refusal(f"{first},{second}")
    assert "ORDERBOOK_OUTPUT" in message and second in message and first in message
    assert "same" in message


def test_different_files_are_still_accepted(tmp_path):
    specs = parse_outputs(
        f"text,jsonl:{tmp_path}/a,text:{tmp_path}/b,parquet:{tmp_path}/p,"
        f"parquet:{tmp_path}/q"
    ).specs
    assert len(specs) == 5


@pytest.mark.parametrize(
    "raw",
    [
        "text,,kafka:127.0.0.1:1/t?sasl.password=hunter2",
        "kafak:127.0.0.1:1/t?sasl.password=hunter2",
        "kafka:127.0.0.1:1/t?sasl.password=hunter2&bad",
        "kafka:127.0.0.1:1/t?sasl.password=hunter2&error_cb=1",
    ],
)
def test_a_kafka_password_is_not_shown_in_a_refused_list(raw):
    """Finding 9: the whole list is echoed in a refusal; its secrets must not be."""
    message = _refusal(raw)
    assert "hunter2" not in message
    assert "ORDERBOOK_OUTPUT" in message


@pytest.mark.parametrize(
    "option",
    [
        "error_cb=1",
        "stats_cb=1",
        "throttle_cb=1",
        "oauth_cb=1",
        "logger=1",
        "on_delivery=1",
        "default.topic.config=1",
        "delivery.report.only.error=true",
    ],
)
def test_kafka_options_that_are_not_plain_settings_are_refused_in_one_line(option):
    """Finding 23: ``?error_cb=1`` ended the start in a TypeError traceback."""
    name = option.partition("=")[0]
    message = _refusal(f"kafka:127.0.0.1:1/orderbook?{option}")
    assert name in message and "ORDERBOOK_OUTPUT" in message
    assert "not a plain librdkafka setting" in message


@pytest.mark.parametrize("kind", ["jsonl", "text"])
def test_an_empty_path_is_refused_saying_it_is_empty(kind):
    """Finding 28: ``jsonl:`` said "cannot work:  is a directory"."""
    message = _refusal(f"{kind}:")
    assert "empty" in message and "is a directory" not in message
    assert f"'{kind}' alone" in message  # how to ask for stdout


def test_a_fifo_without_a_reader_is_refused_naming_it(tmp_path):
    """Finding 28: a FIFO nobody reads said "[Errno 6] No such device or address"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    message = _refusal(f"jsonl:{fifo}")
    assert "a FIFO with no reader" in message and str(fifo) in message
    assert "Errno" not in message


def test_redact_text_takes_secret_values_out_of_a_client_message():
    """A client's error text may quote the value it refused (finding 9's last path)."""
    from common.text import redact_text

    settings = {"sasl.password": "hunter2", "acks": "all", "ssl.key.password": ""}
    text = 'Invalid value "hunter2" for "sasl.password"; acks=all'
    assert (
        redact_text(text, settings)
        == 'Invalid value "***" for "sasl.password"; acks=all'
    )
