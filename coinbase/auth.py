"""Coinbase Exchange API credentials and the WebSocket subscribe signature.

The Exchange ``level2`` channel needs an *Exchange* key, secret and passphrase (not a CDP
Advanced Trade key). The subscribe message carries ``timestamp``, ``key``, ``passphrase``
and ``signature`` = base64(HMAC-SHA256(base64decode(secret), timestamp + "GET" +
"/users/self/verify")). Coinbase refuses timestamps older than 30 s, so the caller signs
afresh on every (re)connect. Secrets never appear in reprs, errors or logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ENV_KEY", "ENV_PASSPHRASE", "ENV_SECRET", "Credentials", "sign"]

ENV_KEY = "COINBASE_API_KEY"
ENV_SECRET = "COINBASE_API_SECRET"
ENV_PASSPHRASE = "COINBASE_API_PASSPHRASE"


def _decode_secret(secret_b64: str) -> bytes:
    try:
        return base64.b64decode(secret_b64, validate=True)
    except (binascii.Error, ValueError):
        # Never echo the secret itself.
        raise ValueError(f"{ENV_SECRET} is not valid base64") from None


def sign(
    secret_b64: str,
    timestamp: str,
    method: str = "GET",
    path: str = "/users/self/verify",
) -> str:
    """Base64 HMAC-SHA256 of ``timestamp + method + path`` keyed by the decoded secret."""
    key = _decode_secret(secret_b64)
    message = f"{timestamp}{method.upper()}{path}".encode()
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Credentials:
    """An Exchange API key; ``repr`` shows the key only, never secret or passphrase."""

    key: str
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)

    def __post_init__(self) -> None:
        for name, value in ((ENV_KEY, self.key), (ENV_SECRET, self.secret)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} is empty")
        if not isinstance(self.passphrase, str) or not self.passphrase:
            raise ValueError(f"{ENV_PASSPHRASE} is empty")
        _decode_secret(self.secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Credentials:
        """Read the three variables; refuse naming every missing or empty one."""
        missing = [
            name for name in (ENV_KEY, ENV_SECRET, ENV_PASSPHRASE) if not env.get(name)
        ]
        if missing:
            raise ValueError(
                f"missing Coinbase credential environment variable(s): {', '.join(missing)}"
            )
        return cls(env[ENV_KEY].strip(), env[ENV_SECRET].strip(), env[ENV_PASSPHRASE])

    def sign(self, timestamp: str) -> str:
        """Signature for the WebSocket subscribe at ``timestamp`` (seconds since epoch)."""
        return sign(self.secret, timestamp)
