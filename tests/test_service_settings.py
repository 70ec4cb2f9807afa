import re
from decimal import Decimal

import pytest

from service.outputs import OutputSpec
from service.settings import SETTINGS_HELP, ConfigError, Settings
from tests.support.flow import REPO


def test_defaults():
    s = Settings.from_env({})
    assert s.products is None and s.feed == "exchange"
    assert s.spread_threshold_pct == Decimal("0.1")
    assert s.outputs == (OutputSpec("text"),) and not s.live_view


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
    assert s.spread_threshold_pct == 0
    assert s.outputs == (OutputSpec("jsonl", str(tmp_path / "o.jsonl")),)
    assert s.replay == (rec,)
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
        ("ORDERBOOK_OUTPUT", "csv", "text[:PATH], jsonl[:PATH]"),
        ("ORDERBOOK_OUTPUT", "jsonl:/no/such/dir/x", "does not exist"),
        ("ORDERBOOK_REPLAY", "/no/such/file", "no such file"),
        ("ORDERBOOK_REPLAY", "/no/such/dir/*.csv.gz", "matches no file"),
        ("ORDERBOOK_REPLAY_REPORT", "/no/such/dir/r.json", "does not exist"),
        ("ORDERBOOK_REPLAY_REPORT", "/", "a directory"),
        ("ORDERBOOK_WATCHDOG_SECONDS", "0", "[1, 3600]"),
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


@pytest.mark.parametrize("value", ["100", "100.0", "1E+3", "250"])
def test_a_threshold_of_100_or_more_can_never_match_and_is_refused(value):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_SPREAD_THRESHOLD": value})
    message = str(err.value)
    assert "ORDERBOOK_SPREAD_THRESHOLD" in message and "under 100" in message
    assert Settings.from_env({"ORDERBOOK_SPREAD_THRESHOLD": "99.9"})


def test_live_feed_settings_given_with_a_replay_are_warned_about(tmp_path):
    rec = tmp_path / "r.jsonl.gz"
    rec.write_bytes(b"")
    s = Settings.from_env(
        {
            "ORDERBOOK_REPLAY": str(rec),
            "ORDERBOOK_FEED": "advanced-trade",
            "ORDERBOOK_WS_URL": "ws://127.0.0.1:9/",
            "ORDERBOOK_AUDIT_INTERVAL": "0",
        }
    )
    [warning] = s.warnings
    assert "ORDERBOOK_FEED" in warning and "ORDERBOOK_WS_URL" in warning
    assert "ORDERBOOK_REPLAY" in warning
    assert Settings.from_env({"ORDERBOOK_FEED": "sim"}).warnings == ()
    replay = {"ORDERBOOK_REPLAY": str(rec), "ORDERBOOK_AUDIT_INTERVAL": "0"}
    assert Settings.from_env(replay).warnings == ()


def test_a_replay_repeats_recorded_audits_unless_they_are_off(tmp_path):
    rec = tmp_path / "r.jsonl.gz"
    rec.write_bytes(b"")
    # asked for by default or explicitly: the replay repeats the recorded audits (and
    # service.inputs says once when the recording holds none); off: none
    for audit in ({}, {"ORDERBOOK_AUDIT_INTERVAL": "5", "ORDERBOOK_AUDIT_RATE": "2"}):
        s = Settings.from_env({"ORDERBOOK_REPLAY": str(rec), **audit})
        assert s.warnings == () and s.replay_audits
        assert s.audit_interval == 0
    s = Settings.from_env(
        {"ORDERBOOK_REPLAY": str(rec), "ORDERBOOK_AUDIT_INTERVAL": "0.0"}
    )
    assert s.warnings == () and s.audit_interval == 0 and not s.replay_audits
    assert not Settings.from_env({"ORDERBOOK_FEED": "sim"}).replay_audits


