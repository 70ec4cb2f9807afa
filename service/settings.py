"""Settings of the order book service, read from environment variables and validated once.

A bad setting is refused at start with the variable's name and what is allowed, so that a
typo never turns into a silently wrong run (for instance a threshold of "0,1").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from coinbase.feeds import FEEDS
from service import validation
from service.validation import ConfigError, refuse

FEED_CHOICES = (*FEEDS, "sim")
"""What ``ORDERBOOK_FEED`` may name: a Coinbase feed, or ``sim`` (the local exchange)."""
SIM_RATE_MAX = 10_000.0
"""Update batches a second per product that the local exchange can serve (measured: it
keeps up with about 10,000 at 20 products on one core)."""
OUTPUT_FORMATS = ("text", "jsonl", "jsonl:PATH")

SETTINGS_HELP = {
    "ORDERBOOK_PRODUCTS": "comma-separated product ids, e.g. BTC-USD,ETH-USD",
    "ORDERBOOK_FEED": "one of " + ", ".join(FEED_CHOICES),
    "ORDERBOOK_WS_URL": "a ws:// or wss:// URL overriding the feed's default",
    "ORDERBOOK_SPREAD_THRESHOLD": "a percentage of the ask >= 0 (0.1 means 0.1%)",
    "ORDERBOOK_OUTPUT": "text, jsonl, or jsonl:PATH",
    "ORDERBOOK_REPLAY": "path of a recording made by python -m recording",
    "ORDERBOOK_WATCHDOG_SECONDS": "seconds of silence before a connection counts as dead (> 0)",
    "ORDERBOOK_SIM_DEPTH": "levels per side of the local exchange's books (1 to 50000)",
    "ORDERBOOK_SIM_RATE": "update batches per second per product on the local exchange (0 to 10000)",
}


@dataclass(frozen=True)
class Settings:
    """Everything the dataflow needs to know, already validated."""

    products: tuple[str, ...] | None = None
    """None: the defaults, or when replaying, every product of the recording."""
    feed: str = "exchange"
    ws_url: str | None = None
    spread_threshold_pct: Decimal = Decimal("0.1")
    output: str = "text"
    output_path: Path | None = None
    replay: Path | None = None
    watchdog_seconds: float = 5.0
    sim_depth: int = 1000
    sim_rate: float = 20.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``ORDERBOOK_*`` variable; raises :class:`ConfigError`."""
        env = os.environ if env is None else env
        unknown = sorted(
            k for k in env if k.startswith("ORDERBOOK_") and k not in SETTINGS_HELP
        )
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]}: the settings are "
                + ", ".join(SETTINGS_HELP)
            )
        output, output_path = parse_output(env.get("ORDERBOOK_OUTPUT", "text"))
        return cls(
            products=parse_products(env["ORDERBOOK_PRODUCTS"])
            if "ORDERBOOK_PRODUCTS" in env
            else None,
            feed=validation.choice(
                "ORDERBOOK_FEED", env.get("ORDERBOOK_FEED", "exchange"), FEED_CHOICES
            ),
            ws_url=parse_url(env.get("ORDERBOOK_WS_URL")),
            spread_threshold_pct=parse_threshold(
                env.get("ORDERBOOK_SPREAD_THRESHOLD", "0.1")
            ),
            output=output,
            output_path=output_path,
            replay=parse_replay(env.get("ORDERBOOK_REPLAY")),
            watchdog_seconds=validation.number(
                "ORDERBOOK_WATCHDOG_SECONDS", env.get("ORDERBOOK_WATCHDOG_SECONDS", "5")
            ),
            sim_depth=validation.integer(
                "ORDERBOOK_SIM_DEPTH", env.get("ORDERBOOK_SIM_DEPTH", "1000"), 1, 50_000
            ),
            sim_rate=validation.number(
                "ORDERBOOK_SIM_RATE",
                env.get("ORDERBOOK_SIM_RATE", "20"),
                high=SIM_RATE_MAX,
            ),
        )


def parse_products(raw: str, name: str = "ORDERBOOK_PRODUCTS") -> tuple[str, ...]:
    return validation.products(name, raw)


def parse_url(raw: str | None, name: str = "ORDERBOOK_WS_URL") -> str | None:
    return validation.ws_url(name, raw)


def parse_threshold(raw: str) -> Decimal:
    return validation.decimal(
        "ORDERBOOK_SPREAD_THRESHOLD",
        raw,
        SETTINGS_HELP["ORDERBOOK_SPREAD_THRESHOLD"],
        low=Decimal(0),
        high=Decimal(100),
    )


def parse_output(raw: str) -> tuple[str, Path | None]:
    name = "ORDERBOOK_OUTPUT"
    expected = SETTINGS_HELP[name]
    value = raw.strip()
    if value in ("text", "jsonl"):
        return value, None
    if value.startswith("jsonl:") and value[len("jsonl:") :].strip():
        path = Path(value[len("jsonl:") :].strip())
        if not path.parent.is_dir():
            raise refuse(
                name, raw, expected, f"directory {str(path.parent)!r} does not exist"
            )
        return "jsonl", path
    raise refuse(name, raw, expected)


def parse_replay(raw: str | None) -> Path | None:
    if raw is None or not raw.strip():
        return None
    path = Path(raw.strip())
    if not path.is_file():
        raise refuse(
            "ORDERBOOK_REPLAY", raw, SETTINGS_HELP["ORDERBOOK_REPLAY"], "no such file"
        )
    return path
