"""The local exchange's settings, lifecycle, CLI and embedded hook."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from local_exchange import embedded
from local_exchange.server import LocalExchange
from tests.support.exchange_client import (
    open_ws,
    recv,
)
from tests.support.frames import exchange_subscribe_root, text

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- settings, lifecycle, CLI
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rate": 0}, "rate"),
        ({"depth": 0}, "depth"),
        ({"products": ["btc usd"]}, "products"),
        ({"port": 70000}, "port"),
        ({"max_l2_streams": 0}, "max_l2_streams"),
        ({"heartbeat_interval": -1}, "heartbeat_interval"),
        ({"api_key": "k"}, "api_key, api_secret and passphrase"),
        (
            {"api_key": "k", "api_secret": "%%%not base64", "passphrase": "p"},
            "api_secret",
        ),
        ({"replay_speed": -2}, "replay_speed"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        LocalExchange(**kwargs)
    assert "%%%not base64" not in str(info.value)


def test_stop_is_idempotent_and_closes_clients() -> None:
    ex = LocalExchange(["BTC-USD"], depth=10).start()
    with open_ws(ex) as ws:
        ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
        recv(ws)
        ex.stop()
        ex.stop()
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=5)
        assert (
            info.value.rcvd is not None and info.value.rcvd.code == 1001
        )  # going away


def _cli(*args: str, **kw) -> subprocess.Popen:
    here = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-m", "local_exchange", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(here)},
        **kw,
    )


def test_cli_help_and_bad_options() -> None:
    proc = _cli("--help")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "--products" in out and "--replay" in out
    proc = _cli("--rate", "-3")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--rate='-3' is not allowed: expected a number in (0, 10000]" in err
    proc = _cli("--products", "btc usd")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--products" in err
    proc = _cli("--speed", "2")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--speed only applies with --replay" in err


def _ignore_sigint() -> None:
    # What a non-interactive shell does to a background job (`pytest ... &`): the child
    # starts with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("sig", "inherit_ignored_sigint"),
    [
        (signal.SIGINT, False),
        (signal.SIGINT, True),  # the Ctrl-C hang of loaded background suite runs
        (signal.SIGTERM, False),
    ],
)
def test_cli_serves_and_stops_on_signal(sig: int, inherit_ignored_sigint: bool) -> None:
    proc = _cli(
        "--port",
        "0",
        "--products",
        "BTC-USD",
        "--depth",
        "20",
        "--rate",
        "10",
        preexec_fn=_ignore_sigint if inherit_ignored_sigint else None,
    )
    try:
        url = None
        for _ in range(5):
            line = proc.stdout.readline()
            if "Exchange feed:" in line:
                url = line.split()[-1]
                break
        assert url and url.startswith("ws://127.0.0.1:")
        with connect(url, max_size=None, max_queue=None) as ws:
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            ack = recv(ws)
            assert ack["type"] == "subscriptions" and ack["local_exchange"] == "sim"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_rate_above_10000_per_product() -> None:
    proc = _cli("--rate", "10001")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--rate='10001' is not allowed: expected a number in (0, 10000]" in err
    with pytest.raises(ValueError, match=re.escape("rate=10001 is not allowed")):
        LocalExchange(["BTC-USD"], rate=10_001)
    LocalExchange(["BTC-USD"], depth=5, rate=10_000)  # the bound itself is allowed


def test_embedded_exchange_starts_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "_exchange", None)
    url = embedded.exchange_url(["BTC-USD"], 5, 10)
    try:
        # Whatever a later caller asks for, the process keeps its one exchange.
        assert embedded.exchange_url(["ETH-USD"], 50, 1) == url
        with connect(url, max_size=None, max_queue=None) as ws:
            ws.send(text(exchange_subscribe_root(["BTC-USD"], ["level2_batch"])))
            ack = recv(ws)
            assert ack["local_exchange"] == "sim"
            assert recv(ws)["product_id"] == "BTC-USD"
    finally:
        embedded._exchange.stop()
