"""The recorder: every raw frame of some products, to a recording file.

Each product is read through :class:`coinbase.connection.Connection`, the same
connection layer as the live source, so a recording gets the same pacing (Coinbase's 8
connections and messages per second per IP), jittered backoff and watchdog (a silent
connection is replaced, not recorded as a gap of hours). Every (re)connection is written
as a ``connected`` record, where a replay resets the product's book.

REST audits (``--audit-interval S``, off by default): the recorder runs the live
service's audit scheduler (:class:`coinbase.audit.AuditScheduler`: the same round-robin,
request budget, backoff and 1 s settle window) on its own event loop, the loop that
writes the frames, and writes an ``audit_requested`` record where the live source puts
:class:`events.AuditStarted` and an ``audit`` record (the REST book's best levels, or
the failure) where it puts :class:`events.BookAudit`: a replay of the recording repeats
the live run's comparisons (see :mod:`recording.format`). A product is audited only
while its connection has had its snapshot.

The command refuses, with one line and exit status 2 before connecting: an output
directory that does not exist, and an existing file unless ``--overwrite`` (replace it)
or ``--append`` (add to that recording: same protocol, products among its header's), and
a ``--duration`` that is not a finite number of seconds > 0.

It stops, with one line (``recording: error: ...``) and exit status 1, when recording
can never succeed (:class:`RecorderError`); what was written stays readable:

* the feed refuses a subscription for good (an unknown product, refused credentials:
  a permanent error reply; another error reply reconnects);
* no connection was ever made after :data:`CONNECT_ATTEMPTS` attempts (an unreachable
  URL, about 4 s of backoff; a feed that answered once is reconnected for as long as it
  takes, as before);
* the file cannot be written (a full disk, a file-size limit, a read-only place): a
  write error is not a network error, reconnecting cannot help.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from coinbase.decode import FrameDecoder
from coinbase.errors import FeedError
from coinbase.feeds import FEEDS, subscribe_messages
from common import validation
from common.text import redact_url, shown
from common.validation import ConfigError
from events import AuditStarted, BookAudit, BookEvent
from recording.format import MAX_AUDIT_LEVELS, MAX_RECORDED_FRAME, RecordingError
from recording.reader import Recording
from recording.writer import RecordingWriter

log = logging.getLogger(__name__)

MODES = ("new", "overwrite", "append")
CONNECT_ATTEMPTS = 5
"""Connection attempts before a recorder that never connected gives up. The backoff
between them (0.25 s doubling, jittered) makes about 2 to 4 s in all, plus each attempt's
own time (a refused port answers at once; a silent host takes the 10 s open timeout)."""


AUDIT_CLOSE_SECONDS = 5.0
"""How long the end of a recording waits for the audits' HTTP client to close."""


class RecorderError(Exception):
    """Recording cannot go on; the message is one line for the user."""


class _Run:
    """What the product recorders share: the writer and the first fatal failure."""

    def __init__(self, writer: RecordingWriter, stop: asyncio.Event) -> None:
        self.writer = writer
        self.stop = stop
        self.failure: str | None = None

    def fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
        self.stop.set()

    def write_failed(self, exc: OSError) -> str:
        self.fail(write_error(self.writer.path, exc))
        return "the recording cannot be written"


def write_error(path: str | os.PathLike, exc: OSError, started: bool = True) -> str:
    """One line naming the file and the error (``started``: the file holds a readable
    beginning)."""
    kept = "; what was written before is kept" if started else ""
    return f"cannot write {str(path)!r}: {exc.strerror or exc}{kept}"


