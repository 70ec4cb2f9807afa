"""What a product id, a price and a size may be: checked once, where a value enters.

A value from a feed, a recording, an imported file, a setting or a plot's input is checked
here before anything else sees it; outside the domain it is malformed input (counted,
skipped, the product resynced), never a crash further down.
"""

from __future__ import annotations

import re

PRODUCT_ID = re.compile(r"[A-Z0-9]{1,24}(-[A-Z0-9]{1,24}){1,3}")
"""A Coinbase product id: upper-case BASE-QUOTE (futures add parts, e.g. BIT-27DEC24-CDE)."""


def is_product_id(value: object) -> bool:
    """True for a string of Coinbase's product id shape (safe in a path, a log, a page)."""
    return isinstance(value, str) and PRODUCT_ID.fullmatch(value) is not None
