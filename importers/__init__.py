"""Replay the market data people already own: foreign files to this project's recordings.

An edge package (it imports :mod:`common`, the domain, :mod:`coinbase` and
:mod:`recording`; never :mod:`service`). Each importer reads one foreign format and
yields :class:`importers.stream.Item` s: Coinbase frames of one product with their receive
time, and resets where a product's book must start afresh. Written with
:class:`recording.writer.RecordingWriter`, they make an ordinary version 2 recording.

* :mod:`importers.detect`: which format a file holds, from its content;
* :mod:`importers.inputs`: lines of plain, gzip and zstd files, truncation-safe;
* :mod:`importers.tardis`: tardis.dev ``incremental_book_L2`` CSV;
* :mod:`importers.cryptofeed`: cryptofeed 2.x raw captures and v3 ``.jsonl.zst`` captures;
* :mod:`importers.recordings`: this project's own recordings, to merge with other files;
* :mod:`importers.sources`: many files merged by receive time, one stream per product;
* :mod:`importers.quality`: the per-product quality report;
* :mod:`importers.convert`: ``python -m importers convert SOURCE... OUTPUT`` (also
  ``python -m recording convert``);
* :mod:`importers.replay`: ``ORDERBOOK_REPLAY`` of any of these files, one or many, and
  the replay's quality report;
* :mod:`importers.tardis_snapshots`: depth records to tardis.dev ``book_snapshot_N``
  CSV files (the other direction).
"""
