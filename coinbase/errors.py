"""Every error the Coinbase package raises, under one base class.

``except CoinbaseError`` catches anything the feed did to us; the subclasses say what to
do about it:

* :class:`FeedError`: Coinbase sent an error reply. ``permanent`` errors
  (:class:`UnknownProduct`, most :class:`AuthError`) cannot be fixed by retrying;
  the others are retried with backoff.
* :class:`MalformedFrame`: a frame that cannot be applied; ``resync`` says whether it
  may have carried book data (then the book is stale and must be rebuilt).
* :class:`SequenceGap`: Advanced Trade skipped sequence numbers: messages were lost.
"""

from __future__ import annotations

from typing import Any

from common.text import shown

__all__ = [
    "AuthError",
    "CoinbaseError",
    "FeedError",
    "MalformedFrame",
    "SequenceGap",
    "UnknownProduct",
]

_SNIPPET = 160


def _snippet(frame: Any) -> str:
    """At most ``_SNIPPET`` characters of a frame, escaped (:func:`common.text.shown`): a
    5 MB snapshot must never reach a log, nor a newline or escape sequence a feed sent."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        cut = len(frame) - _SNIPPET
        text = shown(bytes(frame[:_SNIPPET]).decode("utf-8", "replace"), _SNIPPET)
        return text + (f"...(+{cut} bytes)" if cut > 0 else "")
    if not isinstance(frame, str):
        frame = repr(frame)[: _SNIPPET + 1]
    return shown(frame, _SNIPPET)


class CoinbaseError(Exception):
    """Base of every error the Coinbase package raises."""


class FeedError(CoinbaseError):
    """A ``{"type":"error"}`` reply; ``permanent`` means retrying cannot help."""

    def __init__(
        self, message: str, *, product_id: str | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.product_id = product_id
        self.permanent = permanent


class UnknownProduct(FeedError):
    """Coinbase does not know the product (typo or delisted): permanent."""

    def __init__(self, message: str, *, product_id: str | None = None) -> None:
        super().__init__(message, product_id=product_id, permanent=True)


class AuthError(FeedError):
    """The subscription was refused for credentials; ``credential`` names the culprit."""

    def __init__(
        self,
        message: str,
        *,
        credential: str | None = None,
        product_id: str | None = None,
        permanent: bool = True,
    ) -> None:
        super().__init__(message, product_id=product_id, permanent=permanent)
        self.credential = credential


class MalformedFrame(CoinbaseError, ValueError):
    """A frame that cannot be applied; the message gives the reason and a short excerpt."""

    def __init__(self, reason: str, frame: Any = None, *, resync: bool = True) -> None:
        self.reason = reason
        self.resync = resync
        super().__init__(
            f"{reason}; frame: {_snippet(frame)}" if frame is not None else reason
        )


class SequenceGap(CoinbaseError):
    """Advanced Trade skipped ``sequence_num`` values: messages were lost on the connection."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"sequence gap: expected sequence_num {expected}, got {got}")
        self.expected = expected
        self.got = got