class _ThisLoop:
    """The recorder's own loop as an audit scheduler's runner (see
    :attr:`coinbase.audit.AuditScheduler.runner`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_soon(self, fn, *args) -> None:
        self._loop.call_soon_threadsafe(fn, *args)


class _ProductRecorder:
    """A Connection handler that writes one product's frames as they arrive; the audit
    scheduler's view of the product (``auditable``, ``put_audit``) when audits are on."""

    def __init__(
        self, run: _Run, feed: str, product_id: str, credentials, url: str
    ) -> None:
        self._run = run
        self._writer = run.writer
        self._feed = feed
        self.feed = feed
        self.product_id = product_id
        self._protocol = FEEDS[feed].protocol
        self._product_id = product_id
        self._credentials = credentials
        self._url = url
        self._connected = False
        self._failed_connects = 0
        self.settled = False
        """A snapshot arrived on this connection (what proves it healthy)."""

    def opened(self) -> list[dict]:
        self.settled = False
        self._connected = True
        try:
            self._writer.connected(self._product_id)
        except OSError as exc:
            self._run.write_failed(exc)
            return []
        return subscribe_messages(
            self._feed, self._product_id, self._credentials, time.time()
        )

    def received(self, frame: str | bytes, received_ns: int) -> str | None:
        try:
            self._writer.frame(self._product_id, frame, received_ns)
        except OSError as exc:
            return self._run.write_failed(exc)
        head = frame[:400] if isinstance(frame, bytes) else frame[:400].encode()
        if b'"error"' in head:
            verdict = self._error_reply(frame)
            if verdict is not None:
                return verdict
        if not self.settled:  # both protocols say "snapshot" in a frame's first bytes
            self.settled = b'"snapshot"' in head
        return None

    def _error_reply(self, frame: str | bytes) -> str | None:
        """An error reply ends a recording that cannot succeed (a permanent one: an
        unknown product, refused credentials) and reconnects for the others."""
        try:
            FrameDecoder(self._protocol, "recorder").decode(frame)
        except FeedError as exc:
            message = shown(str(exc), 300)
            if exc.permanent:
                named = self._product_id in message
                self._run.fail(message if named else f"{self._product_id}: {message}")
                return "refused by the feed"
            return f"error reply: {message}"
        except Exception:  # not an error reply after all: only recorded
            return None
        return None

    @property
    def auditable(self) -> bool:
        """Connected, with this connection's snapshot recorded."""
        return self.settled and not self._run.stop.is_set()

    def put_audit(self, event: BookEvent) -> None:
        """An audit event of the scheduler, written where it enters the stream (the
        loop that writes the frames: their order); dropped once recording stopped."""
        if self._run.stop.is_set() or self._run.failure is not None:
            return
        try:
            if type(event) is AuditStarted:
                self._writer.audit_requested(self.product_id, event.received_ns)
            elif type(event) is BookAudit:
                self._writer.audit(event, event.received_ns)
        except OSError as exc:
            self._run.write_failed(exc)

    def closed(self, reason: str, close_code: int | None) -> bool:
        self.settled = False  # no audit of a product while it reconnects
        if self._run.failure is not None:
            return False
        log.warning("%s: %s; reconnecting", self._product_id, reason)
        return True

    def connect_failed(self, reason: str) -> None:
        self._failed_connects += 1
        if not self._connected and self._failed_connects >= CONNECT_ATTEMPTS:
            self._run.fail(
                f"cannot connect to {redact_url(self._url)} after "
                f"{self._failed_connects} attempts ({shown(reason, 200)})"
            )

    def retrying(self) -> None:
        pass


def check_output(
    path: str | os.PathLike,
    mode: str = "new",
    protocol: str | None = None,
    products: list[str] | None = None,
) -> str | None:
    """Why ``path`` cannot be written in ``mode`` (one line), or None when it can."""
    path = Path(path)
    if not path.parent.is_dir():
        return f"output directory {str(path.parent)!r} does not exist"
    if path.is_dir():
        return f"{str(path)!r} is a directory, not a file"
    if not path.exists() or mode == "overwrite":
        return None
    if mode == "new":
        return (
            f"{str(path)!r} exists: pass --overwrite to replace it or --append to add "
            "to it"
        )
    try:
        existing = Recording.open(path)
    except RecordingError as exc:
        return f"cannot append: {exc}"
    if protocol is not None and existing.protocol != protocol:
        return (
            f"cannot append: {str(path)!r} records the {existing.protocol} protocol, "
            f"not {protocol}"
        )
    extra = [p for p in products or () if p not in existing.products]
    if extra:
        return (
            f"cannot append {', '.join(extra)}: {str(path)!r} records "
            f"{', '.join(existing.products)}"
        )
    return None


