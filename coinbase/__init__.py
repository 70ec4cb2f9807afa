"""Everything that knows the Coinbase wire, and nothing of Bytewax or books.

Read in this order:

* ``feeds.py``: the feeds (URLs, channels, subscribe messages), protocols and default
  products, defined once; what *feed* and *protocol* mean;
* ``errors.py``: one error tree under :class:`~coinbase.errors.CoinbaseError`;
* ``decode.py`` and ``fast_snapshot.py``: frames of both protocols to book events (pure),
  the typed fast path for multi-MB snapshots;
* ``session.py``: one product's sans-IO session: its freshness rules (reset first,
  updates before the snapshot dropped, permanent errors stop it) and typed stats;
* ``multiplex.py``: one connection's sans-IO session, carrying several products'
  sessions: what to subscribe, frames in, events and reset/resync/stop decisions out;
  the grouping rules (which faults resync one product alone and which the whole
  connection), stated once (pure, both: unit-tested without a socket);
* ``connection.py``: the asyncio connection: connect, pacing, backoff with jitter,
  watchdog; yields raw frames to a handler (a session, or the recorder);
* ``runner.py``: the event loop the connections run on: the process's one thread, or
  inline, run by the polls of whoever reads the partitions (the service's Bytewax
  worker);
* ``pacing.py``: backoff and the process-wide pacers (injectable clock);
* ``auth.py``: Exchange API credentials and the level2 signature;
* ``rest.py``: the REST books of both protocols (URL, reply to top levels; pure) and
  ``audit.py``: the process's REST audit scheduler (budget, backoff, round-robin) that
  puts the audit events into the products' streams (issue 19).

The Bytewax source that glues a session to a connection is ``coinbase_source.py`` at
the root.
"""
