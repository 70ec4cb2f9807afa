"""One way to check a value a user gave: settings, constructors and command lines alike.

Every check takes the *name the user typed* (an environment variable such as
``ORDERBOOK_SIM_RATE``, a command-line option such as ``--rate``, or a keyword argument
such as ``rate``) and the raw value, and either returns the parsed value or raises
:class:`ConfigError` whose one-line message names the setting, the value and what is
allowed::

    ORDERBOOK_SIM_RATE='20000' is not allowed: expected a number in (0, 10000]

Text values (from the environment or argv) are parsed; Python values (from a
constructor) are type-checked, so ``rate="20"`` passed to a constructor is refused rather
than silently parsed. Secrets are never echoed: pass ``secret=True``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import urlsplit

from common.domain import PRODUCT_ID
from common.text import redact_url

T = TypeVar("T")

_WS_URL = re.compile(r"^wss?://[^/\s]+")
_HTTP_URL = re.compile(r"^https?://[^/\s]+")
_ORIGIN = re.compile(
    r"(https?)://([a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(:(\d{1,5}))?/?"
)


class ConfigError(ValueError):
    """A value that cannot be used; the message names the setting and what is allowed."""


def refuse(
    name: str, value: Any, expected: str, why: str = "", *, secret: bool = False
) -> ConfigError:
    """The one message shape: ``NAME='value' is not allowed (why): expected ...``."""
    shown = "<redacted>" if secret else repr(value)
    detail = f" ({why})" if why else ""
    return ConfigError(f"{name}={shown} is not allowed{detail}: expected {expected}")


def products(name: str, value: str | Iterable[str]) -> tuple[str, ...]:
    """Product ids like ``BTC-USD``: a comma-separated string or a sequence; no duplicates.

    A string is upper-cased and stripped (what a user types); ids in a sequence must
    already be exact, since code that passes them should hold the canonical form.
    """
    expected = "comma-separated product ids such as BTC-USD,ETH-USD"
    if isinstance(value, str):
        items = tuple(p.strip().upper() for p in value.split(",") if p.strip())
    elif isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        items = tuple(value)
    else:
        raise refuse(name, value, expected, "not a list of product ids")
    if not items:
        raise refuse(name, value, expected, "no product given")
    for product in items:
        if not PRODUCT_ID.fullmatch(product):
            raise refuse(
                name, value, expected, f"{product!r} is not a product id like BTC-USD"
            )
    duplicates = sorted({p for p in items if items.count(p) > 1})
    if duplicates:
        raise refuse(name, value, expected, "duplicated " + ", ".join(duplicates))
    return items


def product_id(name: str, value: Any) -> str:
    """One exact product id such as ``BTC-USD``."""
    if not isinstance(value, str) or not PRODUCT_ID.fullmatch(value):
        raise refuse(name, value, "an upper-case product id such as BTC-USD")
    return value


def ws_url(name: str, value: str | None) -> str | None:
    """A ``ws://`` or ``wss://`` URL, or None for the default (empty text counts as None).
    A refused URL is shown redacted (:func:`common.text.redact_url`): it may carry
    credentials."""
    return _url(name, value, _WS_URL, "a ws:// or wss:// URL")


def http_url(name: str, value: str | None) -> str | None:
    """An ``http://`` or ``https://`` URL, or None (see :func:`ws_url`)."""
    return _url(name, value, _HTTP_URL, "an http:// or https:// URL")


