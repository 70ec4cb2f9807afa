"""``live``: the full-screen terminal view (:mod:`views.live`), as an output kind.

Registered here so that ``ORDERBOOK_OUTPUT=live,parquet:data/`` parses and is checked
like any list; the dataflow does not build it through the fan-out, because the view
gets every record before the spread filter (see :mod:`views.wiring`).
"""

from __future__ import annotations

from service.outputs.registry import OutputKind, register


def _not_in_fanout(arg: str | None):
    raise RuntimeError("the live view is attached by views.wiring, not the fan-out")


register(
    OutputKind(
        "live",
        build=_not_in_fanout,
        help="live (full-screen terminal view)",
        rank=90,
    )
)
