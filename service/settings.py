"""Settings of the order book service, read from environment variables and validated once.

A bad setting is refused at start with the variable's name and what is allowed, so that a
typo never turns into a silently wrong run (for instance a threshold of "0,1").
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from coinbase.feeds import FEEDS
from common import validation
from common.validation import ConfigError, refuse
from local_exchange.config import RATE_MAX
from service.outputs import HELP as OUTPUT_HELP
from service.outputs import LIVE_VIEW, OutputSpec, parse_outputs, with_depth
from service.runtime import METRICS_API_ENABLED, METRICS_API_PORT

FEED_CHOICES = (*FEEDS, "sim")
"""What ``ORDERBOOK_FEED`` may name: a Coinbase feed, or ``sim`` (the local exchange)."""
METRICS_ADDRESSES = ("127.0.0.1", "0.0.0.0")
"""Where Bytewax's dataflow API (``/metrics``, ``/dataflow``) may be reached from."""
_FALSE = ("", "0", "false", "no", "off")
_ASCII_DIGITS = re.compile(r"[0-9]+")

SETTINGS_HELP = {
    "ORDERBOOK_PRODUCTS": "comma-separated product ids, e.g. BTC-USD,ETH-USD",
    "ORDERBOOK_FEED": "one of " + ", ".join(FEED_CHOICES),
    "ORDERBOOK_WS_URL": "a ws:// or wss:// URL overriding the feed's default",
    "ORDERBOOK_SPREAD_THRESHOLD": (
        "a percentage of the ask, at least 0 and under 100 (0.1 means 0.1%; "
        "a spread is always under 100% of the ask)"
    ),
    "ORDERBOOK_OUTPUT": OUTPUT_HELP,
    "ORDERBOOK_REPLAY": (
        "comma-separated paths or globs of files to replay: recordings made by "
        "python -m recording, tardis.dev incremental_book_L2 CSV (.csv, .csv.gz), "
        "cryptofeed captures (2.x raw files, v3 .jsonl.zst)"
    ),
    "ORDERBOOK_REPLAY_REPORT": (
        "a file to write the replay's data-quality report to, as JSON (its directory "
        "must exist); unset: the report is only printed"
    ),
    "ORDERBOOK_WATCHDOG_SECONDS": "seconds of silence before a connection counts as dead (1 to 3600)",
    "ORDERBOOK_SIM_DEPTH": "levels per side of the local exchange's books (1 to 50000)",
    "ORDERBOOK_SIM_RATE": "update batches per second per product on the local exchange (0 to 10000)",
    "ORDERBOOK_METRICS_ADDRESS": (
        "127.0.0.1 or 0.0.0.0: who may reach Bytewax's metrics endpoint "
        f"(when {METRICS_API_ENABLED} is set)"
    ),
    "ORDERBOOK_DASHBOARD": "HOST:PORT or PORT (loopback) of the web dashboard; unset: off",
    "ORDERBOOK_DASHBOARD_ORIGINS": (
        "comma-separated web origins (http://HOST:PORT) the dashboard answers besides "
        "its own address; unset: its own only"
    ),
}

