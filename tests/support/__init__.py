"""Shared helpers of the tests and the benches: one of each, so that every test speaks the
same protocol. Every helper lives here: a module at the top of ``tests/`` is a test file
(``test_*.py``) or ``conftest.py``; tests never import ``bench/`` nor another test file,
and ``bench/`` imports from ``tests`` only this package (``tests/test_test_layout.py``).

* :mod:`tests.support.frames`: Coinbase frames of both protocols and subscribe messages;
* :mod:`tests.support.reference_book`: the naive reference book the real one must match;
* :mod:`tests.support.flow`: the dataflow command in a subprocess, waits and readers;
* :mod:`tests.support.scripted_server`: a loopback WebSocket server playing a script;
* :mod:`tests.support.raw_ws`: a WebSocket server on raw sockets, bytes laid out by
  the test;
* :mod:`tests.support.hostile_exchange`: a loopback Exchange-feed server that attacks;
* :mod:`tests.support.exchange_client`: the local exchange fixture and a client of it
  (open, read, drain, sign);
* :mod:`tests.support.source_partitions`: Coinbase source partitions built fast, polled
  until a condition holds, and their books checked against the local exchange's;
* :mod:`tests.support.recordings`: synthetic recordings (the benches' session too);
* :mod:`tests.support.outputs`: what the outputs wrote (Parquet, journal) as comparable
  records;
* :mod:`tests.support.foreign_files`: foreign market-data files whose true books are known;
* :mod:`tests.support.browser`: headless Chromium as the tests and the screenshots use it.
* :mod:`tests.support.paced_load`: the live benches' paced load: the local exchange
  replaying it, processes in groups of their own, an output file read as it grows, lag.
"""
