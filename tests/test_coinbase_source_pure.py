"""The source's pure parts: settings validation, subscribe messages, backoff, pacing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import threading

import pytest

from coinbase.auth import Credentials
from coinbase.feeds import FEEDS, coinbase_feed, subscribe_messages
from coinbase.pacing import Backoff, ConnectionPacer
from coinbase_source import CoinbaseSource
from common.validation import ConfigError

SECRET = base64.b64encode(b"loopback secret for the source tests").decode()
CREDS = Credentials("test-key", SECRET, "test-passphrase")


def expected_signature(timestamp: str) -> str:
    message = f"{timestamp}GET/users/self/verify".encode()
    digest = hmac.new(base64.b64decode(SECRET), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def test_subscribe_messages_resign_with_the_time() -> None:
    first = subscribe_messages("exchange-auth", "BTC-USD", CREDS, now=1_700_000_000.5)[
        0
    ]
    later = subscribe_messages("exchange-auth", "BTC-USD", CREDS, now=1_700_000_060.0)[
        0
    ]
    assert first["timestamp"] == "1700000000"
    assert first["signature"] == expected_signature("1700000000")
    assert later["signature"] == expected_signature("1700000060") != first["signature"]
    with pytest.raises(ValueError, match="credentials"):
        subscribe_messages("exchange-auth", "BTC-USD")


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"products": ["BTC-USD"], "feed": "level3"},
            "feed='level3' is not allowed: expected one of exchange, exchange-auth",
        ),
        ({"products": ["BTC-USD"], "feed": "exchange-auth"}, "COINBASE_API_KEY"),
        ({"products": []}, "products=[] is not allowed (no product given)"),
        ({"products": ["btc usd"]}, "'btc usd' is not a product id"),
        ({"products": ["BTC-USD", "BTC-USD"]}, "duplicated BTC-USD"),
        ({"products": ["BTC-USD"], "url": "http://x"}, "url='http://x' is not allowed"),
        ({"products": ["BTC-USD"], "watchdog_seconds": 0}, "watchdog_seconds=0"),
        ({"products": ["BTC-USD"], "backoff_initial": -1}, "backoff_initial=-1"),
        ({"products": ["BTC-USD"], "backoff_max": 0.1}, "backoff_max=0.1"),
        ({"products": ["BTC-USD"], "feed": ""}, "feed='' is not allowed"),
        ({"products": ["BTC-USD"], "feed": "sim"}, "url=None is not allowed"),
        (
            {"products": ["BTC-USD"], "protocol": "advanced-trade"},
            "protocol='advanced-trade' is not allowed: expected exchange, the protocol",
        ),
        (
            {"products": ["BTC-USD"], "feed": "sim", "protocol": "fix"},
            "protocol='fix' is not allowed: expected one of exchange, advanced-trade",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        CoinbaseSource(**kwargs)


def test_products_as_a_string_is_refused() -> None:
    with pytest.raises(ConfigError, match="list of product ids"):
        CoinbaseSource("BTC-USD")


def test_one_partition_per_product_and_default_urls() -> None:
    source = CoinbaseSource(["BTC-USD", "ETH-EUR"], feed="advanced-trade")
    assert source.list_parts() == ["BTC-USD", "ETH-EUR"]
    assert source.url == "wss://advanced-trade-ws.coinbase.com"
    assert source.feed == "advanced-trade"
    assert CoinbaseSource(["BTC-USD"]).url == "wss://ws-feed.exchange.coinbase.com"


# -- pacing ------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.25, 2.0, rng=random.Random(7))
    ceilings = [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.25
    assert len({Backoff(0.25, 30).next_delay() for _ in range(20)}) > 1  # jittered


@pytest.mark.slow  # 16 threads
def test_connection_pacer_spaces_attempts_across_threads() -> None:
    """Time frozen: 16 threads asking at once get exactly one slot per 1/8 s each."""
    pacer = ConnectionPacer(per_second=8, clock=lambda: 100.0)
    waits: list[float] = []
    lock = threading.Lock()

    def reserve() -> None:
        wait = pacer.reserve()
        with lock:
            waits.append(wait)

    threads = [threading.Thread(target=reserve) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == pytest.approx([i * 0.125 for i in range(16)])


def test_connection_pacer_frees_slots_as_time_passes() -> None:
    now = [0.0]
    pacer = ConnectionPacer(per_second=4, clock=lambda: now[0])
    assert [pacer.reserve() for _ in range(3)] == pytest.approx([0, 0.25, 0.5])
    now[0] = 0.6  # the third slot (0.5) is past; the next free one is 0.75
    assert pacer.reserve() == pytest.approx(0.15)
    now[0] = 10.0  # long idle: no debt, no burst credit either
    assert pacer.reserve() == 0 and pacer.reserve() == pytest.approx(0.25)


def test_a_late_caller_does_not_send_together_with_the_next() -> None:
    now = [0.0]
    pacer = ConnectionPacer(per_second=4, clock=lambda: now[0])
    first, second = pacer.reserve(), pacer.reserve()  # slots 0 and 0.25
    assert (first, second) == (0, 0.25)
    now[0] = 0.4  # the first caller was woken late: both slots are past
    assert pacer.take() == 0  # the first goes now...
    assert pacer.take() == pytest.approx(0.25 - 0.001)  # ...the second waits its turn
    now[0] = 0.65
    assert pacer.take() == 0


@pytest.mark.parametrize(
    ("feed", "protocol", "subscribed_as"),
    [
        ("exchange", None, "exchange"),
        ("exchange-auth", "exchange", "exchange-auth"),
        ("advanced-trade", None, "advanced-trade"),
        ("sim", None, "exchange"),
        ("sim", "advanced-trade", "advanced-trade"),
        ("replay", "exchange", "exchange"),
    ],
)
def test_a_feed_of_the_local_exchange_is_subscribed_as_the_coinbase_feed_of_its_protocol(
    feed: str, protocol: str | None, subscribed_as: str
) -> None:
    assert coinbase_feed(feed, protocol) == subscribed_as
    credentials = CREDS if feed == "exchange-auth" else None
    source = CoinbaseSource(
        ["BTC-USD"],
        feed=feed,
        protocol=protocol,
        url="ws://127.0.0.1:1",
        credentials=credentials,
    )
    assert source.feed == feed
    assert source.protocol == FEEDS[subscribed_as].protocol


@pytest.mark.parametrize(
    ("feed", "protocol"), [("exchange", "advanced-trade"), ("x", None)]
)
def test_a_feed_and_a_protocol_it_does_not_speak_are_refused(
    feed: str, protocol: str | None
) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(protocol or feed))):
        coinbase_feed(feed, protocol)
