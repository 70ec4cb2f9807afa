"""Text that came from outside (a feed, a file, a user) made safe to log or show, and
secrets taken out of what is logged.

Two rules, each written once here and used by every log line, terminal row and page:

* :func:`shown`: foreign text is escaped (control characters, ANSI escapes and newlines
  become visible ``\\x1b``/``\\n`` escapes, so nothing can forge a log line or repaint a
  terminal) and truncated (a 1 MB product id becomes 80 characters and a count), so a
  hostile feed cannot flood stderr either. HTML pages escape on top of this
  (``html.escape``), since a page has its own special characters.
* :func:`redact_url` and :func:`redact_settings`: user info in a URL, and the value of any
  query parameter or client setting whose name looks secret (``*password*``,
  ``*secret*``, ``*token*``, keys, credentials, signatures) become ``***``;
  :func:`redact_text`: those values taken out of a message a library wrote about the
  settings (a client's error text may quote the value it refused).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SHOWN_LIMIT = 80
"""Characters of foreign text kept in one log line or cell (a product id is at most 74)."""
REDACTED = "***"

_SECRET_NAME = re.compile(
    r"pass|secret|token|credential|signature|auth|jaas|private|(^|[._-])(api)?key($|[._-])|apikey|pem$",
    re.IGNORECASE,
)


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """``value`` as text safe for one log line or terminal cell: every character that is
    not printable (newlines, ESC, other controls, unpaired surrogates) escaped, and cut to
    ``limit`` characters with a count of what was cut. O(min(len, limit))."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(
            c
            if c.isprintable()
            else c.encode("unicode_escape", "backslashreplace").decode("ascii")
            for c in text
        )
    return f"{text}...(+{cut} chars)" if cut > 0 else text


def is_secret_name(name: str) -> bool:
    """True when a setting or query parameter's name says its value is a secret."""
    return _SECRET_NAME.search(name) is not None


def redact_url(url: str) -> str:
    """``url`` with its user info and the values of secret-looking query parameters
    replaced by ``***`` (``ws://u:p@host/x?token=t&a=1`` -> ``ws://***@host/x?token=***&a=1``).
    A URL that cannot be parsed is reduced to its scheme, so nothing leaks through it."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = REDACTED + "@" + netloc.rpartition("@")[2]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, REDACTED if is_secret_name(k) else v) for k, v in pairs],
                safe="*",
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return (url.split(":", 1)[0] if ":" in url else "") + ":" + REDACTED


def redact_settings(settings: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``settings`` with every secret-looking key's value replaced by ``***``."""
    return {k: REDACTED if is_secret_name(str(k)) else v for k, v in settings.items()}


def redact_text(text: str, settings: Mapping[str, object]) -> str:
    """``text`` with the value of every secret-looking setting of ``settings`` replaced
    by ``***`` wherever it occurs (a short value may also hide innocent text: a
    message made uglier is the price of never showing a secret)."""
    for key, value in settings.items():
        value = str(value)
        if value and is_secret_name(str(key)):
            text = text.replace(value, REDACTED)
    return text
