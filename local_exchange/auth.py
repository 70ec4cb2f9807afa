"""The server side of the Exchange feed's level2 signature check.

Deliberately independent of the client's :mod:`coinbase.auth`: it has its own HMAC code, so
a signing bug in the client cannot also pass here (the two would agree on the wrong thing
and the tests would prove nothing). The signature is
``base64(HMAC-SHA256(b64decode(secret), timestamp + "GET" + "/users/self/verify"))``.
Error reasons never contain a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

LEVEL2_AUTH_REASON = (
    "level2, level3, and full channels now require authentication. "
    "https://docs.cloud.coinbase.com/exchange/docs/websocket-auth"
)
AUTH_MAX_SKEW_S = 30.0
"""How far a signed timestamp may be from the server clock (Coinbase: 30 s)."""
_FIELDS = ("signature", "key", "passphrase", "timestamp")


def sign_level2(secret_b64: str, timestamp: str) -> str:
    """The Exchange WebSocket signature of ``timestamp`` with a base64 secret."""
    key = base64.b64decode(secret_b64)
    msg = f"{timestamp}GET/users/self/verify".encode()
    return base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client must sign with; the repr never shows it."""

    api_key: str
    api_secret: str
    passphrase: str

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


def _timestamp(value: Any) -> tuple[str, float] | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = value if isinstance(value, str) else str(value)
    try:
        return text, float(text)
    except ValueError:
        return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_level2_auth(msg: dict, creds: Credentials | None, now: float) -> str | None:
    """None when the subscribe is correctly signed, else the error reason (no secrets)."""
    present = [f for f in _FIELDS if msg.get(f) not in (None, "")]
    if creds is None or not present:
        return LEVEL2_AUTH_REASON
    missing = [f for f in _FIELDS if f not in present]
    if missing:
        return f"missing authentication field(s): {', '.join(missing)}"
    key, passphrase, signature = msg["key"], msg["passphrase"], msg["signature"]
    if not all(isinstance(v, str) for v in (key, passphrase, signature)):
        return "authentication fields key, passphrase and signature must be strings"
    stamp = _timestamp(msg["timestamp"])
    if stamp is None:
        return "invalid timestamp"
    if not _same(key, creds.api_key):
        return "invalid API key"
    if abs(now - stamp[1]) > AUTH_MAX_SKEW_S:
        return "request timestamp expired"
    if not _same(passphrase, creds.passphrase):
        return "invalid passphrase"
    if not _same(signature, sign_level2(creds.api_secret, stamp[0])):
        return "invalid signature"
    return None
