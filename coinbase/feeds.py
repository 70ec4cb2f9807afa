"""The Coinbase feeds this service reads, defined once: URLs, channels, subscribe messages.

Two words, one meaning each:

* a **feed** is what a user picks or where data came from: ``exchange``,
  ``exchange-auth`` and ``advanced-trade`` (Coinbase's, :data:`FEEDS`), ``sim`` (the
  local exchange's simulated market) and ``replay`` (a recording, replayed by the
  service or served by the local exchange), :data:`LOCAL_FEEDS`. Every event and record
  carries its feed (``"feed"`` in the output, the ``feed`` label of the metrics); the
  local exchange names its feed in its subscriptions reply, and from then on that is the
  data's feed, whatever URL led there;
* a **protocol** is a wire dialect: ``exchange`` (ws-feed) or ``advanced-trade``; two
  Coinbase feeds share the ``exchange`` protocol, and the local exchange speaks both (it
  is subscribed to as the Coinbase feed of its protocol: :func:`coinbase_feed`).
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from coinbase.auth import Credentials
from common.domain import PRODUCT_ID

EXCHANGE = "exchange"
ADVANCED_TRADE = "advanced-trade"
PROTOCOLS = (EXCHANGE, ADVANCED_TRADE)
"""The two wire dialects."""

DEFAULT_PRODUCTS = ("BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR")
"""Products read when none are named: two liquid USD books and their EUR twins."""


class FeedSpec(NamedTuple):
    """A feed: its protocol, default URL and book channel."""

    protocol: str
    url: str
    channel: str


FEEDS: dict[str, FeedSpec] = {
    "exchange": FeedSpec(
        "exchange", "wss://ws-feed.exchange.coinbase.com", "level2_batch"
    ),
    "exchange-auth": FeedSpec(
        "exchange", "wss://ws-feed.exchange.coinbase.com", "level2"
    ),
    "advanced-trade": FeedSpec(
        "advanced-trade", "wss://advanced-trade-ws.coinbase.com", "level2"
    ),
}
"""Feed name -> (protocol, default url, book channel)."""


LOCAL_FEEDS = ("sim", "replay")
"""The local exchange's feeds: what its subscriptions reply says it serves."""


def coinbase_feed(feed: str, protocol: str | None = None) -> str:
    """The Coinbase feed whose subscribe messages ``feed`` takes: itself, or for a feed of
    the local exchange the Coinbase feed of ``protocol`` (default ``exchange``).

    Raises ValueError for an unknown feed or protocol, or a protocol the feed does not
    speak.
    """
    if feed in LOCAL_FEEDS:
        protocol = EXCHANGE if protocol is None else protocol
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}"
            )
        return protocol  # the Coinbase feed named as its protocol
    spec = _check_feed(feed)
    if protocol is not None and protocol != spec.protocol:
        raise ValueError(f"feed {feed!r} speaks {spec.protocol}, not {protocol!r}")
    return feed


def _check_feed(feed: str) -> FeedSpec:
    spec = FEEDS.get(feed) if isinstance(feed, str) else None
    if spec is None:
        raise ValueError(f"unknown feed {feed!r}; allowed: {', '.join(FEEDS)}")
    return spec


def _check_product(product_id: Any) -> str:
    if not isinstance(product_id, str) or not PRODUCT_ID.fullmatch(product_id):
        raise ValueError(
            f"malformed product id {product_id!r}: expected upper-case BASE-QUOTE such as "
            "'BTC-USD'"
        )
    return product_id


def subscribe_messages(
    feed: str,
    product_id: str,
    credentials: Credentials | None = None,
    now: float | None = None,
) -> list[dict]:
    """What to send right after connecting (signed afresh at ``now`` for exchange-auth)."""
    spec = _check_feed(feed)
    _check_product(product_id)
    if spec.protocol == "advanced-trade":
        # One channel per subscribe message on Advanced Trade; heartbeats keep the
        # connection from idling out and feed the watchdog.
        return [
            {"type": "subscribe", "product_ids": [product_id], "channel": spec.channel},
            {"type": "subscribe", "channel": "heartbeats"},
        ]
    message: dict[str, Any] = {
        "type": "subscribe",
        "channels": [
            {"name": spec.channel, "product_ids": [product_id]},
            {"name": "heartbeat", "product_ids": [product_id]},
        ],
    }
    if feed == "exchange-auth":
        if credentials is None:
            raise ValueError(
                "feed 'exchange-auth' needs credentials (Credentials.from_env())"
            )
        timestamp = str(int(time.time() if now is None else now))
        message.update(
            signature=credentials.sign(timestamp),
            key=credentials.key,
            passphrase=credentials.passphrase,
            timestamp=timestamp,
        )
    return [message]
