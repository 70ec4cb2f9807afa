from decimal import Decimal

import pytest

from service.settings import ConfigError, Settings


def test_defaults():
    s = Settings.from_env({})
    assert s.products is None and s.feed == "exchange"
    assert s.spread_threshold_pct == Decimal("0.1")
    assert (s.output, s.output_path) == ("text", None)


def test_every_setting_is_read(tmp_path):
    rec = tmp_path / "r.jsonl.gz"
    rec.write_bytes(b"")
    s = Settings.from_env(
        {
            "ORDERBOOK_PRODUCTS": "btc-usd, SOL-USD",
            "ORDERBOOK_FEED": "advanced-trade",
            "ORDERBOOK_WS_URL": "ws://127.0.0.1:9/advanced-trade",
            "ORDERBOOK_SPREAD_THRESHOLD": "0",
            "ORDERBOOK_OUTPUT": f"jsonl:{tmp_path / 'o.jsonl'}",
            "ORDERBOOK_REPLAY": str(rec),
            "ORDERBOOK_WATCHDOG_SECONDS": "2.5",
        }
    )
    assert s.products == ("BTC-USD", "SOL-USD")
    assert s.feed == "advanced-trade" and s.ws_url.startswith("ws://")
    assert s.spread_threshold_pct == 0 and s.output == "jsonl"
    assert s.output_path == tmp_path / "o.jsonl" and s.replay == rec
    assert s.watchdog_seconds == 2.5


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("ORDERBOOK_PRODUCTS", "", "product ids"),
        ("ORDERBOOK_PRODUCTS", "BTCUSD", "BTC-USD"),
        ("ORDERBOOK_PRODUCTS", "BTC-USD,BTC-USD", "duplicated"),
        ("ORDERBOOK_FEED", "kraken", "exchange, exchange-auth, advanced-trade, sim"),
        ("ORDERBOOK_WS_URL", "http://x", "ws://"),
        ("ORDERBOOK_SPREAD_THRESHOLD", "0,1", "percentage"),
        ("ORDERBOOK_SPREAD_THRESHOLD", "-1", "percentage"),
        ("ORDERBOOK_SPREAD_THRESHOLD", "NaN", "percentage"),
        ("ORDERBOOK_OUTPUT", "csv", "text, jsonl, or jsonl:PATH"),
        ("ORDERBOOK_OUTPUT", "jsonl:/no/such/dir/x", "does not exist"),
        ("ORDERBOOK_REPLAY", "/no/such/file", "no such file"),
        ("ORDERBOOK_WATCHDOG_SECONDS", "0", "> 0"),
        ("ORDERBOOK_SIM_DEPTH", "100000", "1..50000"),
        ("ORDERBOOK_SIM_RATE", "20000", "(0, 10000]"),
    ],
)
def test_bad_setting_refused_with_name_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and allowed in str(err.value)


def test_unknown_setting_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="ORDERBOOK_THRESHOLD"):
        Settings.from_env({"ORDERBOOK_THRESHOLD": "0.2"})
