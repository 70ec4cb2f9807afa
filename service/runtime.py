"""Process set-up of the service: stdout for records only, logging, a clean exit on
signals, garbage collection.

Ctrl-C and SIGTERM end a run with exit status 0 and no traceback, at any moment from the
import of ``dataflow`` by ``python -m bytewax.run`` on (see :func:`started_by_bytewax_run`).

Bytewax turns SIGINT into a ``KeyboardInterrupt`` raised out of whatever step is running
(a traceback and exit status 1) and leaves SIGTERM at its default (killed, status -15).
Output is flushed after every batch and the feed threads hold nothing worth saving, so
the clean way out is to log, flush and leave at once. The handlers used to be installed
once the flow was built, so a signal during start-up (0.3 s; 0.8 s with a 50,000-level
sim book; up to 10 s while a Kafka broker is asked) still left a traceback and status
130 or 143. A signal before Python has imported ``dataflow`` (the interpreter and
Bytewax load in about 0.06 s) still gets Python's defaults: nothing of ours runs yet.

This module imports nothing heavy and nothing else of the service (it is the bottom of
``service/``), so that :mod:`dataflow` can install the handlers before anything else.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TextIO

from common.decimals import plain

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

METRICS_API_ENABLED = "BYTEWAX_DATAFLOW_API_ENABLED"
"""Bytewax serves its dataflow API (``/metrics``) when this variable is set at all."""
METRICS_API_PORT = "BYTEWAX_DATAFLOW_API_PORT"

_records: TextIO | None = None
"""The process's stdout, kept for records: one per process, as stdout is."""
_records_lock = threading.Lock()


def separate_records_from_stdout() -> TextIO:
    """Keep the process's stdout for records alone; everything else goes to stderr.

    Bytewax (and the Rust libraries under it) print their own lines on fd 1, e.g.
    ``worker 1: error connecting to worker 0`` while a peer process starts, which would
    land between JSON records. So, once per process: the original stdout is duplicated
    to a new descriptor kept for records (see :func:`record_stream`), and fd 1 and
    ``sys.stdout`` are pointed at stderr. Call it at start, before Bytewax runs.
    """
    global _records
    with _records_lock:
        if _records is None:
            try:
                sys.stdout.flush()
                os.fstat(2)
                kept = os.dup(1)  # not inherited by child processes (O_CLOEXEC)
            except (OSError, ValueError, AttributeError):
                return sys.stdout  # fd 1 or 2 closed: nothing to separate
            _records = os.fdopen(kept, "w", encoding="utf-8", errors="strict")
            os.dup2(2, 1)
            sys.stdout = sys.stderr
        return _records


def record_stream() -> TextIO:
    """Where records written to "stdout" go: the stream kept by
    :func:`separate_records_from_stdout`, or ``sys.stdout`` when it was never called
    (a dataflow built in tests or embedded in another program)."""
    return _records if _records is not None else sys.stdout


class Shutdown:
    """The one way the process ends early: one line on stderr, every closer run, then
    ``os._exit`` with a status.

    Five things end a run before its input does: an output that fails (status 1), a
    live feed whose every product failed for good (status 1, through :meth:`failed`,
    given to the source by ``service/inputs.py``), a dataflow that stalled while its
    feed delivers (status 1, :meth:`stalled`, from ``service/health.py``'s watchdog),
    the reader of stdout going away (``| head``, status 0) and SIGINT/SIGTERM
    (status 0).
    Outputs and views never end the process themselves: they raise (the fan-out turns
    that into :meth:`failed` or :meth:`reader_gone`) or, from a thread of their own,
    call :meth:`failed`. ``os._exit`` because Bytewax's workers are Rust threads that
    cannot be asked to stop: output is flushed after every batch, closers finish what
    needs finishing (Parquet files, the terminal of the live view), and nothing else
    holds anything worth saving.

    Closers run most recent first; one that raises is reported in one line (except
    after :meth:`failed`: the output that failed fails again, said already) and the
    others still run. Whichever path comes first ends the process; another caller
    waits for the exit (a signal handler returns at once, as it may interrupt the very
    thread that is ending the process).
    """

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []
        self._ending = threading.Lock()

    def add_closer(self, closer: Callable[[], None]) -> None:
        """Have ``closer`` run before the process ends early (e.g. finish files).

        On a signal closers run on the main thread, from the signal handler (or on the
        signal relay's thread when the main thread is stuck in C, see
        :func:`_start_relay`)."""
        self._closers.append(closer)

    def remove_closer(self, closer: Callable[[], None]) -> None:
        if closer in self._closers:
            self._closers.remove(closer)

    def run_closers(self, report: bool = True) -> None:
        """Run every closer; ``report=False`` when the failure is already reported."""
        for closer in reversed(list(self._closers)):
            try:
                closer()
            except Exception as exc:
                if report:
                    sys.stderr.write(f"orderbook: closing an output failed: {exc}\n")

    def failed(self, line: str) -> NoReturn:
        """An output failed: ``orderbook: LINE``, the closers, exit status 1."""
        self._end(line, 1, report=False)

    def stalled(self, line: str) -> NoReturn:
        """The dataflow stopped advancing: ``orderbook: LINE``, the closers given at
        most :data:`STALL_CLOSE_SECONDS` (what stalled may be an output they would
        wait for: a closer flushing a blocked pipe never returns), exit status 1."""
        self._ending.acquire()  # never released: the process ends here
        try:
            sys.stderr.write(f"orderbook: {line}\n")
            sys.stderr.flush()
            closing = threading.Thread(
                target=self.run_closers, name="stall-closers", daemon=True
            )
            closing.start()
            closing.join(STALL_CLOSE_SECONDS)
        finally:
            os._exit(1)

    def reader_gone(self) -> NoReturn:
        """The reader of stdout went away: stop quietly, like any Unix filter."""
        self._end("output closed by its reader, stopping", 0, report=True)

    def _end(self, line: str, status: int, report: bool) -> NoReturn:
        self._ending.acquire()  # never released: the process ends here
        try:
            sys.stderr.write(f"orderbook: {line}\n")
            sys.stderr.flush()
            self.run_closers(report)
        finally:
            os._exit(status)

    def signalled(self, signum: int) -> None:
        """SIGINT/SIGTERM: the closers, the records flushed, one line, status 0. Returns
        at once when another path is already ending the process."""
        if not self._ending.acquire(blocking=False):
            return
        name = signal.Signals(signum).name
        try:
            self.run_closers()
            try:
                record_stream().flush()
            except (OSError, ValueError):
                pass  # a reader that went away cannot get the rest anyway
            sys.stderr.write(f"orderbook: {name} received, stopping\n")
            sys.stderr.flush()
        finally:
            os._exit(0)


