"""The service around the dataflow: settings, input choice, outputs, placement, runtime.

* ``settings.py``: every ``ORDERBOOK_*`` variable, read and validated once at start;
* ``inputs.py``: the input for the settings: live feed, local exchange or replay;
* ``outputs``: where records go;
* ``placement.py``: routing keys that keep each book on the worker reading its socket;
* ``recovery_store.py``: a ``-r`` recovery store checked before Bytewax opens it (a
  damaged one is refused in one line);
* ``cluster.py``: cluster start-up: on one host a process waits for the lower
  processes to listen, so Timely's first connect succeeds; a lost peer is named in one
  line;
* ``hangups.py``: the small process (standard library only) that times when each
  peer's connection ended, for ``cluster.py``;
* ``health.py``: the stall watchdog (``ORDERBOOK_STALL_SECONDS``) and the
  ``/livez``/``/readyz`` endpoint (``ORDERBOOK_HEALTH``) for orchestrators;
* ``runtime.py``: process set-up (records kept apart from stdout noise, signals,
  garbage collector) and :class:`~service.runtime.Shutdown`, the one way the process
  ends early (a signal, an output failing, stdout's reader gone, a live feed whose every
  product failed for good, a stalled dataflow).

Only ``dataflow.py`` imports this package; within it, ``runtime`` is at the bottom and
imports nothing of the rest.
"""
