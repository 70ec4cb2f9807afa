"""What the service says at start: threshold, ignored settings, resumed partitions."""

from __future__ import annotations

import logging
import os
from decimal import Decimal

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from service.inputs import ResumeLoggingSource, log_resumes
from service.runtime import announce_settings
from service.settings import METRICS_API_ENABLED, Settings


def test_threshold_is_announced_in_plain_notation(caplog):
    with caplog.at_level(logging.INFO):
        announce_settings(Settings(spread_threshold_pct=Decimal("1E+1")))
        announce_settings(Settings(spread_threshold_pct=Decimal("0.10000")))
    text = caplog.text
    assert "exceeds 10% of the ask" in text and "exceeds 0.1% of the ask" in text
    assert "E+" not in text


def test_settings_warnings_are_logged_once_each(caplog, tmp_path):
    rec = tmp_path / "r.jsonl.gz"
    rec.write_bytes(b"")
    settings = Settings.from_env(
        {"ORDERBOOK_REPLAY": str(rec), "ORDERBOOK_FEED": "sim", "ORDERBOK_FEED": "x"}
    )
    with caplog.at_level(logging.INFO):
        announce_settings(settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("ORDERBOOK_FEED is ignored" in w for w in warnings)
    assert any("did you mean ORDERBOOK_FEED" in w for w in warnings)


def test_an_api_switched_off_with_false_is_really_off(monkeypatch):
    monkeypatch.setenv(METRICS_API_ENABLED, "false")
    announce_settings(Settings.from_env({METRICS_API_ENABLED: "false"}))
    assert METRICS_API_ENABLED not in os.environ  # Bytewax would serve on any value


class _Part(StatefulSourcePartition):
    def next_batch(self):
        return []

    def snapshot(self):
        return None


class _Source(FixedPartitionedSource):
    def list_parts(self):
        return ["BTC-USD", "ETH-USD"]

    def build_part(self, step_id, for_part, resume_state):
        return _Part()


def test_a_resumed_partition_says_so_and_a_fresh_one_does_not(caplog):
    source = log_resumes(_Source())
    assert isinstance(source, ResumeLoggingSource) and log_resumes(source) is source
    assert source.list_parts() == ["BTC-USD", "ETH-USD"]
    with caplog.at_level(logging.INFO, logger="service.inputs"):
        assert isinstance(source.build_part("s", "BTC-USD", None), _Part)
        assert isinstance(source.build_part("s", "ETH-USD", "saved"), _Part)
    assert "ETH-USD: resuming from recovery state" in caplog.text
    assert "BTC-USD" not in caplog.text