@pytest.mark.parametrize(
    "name, meant",
    [
        ("ORDERBOK_PRODUCTS", "ORDERBOOK_PRODUCTS"),
        ("ORDERBOOKSPREAD_THRESHOLD", "ORDERBOOK_SPREAD_THRESHOLD"),
        ("orderbook_feed", "ORDERBOOK_FEED"),
        ("ORDER_BOOK_OUTPUT", "ORDERBOOK_OUTPUT"),
    ],
)
def test_a_misspelled_setting_name_is_warned_about(name, meant):
    [warning] = Settings.from_env({name: "x"}).warnings
    assert name in warning and f"did you mean {meant}?" in warning


def test_unrelated_variables_are_not_taken_for_misspellings():
    env = {
        "PATH": "/bin",
        "HOME": "/root",
        "COINBASE_API_KEY": "k",
        "COINBASE_SIM_API_KEY": "k",
        "BYTEWAX_PROCESS_ID": "0",
        "PYTHONUNBUFFERED": "1",
    }
    assert Settings.from_env(env).warnings == ()


def test_an_unknown_orderbook_setting_is_refused_with_the_near_miss():
    with pytest.raises(ConfigError, match=r"ORDERBOOK_PRODUCT \(did you mean "):
        Settings.from_env({"ORDERBOOK_PRODUCT": "BTC-USD"})


def test_the_metrics_api_is_loopback_by_default_so_an_enabled_api_is_refused():
    s = Settings.from_env({})
    assert (s.metrics_enabled, s.metrics_address, s.metrics_port) == (
        False,
        "127.0.0.1",
        3030,
    )
    # Bytewax 0.21.1 binds 0.0.0.0 whatever we say: serving it must be asked for.
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"BYTEWAX_DATAFLOW_API_ENABLED": "true"})
    assert "ORDERBOOK_METRICS_ADDRESS=0.0.0.0" in str(err.value)
    s = Settings.from_env(
        {
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "ORDERBOOK_METRICS_ADDRESS": "0.0.0.0",
            "BYTEWAX_DATAFLOW_API_PORT": "9100",
        }
    )
    assert (s.metrics_enabled, s.metrics_address, s.metrics_port) == (
        True,
        "0.0.0.0",
        9100,
    )
    # Bytewax serves the API when its variable is set at all; "false" means off here.
    assert not Settings.from_env(
        {"BYTEWAX_DATAFLOW_API_ENABLED": "false"}
    ).metrics_enabled


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("BYTEWAX_DATAFLOW_API_PORT", "99999", "1..65535"),
        ("BYTEWAX_DATAFLOW_API_PORT", "http", "1..65535"),
        ("ORDERBOOK_METRICS_ADDRESS", "10.0.0.1", "127.0.0.1, 0.0.0.0"),
    ],
)
def test_bad_metrics_setting_refused(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and allowed in str(err.value)


def _env_names(text: str) -> set[str]:
    return set(re.findall(r"\b(ORDERBOOK_[A-Z_]+)", text))


def test_env_example_and_manifest_name_only_real_settings():
    example = (REPO / ".env.example").read_text()
    assert _env_names(example) == set(SETTINGS_HELP)
    manifest = (REPO / "deploy" / "kubernetes.yaml").read_text()
    assert _env_names(manifest) <= set(SETTINGS_HELP)


def test_manifest_that_serves_metrics_says_so_for_every_interface():
    manifest = (REPO / "deploy" / "kubernetes.yaml").read_text()
    env = dict(re.findall(r"\{name: (\w+), value: \"?([^\"}]*)\"?\}", manifest))
    assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    settings = Settings.from_env({k: v for k, v in env.items() if k.isupper()})
    assert settings.metrics_enabled and settings.metrics_address == "0.0.0.0"


def test_recovery_stores_are_ignored_by_git():
    lines = (REPO / ".gitignore").read_text().splitlines()
    assert "recovery/" in lines


# -- the live connection's settings (issue 17: findings 5, 10, 20, 22, 4) ---------------


@pytest.mark.parametrize("value", ["1e300", "3601", "inf", "1e309"])
def test_a_watchdog_beyond_an_hour_is_refused_instead_of_overflowing_at_start(value):
    """1e300 passed validation, then the snapshot deadline's nanoseconds overflowed."""
    from coinbase_source import CoinbaseSource

    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_WATCHDOG_SECONDS": value})
    message = str(err.value)
    assert "ORDERBOOK_WATCHDOG_SECONDS" in message and "[1, 3600]" in message
    assert "\n" not in message
    assert Settings.from_env({"ORDERBOOK_WATCHDOG_SECONDS": "3600"}).watchdog_seconds
    with pytest.raises(ConfigError, match="watchdog_seconds"):
        CoinbaseSource(["BTC-USD"], watchdog_seconds=float(value))


@pytest.mark.parametrize("value", ["1e-9", "0.5", "0.999"])
def test_a_watchdog_shorter_than_coinbases_heartbeat_is_refused(value):
    """1e-9 s ended every connection before its snapshot: a run that never produced."""
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_WATCHDOG_SECONDS": value})
    assert "ORDERBOOK_WATCHDOG_SECONDS" in str(err.value)
    assert Settings.from_env({"ORDERBOOK_WATCHDOG_SECONDS": "1"}).watchdog_seconds == 1


@pytest.mark.parametrize(
    "value", [" 3031", "3031 ", "３０３１", "٣٠٣١", "+3031", "3_031"]
)
def test_a_metrics_port_that_bytewax_cannot_parse_is_refused(value):
    """Python's int() reads these; Bytewax's Rust parser panicked on them and the run
    went on without the /metrics it had announced."""
    assert int(value.replace("_", "")) == 3031  # what the old check relied on
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"BYTEWAX_DATAFLOW_API_PORT": value})
    message = str(err.value)
    assert "BYTEWAX_DATAFLOW_API_PORT" in message and "ASCII digits" in message
    assert (
        Settings.from_env({"BYTEWAX_DATAFLOW_API_PORT": "03031"}).metrics_port == 3031
    )


