"""The service around the dataflow: settings, input choice, outputs, placement, runtime.

* ``settings.py``: every ``ORDERBOOK_*`` variable, read and validated once at start;
* ``validation.py``: the one set of checks used by settings, constructors and CLIs
  (one-line :class:`~service.validation.ConfigError` naming the setting);
* ``inputs.py``: the input for the settings: live feed, local exchange or replay;
* ``outputs``: where records go;
* ``placement.py``: routing keys that keep each book on the worker reading its socket;
* ``resync.py``: the book step's requests for a fresh snapshot, read by the source;
* ``cluster.py``: cluster start-up: on one host a process waits for the lower
  processes to listen, so Timely's first connect succeeds;
* ``runtime.py`` and ``logs.py``: process set-up (records kept apart from stdout
  noise, signals, garbage collector) and rate-limited logging.
"""
