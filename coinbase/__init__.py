"""Everything that knows the Coinbase wire, and nothing of Bytewax or books.

Read in this order:

* ``feeds.py``: the feeds (URLs, channels, subscribe messages), protocols and default
  products, defined once; what *feed* and *protocol* mean;
* ``errors.py``: one error tree under :class:`~coinbase.errors.CoinbaseError`;
* ``decode.py`` and ``fast_snapshot.py``: frames of both protocols to book events (pure),
  the typed fast path for multi-MB snapshots;
* ``session.py``: the sans-IO session of one connection: what to subscribe, frames in,
  events and reset/resync/stop decisions out, typed stats (pure: unit-tested without a
  socket);
* ``multiplex.py``: several products' sessions on one connection (sans-IO too): which
  faults resync one product alone and which the whole connection;
* ``connection.py``: the asyncio connection: connect, pacing, backoff with jitter,
  watchdog; yields raw frames to a handler (a session, or the recorder);
* ``runner.py``: the one event-loop thread all connections of a process share;
* ``pacing.py``: backoff and the process-wide pacers (injectable clock);
* ``auth.py``: Exchange API credentials and the level2 signature.

The Bytewax source that glues a session to a connection is ``coinbase_source.py`` at
the root.
"""
