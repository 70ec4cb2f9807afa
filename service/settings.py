"""Settings of the order book service, read from environment variables and validated once.

A bad setting is refused at start with the variable's name and what is allowed, so that a
typo never turns into a silently wrong run (for instance a threshold of "0,1").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from events import PRODUCT_ID

DEFAULT_PRODUCTS = ("BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR")
FEEDS = ("exchange", "exchange-auth", "advanced-trade", "sim")
OUTPUT_FORMATS = ("text", "jsonl", "jsonl:PATH")

SETTINGS_HELP = {
    "ORDERBOOK_PRODUCTS": "comma-separated product ids, e.g. BTC-USD,ETH-USD",
    "ORDERBOOK_FEED": "one of " + ", ".join(FEEDS),
    "ORDERBOOK_WS_URL": "a ws:// or wss:// URL overriding the feed's default",
    "ORDERBOOK_SPREAD_THRESHOLD": "a percentage of the ask >= 0 (0.1 means 0.1%)",
    "ORDERBOOK_OUTPUT": "text, jsonl, or jsonl:PATH",
    "ORDERBOOK_REPLAY": "path of a recording made by recording.py",
    "ORDERBOOK_WATCHDOG_SECONDS": "seconds of silence before a connection counts as dead (> 0)",
    "ORDERBOOK_SIM_DEPTH": "levels per side of the local exchange's books (1 to 50000)",
    "ORDERBOOK_SIM_RATE": "update batches per second per product on the local exchange (> 0)",
}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and what is allowed."""


def _refuse(name: str, value: str, why: str = "", setting: str = "") -> ConfigError:
    """``name`` is what the user typed (a variable or a command-line option)."""
    detail = f" ({why})" if why else ""
    expected = SETTINGS_HELP[setting or name]
    return ConfigError(f"{name}={value!r} is not allowed{detail}: expected {expected}")


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
            feed=parse_choice(
                "ORDERBOOK_FEED", env.get("ORDERBOOK_FEED", "exchange"), FEEDS
            ),
            ws_url=parse_url(env.get("ORDERBOOK_WS_URL")),
            spread_threshold_pct=parse_threshold(
                env.get("ORDERBOOK_SPREAD_THRESHOLD", "0.1")
            ),
            output=output,
            output_path=output_path,
            replay=parse_replay(env.get("ORDERBOOK_REPLAY")),
            watchdog_seconds=parse_positive_float(
                "ORDERBOOK_WATCHDOG_SECONDS", env.get("ORDERBOOK_WATCHDOG_SECONDS", "5")
            ),
            sim_depth=parse_int_range(
                "ORDERBOOK_SIM_DEPTH", env.get("ORDERBOOK_SIM_DEPTH", "1000"), 1, 50_000
            ),
            sim_rate=parse_positive_float(
                "ORDERBOOK_SIM_RATE", env.get("ORDERBOOK_SIM_RATE", "20")
            ),
        )


def parse_products(raw: str, name: str = "ORDERBOOK_PRODUCTS") -> tuple[str, ...]:
    products = tuple(p.strip().upper() for p in raw.split(",") if p.strip())
    if not products:
        raise _refuse(name, raw, "no product given", "ORDERBOOK_PRODUCTS")
    for product in products:
        if not PRODUCT_ID.fullmatch(product):
            raise _refuse(
                name,
                raw,
                f"{product!r} is not a product id like BTC-USD",
                "ORDERBOOK_PRODUCTS",
            )
    duplicates = sorted({p for p in products if products.count(p) > 1})
    if duplicates:
        raise _refuse(
            name, raw, "duplicated " + ", ".join(duplicates), "ORDERBOOK_PRODUCTS"
        )
    return products


def parse_choice(name: str, raw: str, allowed: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in allowed:
        raise _refuse(name, raw)
    return value


def parse_url(raw: str | None, name: str = "ORDERBOOK_WS_URL") -> str | None:
    if raw is None or not raw.strip():
        return None
    if not re.match(r"^wss?://[^/\s]+", raw.strip()):
        raise _refuse(name, raw, setting="ORDERBOOK_WS_URL")
    return raw.strip()


def parse_threshold(raw: str) -> Decimal:
    name = "ORDERBOOK_SPREAD_THRESHOLD"
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise _refuse(name, raw, "not a number") from None
    if not value.is_finite() or value < 0:
        raise _refuse(name, raw)
    return value


def parse_output(raw: str) -> tuple[str, Path | None]:
    name = "ORDERBOOK_OUTPUT"
    value = raw.strip()
    if value in ("text", "jsonl"):
        return value, None
    if value.startswith("jsonl:") and value[len("jsonl:") :].strip():
        path = Path(value[len("jsonl:") :].strip())
        if not path.parent.is_dir():
            raise _refuse(name, raw, f"directory {str(path.parent)!r} does not exist")
        return "jsonl", path
    raise _refuse(name, raw)


def parse_replay(raw: str | None) -> Path | None:
    if raw is None or not raw.strip():
        return None
    path = Path(raw.strip())
    if not path.is_file():
        raise _refuse("ORDERBOOK_REPLAY", raw, "no such file")
    return path


def parse_positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _refuse(name, raw, "not a number") from None
    if not (value > 0 and value != float("inf")):
        raise _refuse(name, raw)
    return value


def parse_int_range(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise _refuse(name, raw, "not a whole number") from None
    if not low <= value <= high:
        raise _refuse(name, raw)
    return value