STALL_CLOSE_SECONDS = 5.0
"""How long a stalled process's closers may take before it exits anyway: a closer may
wait for the very thing that stalled, and the orchestrator's restart is what matters."""

SHUTDOWN = Shutdown()
"""The process's one: a signal or a failed output ends the whole process, so it closes
what every flow of the process registered (the dataflow hands it to the outputs and
views)."""
RELAY_GRACE_SECONDS = 0.5
"""How long the signal relay waits for the main thread's handler before acting itself."""
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_cleanly(signum: int, _frame: object) -> None:
    SHUTDOWN.signalled(signum)


def install_clean_exit() -> bool:
    """Install the handlers and the relay; only possible (and only wanted) on the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, _exit_cleanly)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    _start_relay()
    return True


_relay: threading.Thread | None = None


def _start_relay() -> None:
    """A Python signal handler runs on the main thread between two bytecodes: never
    while that thread is blocked in C. At start the output probe asks a Kafka broker
    inside librdkafka for up to 10 s, and a SIGTERM then took effect 9.7 s late (a
    container runtime kills with SIGKILL after 10 s). So the C-level handler also
    writes the signal's number to a pipe (``signal.set_wakeup_fd``), and a daemon
    thread that reads it ends the process itself when the main thread has not done so
    within :data:`RELAY_GRACE_SECONDS`."""
    global _relay
    if _relay is not None:
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # pragma: no cover - not the main thread, checked above
        return
    _relay = threading.Thread(
        target=_relay_signals, args=(read_end,), name="signal-relay", daemon=True
    )
    _relay.start()


def _relay_signals(read_end: int) -> None:
    while True:
        for signum in os.read(read_end, 64):
            if signum in _STOP_SIGNALS:  # not e.g. a SIGWINCH handler's signal
                time.sleep(RELAY_GRACE_SECONDS)  # the handler normally exits first
                _exit_cleanly(signum, None)


def started_by_bytewax_run() -> bool:
    """Whether this process is ``python -m bytewax.run`` (the service, or one process of
    a cluster), as opposed to a program or a test that imports :mod:`dataflow`: only
    then may importing it take over Ctrl-C (a test run must stay interruptible)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "bytewax.run"


def configure_logging() -> None:
    """Timestamped INFO logs on stderr; the websockets library only when it warns."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)


def announce_settings(settings: Settings) -> None:
    """Log at start what the settings warn about and the threshold in use; make an API
    that is off really off (Bytewax serves it when its variable is set at all)."""
    for warning in settings.warnings:
        log.warning("%s", warning)
    if not settings.metrics_enabled:
        os.environ.pop(METRICS_API_ENABLED, None)
    else:
        log.warning(
            "serving Bytewax's metrics and dataflow API on every interface "
            "(0.0.0.0:%d; ORDERBOOK_METRICS_ADDRESS=%s)",
            settings.metrics_port,
            settings.metrics_address,
        )
    logging.getLogger("dataflow").info(
        "emitting summaries whose spread exceeds %s%% of the ask "
        "(ORDERBOOK_SPREAD_THRESHOLD; 0 emits every change of the top of book)",
        plain(settings.spread_threshold_pct),
    )


def tune_garbage_collector() -> None:
    """Collect young objects every 100,000 allocations instead of every 700.

    Every message allocates dozens of short-lived tuples that die young; the default
    threshold runs the cyclic collector thousands of times a second for nothing
    (measured: about 7% of end-to-end throughput). Objects alive after start-up are
    frozen out of the collector's scans.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