def _url(name: str, value: str | None, shape: re.Pattern, expected: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not shape.match(value.strip()):
        shown = redact_url(value) if isinstance(value, str) else value
        raise refuse(name, shown, expected)
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError when not a port number in 0..65535
    except ValueError as exc:
        raise refuse(name, redact_url(value), expected, str(exc)) from None
    if not parts.hostname or not parts.hostname.strip():
        raise refuse(name, redact_url(value), expected, "no host")
    if any(c.isspace() for c in value.strip()):
        raise refuse(name, redact_url(value), expected, "a space in it")
    return value.strip()


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """One of ``allowed``; text is stripped and lower-cased first."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in allowed:
        raise refuse(name, value, "one of " + ", ".join(allowed))
    return text


def number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = True,
) -> float:
    """A finite number in ``(low, high]`` (``[low, high]`` with ``low_open=False``)."""
    bracket = "(" if low_open else "["
    top = "" if high == math.inf else f"{high:g}"
    expected = (
        f"a number > {low:g}"
        if not top and low_open
        else f"a number >= {low:g}"
        if not top
        else f"a number in {bracket}{low:g}, {top}]"
    )
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            raise refuse(name, value, expected, "not a number") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        parsed = float(value)
    else:
        raise refuse(name, value, expected, "not a number")
    too_low = parsed <= low if low_open else parsed < low
    if not math.isfinite(parsed) or too_low or parsed > high:
        raise refuse(name, value, expected)
    return parsed


def integer(name: str, value: Any, low: int, high: int) -> int:
    """A whole number in ``low..high``."""
    expected = f"a whole number in {low}..{high}"
    if isinstance(value, str):
        try:
            parsed = int(value.strip())
        except ValueError:
            raise refuse(name, value, expected, "not a whole number") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        parsed = value
    else:
        raise refuse(name, value, expected, "not a whole number")
    if not low <= parsed <= high:
        raise refuse(name, value, expected)
    return parsed


def decimal(
    name: str, value: Any, expected: str, *, low: Decimal, high: Decimal
) -> Decimal:
    """An exact decimal in ``[low, high)``; ``expected`` says what it means to the user."""
    try:
        parsed = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError, ValueError):
        raise refuse(name, value, expected, "not a number") from None
    if not parsed.is_finite() or not low <= parsed < high:
        raise refuse(name, value, expected)
    return parsed


def argparse_type(name: str, check: Callable[[str, str], T]) -> Callable[[str], T]:
    """Adapts a check to ``argparse``'s ``type=``: its message becomes argparse's error.

    ``parser.add_argument("--rate", type=argparse_type("--rate", sim_rate))`` prints
    ``error: argument --rate: --rate='x' is not allowed ...`` and exits with status 2.
    """

    def parse(text: str) -> T:
        try:
            return check(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name.lstrip("-")
    return parse


def host_port(
    name: str, value: str | None, default_host: str = "127.0.0.1"
) -> tuple[str, int] | None:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on ``default_host``, loopback);
    None or empty text: off. Port 0 means any free port."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    expected = "HOST:PORT or PORT, e.g. 127.0.0.1:8050 (port 0..65535)"
    if not isinstance(value, str):
        raise refuse(name, value, expected)
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host:
        host = default_host
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise refuse(name, value, expected, "not a host name or address")
    if ":" in host and not sep:
        raise refuse(name, value, expected)
    try:
        port = int(port_text)
    except ValueError:
        raise refuse(name, value, expected, "not a port number") from None
    if not 0 <= port <= 65535:
        raise refuse(name, value, expected)
    return host, port


def origins(name: str, value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Web origins such as ``http://192.168.1.5:8050`` (scheme, host, optional port, no
    path), comma-separated or a sequence; None or empty: none. Returned lower-cased,
    without a trailing ``/`` or a default port (``:80``, ``:443``): the form browsers
    send in an ``Origin`` header."""
    if value is None:
        return ()
    expected = "comma-separated origins such as http://192.168.1.5:8050"
    if isinstance(value, str):
        items = [o.strip().lower() for o in value.split(",") if o.strip()]
    elif isinstance(value, Sequence) and all(isinstance(o, str) for o in value):
        items = [o.lower() for o in value]
    else:
        raise refuse(name, value, expected, "not a list of origins")
    found = []
    for item in items:
        match = _ORIGIN.fullmatch(item)
        if match is None or (match.group(5) and not 0 < int(match.group(5)) < 65536):
            raise refuse(name, value, expected, f"{item!r} is not an origin")
        scheme, port = match.group(1), match.group(5)
        default = (scheme, port) in (("http", "80"), ("https", "443"))
        found.append(f"{scheme}://{match.group(2)}" if default else item.rstrip("/"))
    return tuple(dict.fromkeys(found))
