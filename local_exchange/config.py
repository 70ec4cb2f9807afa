"""The local exchange's settings: one frozen, validated :class:`ExchangeConfig`.

``LocalExchange(products, depth=..., rate=..., ...)`` keeps its keyword form (tests, benches
and the service call it that way); the keywords are exactly the fields below, checked here
once with the project's validation module (:mod:`common.validation`), so a bad value is
refused with the same one-line message as a bad environment variable or CLI option::

    rate=20000 is not allowed: expected a number in (0, 10000]
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinbase.feeds import DEFAULT_PRODUCTS
from common import validation
from local_exchange.auth import Credentials
from local_exchange.market import MAX_DEPTH

RATE_MAX = 10_000.0
"""Update batches a second per product that the exchange can serve (measured: it keeps up
with about 10,000 at 20 products on one core); ``ORDERBOOK_SIM_RATE`` has the same cap."""
MAX_L2_STREAMS_DEFAULT = 16
"""Advanced Trade level2 products per connection before ``too many L2 streams``."""


def _depth(name: str, value: Any) -> int | tuple[int, int]:
    """Levels per side: an int, or a ``(bids, asks)`` pair of ints."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(validation.integer(name, v, 1, MAX_DEPTH) for v in value)  # type: ignore[return-value]
    return validation.integer(name, value, 1, MAX_DEPTH)


def _credentials(
    api_key: str | None, api_secret: str | None, passphrase: str | None
) -> Credentials | None:
    given = (api_key, api_secret, passphrase)
    if all(v is None for v in given):
        return None
    if not all(isinstance(v, str) and v for v in given):
        raise validation.ConfigError(
            "api_key, api_secret and passphrase must be given together, as non-empty strings"
        )
    try:
        base64.b64decode(api_secret, validate=True)  # type: ignore[arg-type]
    except (binascii.Error, ValueError):
        raise validation.refuse(
            "api_secret", api_secret, "base64 text (as Coinbase issues it)", secret=True
        ) from None
    return Credentials(api_key, api_secret, passphrase)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ExchangeConfig:
    """Everything a :class:`~local_exchange.server.LocalExchange` is built from.

    Market (ignored when replaying): ``products``, ``depth`` (levels per side, or a
    ``(bids, asks)`` pair), ``rate`` (batches per second per product, at most 10,000),
    ``changes_per_batch``, ``seed`` (same seed, same stream), ``snapshot_depth_override``
    (per-product depth, e.g. ``{"BTC-USD": (18_000, 28_000)}`` for a real-sized book).

    Server: ``host``, ``port`` (0 = any free port), ``heartbeat_interval`` (seconds),
    ``socket_lag`` (market steps the socket runs behind the true book and its REST
    books, 0..1000; default 1: 50 ms at 20 batches a second, like ``level2_batch``),
    ``max_l2_streams`` (Advanced Trade products per connection), ``subscribe_timeout``
    (seconds a client has to send its first subscribe; 5 like Coinbase), ``compression``
    (offer permessage-deflate).

    level2 auth: ``api_key``, ``api_secret`` (base64), ``passphrase``: all or none; without
    them a level2 subscribe is refused the way Coinbase refuses an unsigned one.

    Replay: ``recording`` (a file made by ``python -m recording``; the products become the
    recording's) and ``replay_speed`` (1 = original pace, N = N times faster, None or 0 =
    as fast as possible).

    ``announce``: add ``"local_exchange": "sim"`` (or ``"replay"``) to every subscriptions
    reply, a field Coinbase never sends, so that a client labels the data as not market
    data (and ends at a served replay's normal close instead of reconnecting). On by
    default, wherever the exchange is started: simulated data must never be mistaken for
    market data. ``announce=False`` makes the replies Coinbase's byte for byte.
    """

    products: tuple[str, ...] = DEFAULT_PRODUCTS
    depth: int | tuple[int, int] = 1000
    rate: float = 20.0
    changes_per_batch: int = 5
    seed: int = 0
    snapshot_depth_override: Mapping[str, int | tuple[int, int]] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    heartbeat_interval: float = 1.0
    socket_lag: int = 1
    max_l2_streams: int = MAX_L2_STREAMS_DEFAULT
    subscribe_timeout: float = 5.0
    compression: bool = False
    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    recording: str | os.PathLike | None = None
    replay_speed: float | None = None
    announce: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("products", validation.products("products", self.products))
        put("depth", _depth("depth", self.depth))
        put("rate", validation.number("rate", self.rate, high=RATE_MAX))
        put(
            "changes_per_batch",
            validation.integer("changes_per_batch", self.changes_per_batch, 1, 10_000),
        )
        put("seed", validation.integer("seed", self.seed, -(2**63), 2**63 - 1))
        put("port", validation.integer("port", self.port, 0, 65535))
        put("socket_lag", validation.integer("socket_lag", self.socket_lag, 0, 1000))
        if not isinstance(self.host, str) or not self.host:
            raise validation.refuse("host", self.host, "a host name or IP address")
        for name in ("heartbeat_interval", "subscribe_timeout"):
            put(name, validation.number(name, getattr(self, name), high=3600))
        put(
            "max_l2_streams",
            validation.integer("max_l2_streams", self.max_l2_streams, 1, 10_000),
        )
        if self.replay_speed is not None:
            speed = validation.number(
                "replay_speed", self.replay_speed, high=1e9, low_open=False
            )
            put("replay_speed", speed or None)
        if self.recording is not None:
            put("recording", Path(self.recording))
        put("compression", bool(self.compression))
        put("announce", bool(self.announce))
        _credentials(self.api_key, self.api_secret, self.passphrase)

    @property
    def credentials(self) -> Credentials | None:
        """The level2 credentials clients must sign with, or None (level2 refused)."""
        return _credentials(self.api_key, self.api_secret, self.passphrase)

    @property
    def mode(self) -> str:
        """``"replay"`` when serving a recording, else ``"sim"``."""
        return "replay" if self.recording is not None else "sim"

    @property
    def marker(self) -> str | None:
        """What the subscriptions replies' ``local_exchange`` field says (None: absent)."""
        return self.mode if self.announce else None