def test_a_refused_ws_url_never_shows_its_credentials():
    url = "http://alice:hunter2@feed.example/path?token=s3cr3t&depth=2"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_WS_URL": url})
    message = str(err.value)
    assert "ORDERBOOK_WS_URL" in message and "ws://" in message
    assert "hunter2" not in message and "alice" not in message
    assert "s3cr3t" not in message and "depth=2" in message
    accepted = Settings.from_env({"ORDERBOOK_WS_URL": "ws://alice:hunter2@feed/"})
    assert "hunter2" not in repr(accepted)
    # A port that is not one was refused only by each connect, for ever.
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_WS_URL": "ws://alice:hunter2@127.0.0.1:99999/"})
    assert "Port out of range" in str(err.value) and "hunter2" not in str(err.value)


def test_the_largest_message_is_a_setting_whose_default_is_the_sources():
    from coinbase.connection import MAX_FRAME_BYTES

    assert Settings.from_env({}).max_message_bytes == MAX_FRAME_BYTES == 16 * 2**20
    assert (
        Settings.from_env({"ORDERBOOK_MAX_MESSAGE_BYTES": "8388608"}).max_message_bytes
        == 8 * 2**20
    )
    for bad in ("1000", "1e9", "16MiB", "1073741824"):
        with pytest.raises(ConfigError, match="ORDERBOOK_MAX_MESSAGE_BYTES"):
            Settings.from_env({"ORDERBOOK_MAX_MESSAGE_BYTES": bad})


