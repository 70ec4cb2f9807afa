"""Shared helpers of the tests: one of each, so that every test speaks the same protocol.

* :mod:`tests.support.frames`: Coinbase frames of both protocols and subscribe messages;
* :mod:`tests.support.reference_book`: the naive reference book the real one must match;
* :mod:`tests.support.flow`: the dataflow command in a subprocess, waits and readers;
* :mod:`tests.support.scripted_server`: a loopback WebSocket server playing a script.
"""