IGNORED_BY_REPLAY = (
    "ORDERBOOK_FEED",
    "ORDERBOOK_WS_URL",
    "ORDERBOOK_WATCHDOG_SECONDS",
    "ORDERBOOK_SIM_DEPTH",
    "ORDERBOOK_SIM_RATE",
)
"""Settings of a live input, which a replay does not use."""
# -- the live connection (coinbase/connection.py) ---------------------------------------
WATCHDOG_MIN = 1.0
"""Coinbase sends a heartbeat every second (per product on the Exchange feed, per
connection on Advanced Trade): a shorter watchdog would end healthy quiet connections
between two heartbeats (and 1e-9 s ended every connection before its snapshot)."""
WATCHDOG_MAX = 3600.0
"""An hour of silence; 1e300 passed validation and overflowed at start."""
MESSAGE_BYTES_DEFAULT = 16 * 2**20
"""coinbase.connection.MAX_FRAME_BYTES (not imported: the settings of a replay do not
load the live feed's modules); a test checks that they agree."""
MESSAGE_BYTES_MIN, MESSAGE_BYTES_MAX = 2**20, 256 * 2**20
SETTINGS_HELP["ORDERBOOK_MAX_MESSAGE_BYTES"] = (
    f"largest WebSocket message accepted, in bytes ({MESSAGE_BYTES_MIN} to "
    f"{MESSAGE_BYTES_MAX}; default {MESSAGE_BYTES_DEFAULT}, 16 MiB)"
)
IGNORED_BY_REPLAY += ("ORDERBOOK_MAX_MESSAGE_BYTES",)
# -- depth records and outputs (service/outputs) ----------------------------------------
DEPTH_LEVELS_MAX = 1000
SETTINGS_HELP.update(
    {
        "ORDERBOOK_DEPTH_LEVELS": f"levels per side of depth records, 0 (off) to {DEPTH_LEVELS_MAX}",
        "ORDERBOOK_DEPTH_INTERVAL": "seconds of feed time between depth records of a product (>= 0; 0: every book change)",
    }
)
# -- REST audits (coinbase/audit.py, issue 19) -------------------------------------------
AUDIT_INTERVAL_DEFAULT = 60.0
AUDIT_INTERVAL_MAX = 86_400.0
AUDIT_LEVELS_DEFAULT, AUDIT_LEVELS_MAX = 50, 1000
AUDIT_RATE_DEFAULT, AUDIT_RATE_MAX = 3.0, 10.0
"""coinbase.audit.RATE_MAX (not imported: a replay does not load the live feed's
modules); a test checks that they agree. Coinbase allows 10 public requests a second
per IP."""
SETTINGS_HELP.update(
    {
        "ORDERBOOK_AUDIT_INTERVAL": (
            "seconds between two REST audits of one product (0: off; at most "
            f"{AUDIT_INTERVAL_MAX:g}; default {AUDIT_INTERVAL_DEFAULT:g})"
        ),
        "ORDERBOOK_AUDIT_LEVELS": (
            f"levels per side a REST audit compares, 1 to {AUDIT_LEVELS_MAX} "
            f"(default {AUDIT_LEVELS_DEFAULT})"
        ),
        "ORDERBOOK_REST_URL": (
            "an http:// or https:// URL overriding the REST base of the audits "
            "(default: Coinbase's for the feed, the local exchange's for sim)"
        ),
        "ORDERBOOK_AUDIT_RATE": (
            f"REST requests per second per process, above 0 and at most "
            f"{AUDIT_RATE_MAX:g} (default {AUDIT_RATE_DEFAULT:g})"
        ),
    }
)


# -- stalls and health (service/health.py) ---------------------------------------------
STALL_SECONDS_DEFAULT = 30.0
STALL_SECONDS_MIN, STALL_SECONDS_MAX = 1.0, 3600.0
SETTINGS_HELP.update(
    {
        "ORDERBOOK_STALL_SECONDS": (
            "seconds a live feed may deliver while the dataflow takes nothing, or a "
            "cluster peer may answer nothing, before "
            f"the process exits with status 1 (0: never; else {STALL_SECONDS_MIN:g} to "
            f"{STALL_SECONDS_MAX:g}; default {STALL_SECONDS_DEFAULT:g})"
        ),
        "ORDERBOOK_HEALTH": (
            "HOST:PORT or PORT (loopback) of the /livez and /readyz endpoint; unset: off"
        ),
    }
)


