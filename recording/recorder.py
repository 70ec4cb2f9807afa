"""The recorder: every raw frame of some products, to a recording file.

Each product is read through :class:`coinbase.connection.Connection`, the same
connection layer as the live source, so a recording gets the same pacing (Coinbase's 8
connections and messages per second per IP), jittered backoff and watchdog (a silent
connection is replaced, not recorded as a gap of hours). Every (re)connection is written
as a ``connected`` record, where a replay resets the product's book.

The command refuses, with one line and exit status 2 before connecting: an output
directory that does not exist, and an existing file unless ``--overwrite`` (replace it)
or ``--append`` (add to that recording: same protocol, products among its header's).
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

from coinbase.connection import Connection
from coinbase.feeds import FEEDS, subscribe_messages
from common import validation
from common.validation import ConfigError
from recording.format import RecordingError
from recording.reader import Recording
from recording.writer import RecordingWriter

log = logging.getLogger(__name__)

MODES = ("new", "overwrite", "append")


class _ProductRecorder:
    """A Connection handler that writes one product's frames as they arrive."""

    def __init__(
        self, writer: RecordingWriter, feed: str, product_id: str, credentials
    ) -> None:
        self._writer = writer
        self._feed = feed
        self._product_id = product_id
        self._credentials = credentials
        self.settled = False
        """A snapshot arrived on this connection (what proves it healthy)."""

    def opened(self) -> list[dict]:
        self.settled = False
        self._writer.connected(self._product_id)
        return subscribe_messages(
            self._feed, self._product_id, self._credentials, time.time()
        )

    def received(self, frame: str | bytes, received_ns: int) -> str | None:
        self._writer.frame(self._product_id, frame, received_ns)
        if not self.settled:  # both protocols say "snapshot" in a frame's first bytes
            self.settled = b'"snapshot"' in (
                frame[:400] if isinstance(frame, bytes) else frame[:400].encode()
            )
        return None

    def closed(self, reason: str, close_code: int | None) -> bool:
        log.warning("%s: %s; reconnecting", self._product_id, reason)
        return True

    def connect_failed(self, reason: str) -> None:
        pass  # the connection logs it

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
) -> dict[str, int]:
    """Record every frame of ``products`` until ``duration`` elapses or ``stop`` is set.

    ``mode``: ``new`` refuses an existing file (FileExistsError), ``overwrite`` replaces
    it, ``append`` adds to an existing recording (products must be among its header's).
    """
    spec = FEEDS[feed]
    url = url or spec.url
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    problem = check_output(path, mode, spec.protocol, products)
    if problem is not None:
        raise FileExistsError(problem)
    stop = stop or asyncio.Event()
    if mode == "append" and Path(path).exists():
        writer = RecordingWriter(path, None, append=True)
    else:
        header = {
            "protocol": spec.protocol,
            "feed": feed,
            "url": url,
            "products": list(products),
            "started": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        writer = RecordingWriter(path, header)
    tasks = [
        asyncio.create_task(
            Connection(url, name=p, watchdog_seconds=watchdog_seconds).run(
                _ProductRecorder(writer, feed, p, credentials)
            )
        )
        for p in products
    ]
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
        writer.close()
        if progress is not None:
            progress.write("\n")
    return {"frames": writer.frames, "bytes": writer.frame_bytes}


def _refuse(message: str) -> int:
    sys.stderr.write(f"recording: error: {message}\n")
    return 2


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
        "--duration", type=float, help="seconds to record (default: until Ctrl-C)"
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--overwrite", action="store_true", help="replace an existing file"
    )
    existing.add_argument(
        "--append", action="store_true", help="add to an existing recording"
    )
    args = parser.parse_args(argv)
    try:
        products = list(validation.products("--products", args.products))
        url = validation.ws_url("--url", args.url)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.duration is not None and args.duration <= 0:
        parser.error(f"--duration must be > 0, got {args.duration}")
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
        )

    totals = asyncio.run(run())
    print(f"wrote {totals['frames']} frames ({totals['bytes']} bytes) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