def test_replay_takes_paths_and_globs_and_its_report_needs_a_replay(tmp_path):
    for name in ("b.csv.gz", "a.csv.gz", "c.gz"):
        (tmp_path / name).write_bytes(b"x")
    s = Settings.from_env(
        {
            "ORDERBOOK_REPLAY": f" {tmp_path / 'c.gz'} , {tmp_path / '*.csv.gz'},",
            "ORDERBOOK_REPLAY_REPORT": str(tmp_path / "report.json"),
            "ORDERBOOK_AUDIT_INTERVAL": "0",
        }
    )
    assert s.replay == (tmp_path / "c.gz", tmp_path / "a.csv.gz", tmp_path / "b.csv.gz")
    assert s.replay_report == tmp_path / "report.json" and s.warnings == ()
    [warning] = Settings.from_env(
        {"ORDERBOOK_REPLAY_REPORT": str(tmp_path / "report.json")}
    ).warnings
    assert "ORDERBOOK_REPLAY_REPORT is ignored" in warning


OUTPUT_FORMS = (
    "text[:PATH], jsonl[:PATH], kafka:HOST:PORT/TOPIC, parquet:DIR, tardis:DIR, "
    "live (full-screen terminal view)"
)


@pytest.mark.parametrize(
    "raw, why",
    [
        ("csv", "'csv': unknown output 'csv'"),
        ("live:3", "'live:3': live takes no argument"),
        ("live,live", "'live' given twice"),
        ("text,live,", "an empty entry"),
    ],
)
def test_the_output_list_is_refused_as_one_with_its_live_entry(raw, why):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ORDERBOOK_OUTPUT": raw})
    assert str(err.value) == (
        f"ORDERBOOK_OUTPUT={raw!r} is not allowed ({why}): expected a "
        f"comma-separated list of outputs: {OUTPUT_FORMS}"
    )


def test_live_turns_on_a_view_beside_the_outputs(tmp_path):
    s = Settings.from_env({"ORDERBOOK_OUTPUT": f"LIVE,jsonl:{tmp_path}/a"})
    assert s.live_view and s.outputs == (OutputSpec("jsonl", f"{tmp_path}/a"),)
    assert not Settings.from_env({"ORDERBOOK_OUTPUT": "text"}).live_view


def test_audit_settings_defaults_and_bounds():
    s = Settings.from_env({})
    assert (s.audit_interval, s.audit_levels, s.audit_rate, s.rest_url) == (
        60.0,
        50,
        3.0,
        None,
    )
    s = Settings.from_env(
        {
            "ORDERBOOK_AUDIT_INTERVAL": "0",
            "ORDERBOOK_AUDIT_LEVELS": "1000",
            "ORDERBOOK_AUDIT_RATE": "10",
            "ORDERBOOK_REST_URL": "http://127.0.0.1:8123",
        }
    )
    assert (s.audit_interval, s.audit_levels, s.audit_rate) == (0.0, 1000, 10.0)
    assert s.rest_url == "http://127.0.0.1:8123" and "8123" not in repr(s)
    bad = {
        "ORDERBOOK_AUDIT_INTERVAL": ("-1", "x", "nan", "100000"),
        "ORDERBOOK_AUDIT_LEVELS": ("0", "1001", "5.5"),
        "ORDERBOOK_AUDIT_RATE": ("0", "11", "-3", "inf"),
        "ORDERBOOK_REST_URL": ("ws://h", "api.coinbase.com", "https://u:secret@/x"),
    }
    for name, values in bad.items():
        for value in values:
            with pytest.raises(ConfigError) as info:
                Settings.from_env({name: value})
            message = str(info.value)
            assert message.startswith(f"{name}=") and "\n" not in message
            assert "secret" not in message


def test_the_audit_rate_bound_is_the_schedulers():
    from coinbase.audit import RATE_MAX
    from coinbase.rest import ADVANCED_TRADE_MAX_LIMIT
    from service.settings import AUDIT_LEVELS_MAX, AUDIT_RATE_MAX

    assert AUDIT_RATE_MAX == RATE_MAX and AUDIT_LEVELS_MAX == ADVANCED_TRADE_MAX_LIMIT