@dataclass(frozen=True)
class Settings:
    """Everything the dataflow needs to know, already validated."""

    products: tuple[str, ...] | None = None
    """None: the defaults, or when replaying, every product of the recording."""
    feed: str = "exchange"
    ws_url: str | None = field(default=None, repr=False)
    """May carry credentials (user info, a token): kept out of the repr."""
    spread_threshold_pct: Decimal = Decimal("0.1")
    replay: tuple[Path, ...] | None = None
    """The files ``ORDERBOOK_REPLAY`` names (globs expanded); None: a live feed."""
    replay_report: Path | None = None
    watchdog_seconds: float = 5.0
    sim_depth: int = 1000
    sim_rate: float = 20.0
    metrics_enabled: bool = False
    """Bytewax serves its dataflow API (``BYTEWAX_DATAFLOW_API_ENABLED`` set, not false)."""
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 3030
    warnings: tuple[str, ...] = ()
    """What the settings ignore or suspect (misspelled names); logged once at start."""
    dashboard: tuple[str, int] | None = None
    """(host, port) of the web dashboard (views.dashboard); None: no dashboard."""
    dashboard_origins: tuple[str, ...] = ()
    """Web origins the dashboard answers besides its own address."""
    # depth records and outputs
    outputs: tuple[OutputSpec, ...] = ()
    """Every output ``ORDERBOOK_OUTPUT`` names, in order (``text`` when it is unset);
    empty: no output but the views (``live`` alone), or a caller passing its own sink."""
    live_view: bool = False
    """``ORDERBOOK_OUTPUT`` names ``live``: the full-screen terminal view (a view, fed
    before the spread filter, not one of the outputs; see :mod:`views.wiring`)."""
    depth_levels: int = 0
    depth_interval: float = 1.0
    # the live connection
    max_message_bytes: int = MESSAGE_BYTES_DEFAULT
    # stalls and health
    stall_seconds: float = STALL_SECONDS_DEFAULT
    """Seconds without progress while the feed delivers before the process exits;
    0: never (``service/health.py``)."""
    health: tuple[str, int] | None = None
    """(host, port) of the health endpoint; None: off."""
    # REST audits
    audit_interval: float = 0.0
    """Seconds between two audits of one product; 0: off (a replay, or asked). Read
    from the environment, 60 by default on a live feed."""
    audit_levels: int = AUDIT_LEVELS_DEFAULT
    rest_url: str | None = field(default=None, repr=False)
    """None: the feed's (Coinbase's, or the local exchange's); may carry credentials."""
    audit_rate: float = AUDIT_RATE_DEFAULT
    replay_audits: bool = False
    """A replay repeats the REST audits its recording holds (``ORDERBOOK_AUDIT_INTERVAL``
    not 0); a recording without any says :data:`coinbase.rest.REPLAY_NO_AUDITS` once
    (``service.inputs``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every ``ORDERBOOK_*`` variable; raises :class:`ConfigError`."""
        env = os.environ if env is None else env
        unknown = sorted(
            k for k in env if k.startswith("ORDERBOOK_") and k not in SETTINGS_HELP
        )
        if unknown:
            hint = _did_you_mean(unknown[0])
            raise ConfigError(
                f"unknown setting {unknown[0]}"
                + (f" (did you mean {hint}?)" if hint else "")
                + ": the settings are "
                + ", ".join(SETTINGS_HELP)
            )
        outputs = parse_outputs(env.get("ORDERBOOK_OUTPUT", "text"))
        depth = parse_depth(env)
        specs = with_depth(
            outputs.specs, depth["depth_levels"], depth["depth_interval"]
        )
        metrics_enabled, metrics_address, metrics_port = parse_metrics(env)
        return cls(
            products=validation.products(
                "ORDERBOOK_PRODUCTS", env["ORDERBOOK_PRODUCTS"]
            )
            if "ORDERBOOK_PRODUCTS" in env
            else None,
            feed=validation.choice(
                "ORDERBOOK_FEED", env.get("ORDERBOOK_FEED", "exchange"), FEED_CHOICES
            ),
            ws_url=validation.ws_url("ORDERBOOK_WS_URL", env.get("ORDERBOOK_WS_URL")),
            spread_threshold_pct=parse_threshold(
                env.get("ORDERBOOK_SPREAD_THRESHOLD", "0.1")
            ),
            replay=parse_replay(env.get("ORDERBOOK_REPLAY")),
            replay_report=parse_replay_report(env.get("ORDERBOOK_REPLAY_REPORT")),
            watchdog_seconds=validation.number(
                "ORDERBOOK_WATCHDOG_SECONDS",
                env.get("ORDERBOOK_WATCHDOG_SECONDS", "5"),
                low=WATCHDOG_MIN,
                low_open=False,
                high=WATCHDOG_MAX,
            ),
            sim_depth=validation.integer(
                "ORDERBOOK_SIM_DEPTH", env.get("ORDERBOOK_SIM_DEPTH", "1000"), 1, 50_000
            ),
            sim_rate=validation.number(
                "ORDERBOOK_SIM_RATE",
                env.get("ORDERBOOK_SIM_RATE", "20"),
                high=RATE_MAX,
            ),
            metrics_enabled=metrics_enabled,
            metrics_address=metrics_address,
            metrics_port=metrics_port,
            warnings=settings_warnings(env),
            dashboard=validation.host_port(
                "ORDERBOOK_DASHBOARD", env.get("ORDERBOOK_DASHBOARD")
            ),
            dashboard_origins=validation.origins(
                "ORDERBOOK_DASHBOARD_ORIGINS", env.get("ORDERBOOK_DASHBOARD_ORIGINS")
            ),
            outputs=specs,
            live_view=LIVE_VIEW in outputs.views,
            **depth,
            **parse_audit(env),
            max_message_bytes=validation.integer(
                "ORDERBOOK_MAX_MESSAGE_BYTES",
                env.get("ORDERBOOK_MAX_MESSAGE_BYTES", str(MESSAGE_BYTES_DEFAULT)),
                MESSAGE_BYTES_MIN,
                MESSAGE_BYTES_MAX,
            ),
            stall_seconds=parse_stall_seconds(env.get("ORDERBOOK_STALL_SECONDS")),
            health=validation.host_port(
                "ORDERBOOK_HEALTH", env.get("ORDERBOOK_HEALTH")
            ),
        )