def _open_writer(
    path: str | os.PathLike,
    mode: str,
    feed: str,
    url: str,
    products: list[str],
    audits: dict | None = None,
) -> RecordingWriter:
    try:
        if mode == "append" and Path(path).exists():
            return RecordingWriter(path, None, append=True)
        header = {
            "protocol": FEEDS[feed].protocol,
            "feed": feed,
            "url": redact_url(url),  # a file is shared: never its credentials
            "products": list(products),
            "started": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if audits is not None:
            header["audits"] = audits
        return RecordingWriter(path, header)
    except OSError as exc:
        raise RecorderError(write_error(path, exc, started=False)) from None


async def record(
    path: str | os.PathLike,
    products: list[str],
    feed: str = "exchange",
    url: str | None = None,
    duration: float | None = None,
    credentials=None,
    progress: io.TextIOBase | None = None,
    stop: asyncio.Event | None = None,
    *,
    mode: str = "new",
    watchdog_seconds: float = 5.0,
    audit_interval: float = 0.0,
    audit_levels: int = 50,
    audit_rate: float = 3.0,
    rest_url: str | None = None,
) -> dict[str, int]:
    """Record every frame of ``products`` until ``duration`` elapses or ``stop`` is set.

    ``mode``: ``new`` refuses an existing file (FileExistsError), ``overwrite`` replaces
    it, ``append`` adds to an existing recording (products must be among its header's).
    ``duration``: None (until ``stop``) or a finite number of seconds > 0 (else
    :class:`~common.validation.ConfigError`). Raises :class:`RecorderError` when
    recording cannot succeed (see the module's docstring), after closing the file.
    """
    spec = FEEDS[feed]
    url = url or spec.url
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if duration is not None:
        duration = validation.number("duration", duration)
    target = _audit_target(
        feed, url, audit_interval, audit_levels, audit_rate, rest_url
    )
    problem = check_output(path, mode, spec.protocol, products)
    if problem is not None:
        raise FileExistsError(problem)
    # here, not at the top: a replay imports this module (importers.convert's
    # check_output) but needs no connection, and the import costs it 40 ms at start
    from coinbase.connection import Connection

    stop = stop or asyncio.Event()
    audits = (
        None
        if target is None
        else {"interval": target.interval, "levels": target.levels}
    )
    writer = _open_writer(path, mode, feed, url, products, audits)
    run = _Run(writer, stop)
    recorders = [_ProductRecorder(run, feed, p, credentials, url) for p in products]
    tasks = [
        asyncio.create_task(
            Connection(
                url,
                name=r.product_id,
                watchdog_seconds=watchdog_seconds,
                max_size=MAX_RECORDED_FRAME,
            ).run(r)
        )
        for r in recorders
    ]
    scheduler = _start_audits(target, audit_rate, recorders)
    started = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            if progress is not None:
                progress.write(
                    f"\rrecording {len(products)} products: {writer.frames} frames, "
                    f"{writer.frame_bytes / 1e6:.1f} MB, {time.monotonic() - started:.0f}s"
                )
                progress.flush()
            if duration is not None and time.monotonic() - started >= duration:
                stop.set()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _stop_audits(scheduler, recorders)
        try:
            writer.close()
        except OSError as exc:  # the last records could not be written
            run.fail(write_error(path, exc))
        if progress is not None:
            progress.write("\n")
    if run.failure is not None:
        raise RecorderError(run.failure)
    return {
        "frames": writer.frames,
        "bytes": writer.frame_bytes,
        "audits": writer.audits,
    }


def _start_audits(target, rate: float, recorders: list[_ProductRecorder]):
    """The audit scheduler, on this loop, with every product registered (or None)."""
    if target is None:
        return None
    from coinbase.audit import AuditScheduler

    scheduler = AuditScheduler(rate, runner=_ThisLoop(asyncio.get_running_loop()))
    for r in recorders:
        scheduler.register(r, target)
    return scheduler


async def _stop_audits(scheduler, recorders: list[_ProductRecorder]) -> None:
    """No more audits; returns when the scheduler's HTTP client is closed (it runs on
    this loop: waited for on another thread) or :data:`AUDIT_CLOSE_SECONDS` passed."""
    if scheduler is None:
        return
    for r in recorders:
        scheduler.unregister(r)
    await asyncio.get_running_loop().run_in_executor(
        None, scheduler.finished.wait, AUDIT_CLOSE_SECONDS
    )


def _audit_target(
    feed: str,
    url: str,
    interval: float,
    levels: int,
    rate: float,
    rest_url: str | None,
):
    """The audits' target, or None when off; bad values: ConfigError (one line)."""
    interval = validation.number(
        "--audit-interval", interval, low=0.0, low_open=False, high=86_400.0
    )
    levels = validation.integer("--audit-levels", levels, 1, MAX_AUDIT_LEVELS)
    validation.number("--audit-rate", rate, high=10.0)
    rest_url = validation.http_url("--rest-url", rest_url)
    if not interval:
        return None
    from coinbase.audit import AuditTarget
    from coinbase.rest import default_rest_url

    protocol = FEEDS[feed].protocol
    base = rest_url or default_rest_url(feed, url, protocol)
    return AuditTarget(base, protocol, levels, interval)


def _seconds_or_off(name: str, value: str) -> float:
    return validation.number(name, value, low=0.0, low_open=False, high=86_400.0)


def _audit_levels(name: str, value: str) -> int:
    return validation.integer(name, value, 1, MAX_AUDIT_LEVELS)


def _audit_rate(name: str, value: str) -> float:
    return validation.number(name, value, high=10.0)


def _refuse(message: str, status: int = 2) -> int:
    sys.stderr.write(f"recording: error: {message}\n")
    sys.stderr.flush()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recording",
        description="Record raw Coinbase level-2 frames to a gzip JSON-lines file.",
    )
    parser.add_argument("output", help="file to write, e.g. btc.jsonl.gz")
    parser.add_argument("--products", default="BTC-USD,ETH-USD,BTC-EUR,ETH-EUR")
    parser.add_argument(
        "--feed",
        default="exchange",
        choices=("exchange", "exchange-auth", "advanced-trade"),
    )
    parser.add_argument("--url", help="override the feed URL (e.g. the local exchange)")
    parser.add_argument(
        "--duration",
        type=validation.argparse_type("--duration", validation.number),
        help="seconds to record, a number > 0 (default: until Ctrl-C)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--overwrite", action="store_true", help="replace an existing file"
    )
    existing.add_argument(
        "--append", action="store_true", help="add to an existing recording"
    )
    audit = parser.add_argument_group(
        "REST audits", "record the REST books a replay audits its books against"
    )
    audit.add_argument(
        "--audit-interval",
        type=validation.argparse_type("--audit-interval", _seconds_or_off),
        default=0.0,
        help="seconds between two REST audits of one product (default 0: off)",
    )
    audit.add_argument(
        "--audit-levels",
        type=validation.argparse_type("--audit-levels", _audit_levels),
        default=50,
        help=f"levels a side recorded, 1 to {MAX_AUDIT_LEVELS} (default 50)",
    )
    audit.add_argument(
        "--audit-rate",
        type=validation.argparse_type("--audit-rate", _audit_rate),
        default=3.0,
        help="REST requests a second, above 0 and at most 10 (default 3)",
    )
    audit.add_argument(
        "--rest-url",
        help="the REST base (default: Coinbase's for the feed, the --url's host for "
        "a local exchange)",
    )
    args = parser.parse_args(argv)
    try:
        products = list(validation.products("--products", args.products))
        url = validation.ws_url("--url", args.url)
        rest_url = validation.http_url("--rest-url", args.rest_url)
    except ConfigError as exc:
        parser.error(str(exc))
    mode = "overwrite" if args.overwrite else "append" if args.append else "new"
    problem = check_output(args.output, mode, FEEDS[args.feed].protocol, products)
    if problem is not None:
        return _refuse(problem)
    credentials = None
    if args.feed == "exchange-auth":
        from coinbase.auth import Credentials

        try:
            credentials = Credentials.from_env()
        except ValueError as exc:
            return _refuse(str(exc))
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    async def run() -> dict[str, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await record(
            args.output,
            products,
            args.feed,
            url,
            args.duration,
            credentials,
            sys.stderr,
            stop,
            mode=mode,
            audit_interval=args.audit_interval,
            audit_levels=args.audit_levels,
            audit_rate=args.audit_rate,
            rest_url=rest_url,
        )

    try:
        totals = asyncio.run(run())
    except RecorderError as exc:
        return _refuse(str(exc), 1)
    audits = f" and {totals['audits']} REST audits" if totals["audits"] else ""
    print(
        f"wrote {totals['frames']} frames ({totals['bytes']} bytes){audits} to "
        f"{args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
