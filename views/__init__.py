"""Ways to see the market: a live terminal view, a web dashboard and plots of a run.

Every view reads plain dict records (``OrderBookSummary.to_dict()`` shapes, plus depth
records ``{"type": "depth", ...}``), so it works on a running dataflow, a JSON-lines
output file or a directory of Parquet files alike. See :mod:`views.records`.
"""