def parse_audit(env: Mapping[str, str]) -> dict:
    """The REST audit's settings, checked even by a replay (which then does without)."""
    interval = validation.number(
        "ORDERBOOK_AUDIT_INTERVAL",
        env.get("ORDERBOOK_AUDIT_INTERVAL", f"{AUDIT_INTERVAL_DEFAULT:g}"),
        low=0.0,
        low_open=False,
        high=AUDIT_INTERVAL_MAX,
    )
    return {
        "audit_interval": 0.0 if _replaying(env) else interval,
        "replay_audits": _replaying(env)
        and not _audits_off(env.get("ORDERBOOK_AUDIT_INTERVAL")),
        "audit_levels": validation.integer(
            "ORDERBOOK_AUDIT_LEVELS",
            env.get("ORDERBOOK_AUDIT_LEVELS", str(AUDIT_LEVELS_DEFAULT)),
            1,
            AUDIT_LEVELS_MAX,
        ),
        "rest_url": validation.http_url(
            "ORDERBOOK_REST_URL", env.get("ORDERBOOK_REST_URL")
        ),
        "audit_rate": validation.number(
            "ORDERBOOK_AUDIT_RATE",
            env.get("ORDERBOOK_AUDIT_RATE", f"{AUDIT_RATE_DEFAULT:g}"),
            high=AUDIT_RATE_MAX,
        ),
    }


def _audits_off(raw: str | None) -> bool:
    try:
        return raw is not None and float(raw) == 0
    except ValueError:
        return False


def _replaying(env: Mapping[str, str]) -> bool:
    return bool((env.get("ORDERBOOK_REPLAY") or "").strip())


def _did_you_mean(name: str) -> str | None:
    close = difflib.get_close_matches(
        name.upper(), list(SETTINGS_HELP), n=1, cutoff=0.8
    )
    return close[0] if close else None


def settings_warnings(env: Mapping[str, str]) -> tuple[str, ...]:
    """Settings that are given but ignored, and names that look like misspelled settings."""
    found = []
    if (env.get("ORDERBOOK_REPLAY_REPORT") or "").strip() and not (
        env.get("ORDERBOOK_REPLAY") or ""
    ).strip():
        found.append(
            "ORDERBOOK_REPLAY_REPORT is ignored: a live feed has no replay report "
            "(set ORDERBOOK_REPLAY)"
        )
    if _replaying(env):
        # REPLAY_NO_AUDITS: said by service.inputs, which knows whether the recording
        # holds REST audits to repeat
        ignored = [k for k in IGNORED_BY_REPLAY if k in env]
        if ignored:
            found.append(
                f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored: "
                "ORDERBOOK_REPLAY replays a recording instead of a live feed"
            )
    for name in sorted(env):
        if name in SETTINGS_HELP or name.startswith("ORDERBOOK_"):
            continue  # a setting, or refused as unknown
        hint = _did_you_mean(name)
        if hint is not None:
            found.append(
                f"{name} is not a setting and is ignored: did you mean {hint}?"
            )
    return tuple(found)


def parse_metrics(env: Mapping[str, str]) -> tuple[bool, str, int]:
    """Bytewax's dataflow API: enabled?, the address it may be reached on, its port.

    Bytewax 0.21.1 always binds it to every interface, so a public endpoint must be
    asked for (see docs/operations.md, "The metrics endpoint").
    """
    raw_enabled = env.get(METRICS_API_ENABLED)
    enabled = raw_enabled is not None and raw_enabled.strip().lower() not in _FALSE
    address = validation.choice(
        "ORDERBOOK_METRICS_ADDRESS",
        env.get("ORDERBOOK_METRICS_ADDRESS", "127.0.0.1"),
        METRICS_ADDRESSES,
    )
    raw_port = env.get(METRICS_API_PORT, "3030")
    if not _ASCII_DIGITS.fullmatch(raw_port):
        # Python's int() takes " 3031" and "３０３１"; Bytewax's Rust parser panics on them
        # and the run went on without the API it had announced.
        raise refuse(
            METRICS_API_PORT,
            raw_port,
            "a whole number in 1..65535",
            "ASCII digits only, without spaces or signs: Bytewax reads it as is",
        )
    port = validation.integer(METRICS_API_PORT, raw_port, 1, 65_535)
    if enabled and address != "0.0.0.0":
        raise refuse(
            METRICS_API_ENABLED,
            raw_enabled,
            "it unset, or ORDERBOOK_METRICS_ADDRESS=0.0.0.0",
            f"Bytewax serves its metrics on every interface (0.0.0.0:{port}) and cannot "
            "bind 127.0.0.1 only; ORDERBOOK_METRICS_ADDRESS is 127.0.0.1",
        )
    return enabled, address, port


def parse_stall_seconds(raw: str | None) -> float:
    """0 (off) or a window of 1 s to an hour. Under a second the polls of a busy
    machine would look like stalls; the watchdog ticks 4 times per window."""
    if raw is None or not raw.strip():
        return STALL_SECONDS_DEFAULT
    seconds = validation.number(
        "ORDERBOOK_STALL_SECONDS",
        raw,
        low=0.0,
        low_open=False,
        high=STALL_SECONDS_MAX,
    )
    if 0 < seconds < STALL_SECONDS_MIN:
        raise refuse(
            "ORDERBOOK_STALL_SECONDS",
            raw,
            SETTINGS_HELP["ORDERBOOK_STALL_SECONDS"],
            f"under {STALL_SECONDS_MIN:g} s a busy machine's pauses would count as stalls",
        )
    return seconds


def parse_threshold(raw: str) -> Decimal:
    return validation.decimal(
        "ORDERBOOK_SPREAD_THRESHOLD",
        raw,
        SETTINGS_HELP["ORDERBOOK_SPREAD_THRESHOLD"],
        low=Decimal(0),
        high=Decimal(100),
    )


def parse_depth(env: Mapping[str, str]) -> dict:
    return {
        "depth_levels": validation.integer(
            "ORDERBOOK_DEPTH_LEVELS",
            env.get("ORDERBOOK_DEPTH_LEVELS", "0"),
            0,
            DEPTH_LEVELS_MAX,
        ),
        "depth_interval": validation.number(
            "ORDERBOOK_DEPTH_INTERVAL",
            env.get("ORDERBOOK_DEPTH_INTERVAL", "1"),
            low=0.0,
            low_open=False,
            high=86_400.0,
        ),
    }


def parse_replay(raw: str | None) -> tuple[Path, ...] | None:
    """The files named (globs expanded, each once); which format each holds is found
    from its content when the replay is built (:mod:`importers.replay`)."""
    if raw is None or not raw.strip():
        return None
    from importers.replay import expand_replay

    paths, problems = expand_replay(raw)
    if problems or not paths:
        raise refuse(
            "ORDERBOOK_REPLAY",
            raw,
            SETTINGS_HELP["ORDERBOOK_REPLAY"],
            "; ".join(problems) or "no file given",
        )
    return tuple(paths)


def parse_replay_report(raw: str | None) -> Path | None:
    if raw is None or not raw.strip():
        return None
    path = Path(raw.strip())
    why = ""
    if path.is_dir():
        why = "a directory"
    elif not path.parent.is_dir():
        why = f"its directory {str(path.parent)!r} does not exist"
    if why:
        raise refuse(
            "ORDERBOOK_REPLAY_REPORT",
            raw,
            SETTINGS_HELP["ORDERBOOK_REPLAY_REPORT"],
            why,
        )
    return path
