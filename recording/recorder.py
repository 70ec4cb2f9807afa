"""The recorder: every raw frame of some products, to a recording file."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime

from recording.format import (
    RecordingWriter,
)

log = logging.getLogger(__name__)


async def _record_product(
    writer: RecordingWriter,
    url: str,
    feed: str,
    product_id: str,
    credentials,
    stop: asyncio.Event,
) -> None:
    import websockets

    from coinbase_source import MAX_FRAME_BYTES, subscribe_messages

    delay = 0.25
    while not stop.is_set():
        try:
            async with websockets.connect(
                url, max_size=MAX_FRAME_BYTES, open_timeout=10
            ) as ws:
                writer.connected(product_id)
                for message in subscribe_messages(feed, product_id, credentials):
                    await ws.send(json.dumps(message))
                delay = 0.25
                while not stop.is_set():
                    recv = asyncio.ensure_future(ws.recv())
                    stopped = asyncio.ensure_future(stop.wait())
                    done, _ = await asyncio.wait(
                        {recv, stopped}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if recv not in done:
                        recv.cancel()
                        return
                    stopped.cancel()
                    writer.frame(product_id, recv.result(), time.time_ns())
        except (TimeoutError, OSError, websockets.WebSocketException) as exc:
            log.warning(
                "%s: connection lost (%s); reconnecting in %.2fs",
                product_id,
                exc,
                delay,
            )
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)


async def record(
    path: str | os.PathLike,
    products: list[str],
    feed: str = "exchange",
    url: str | None = None,
    duration: float | None = None,
    credentials=None,
    progress: io.TextIOBase | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, int]:
    """Record every frame of ``products`` until ``duration`` elapses or ``stop`` is set."""
    from coinbase_source import FEEDS

    spec = FEEDS[feed]
    url = url or spec.url
    stop = stop or asyncio.Event()
    header = {
        "protocol": spec.protocol,
        "feed": feed,
        "url": url,
        "products": list(products),
        "started": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    writer = RecordingWriter(path, header)
    tasks = [
        asyncio.create_task(_record_product(writer, url, feed, p, credentials, stop))
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
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        if progress is not None:
            progress.write("\n")
    return {"frames": writer.frames, "bytes": writer.frame_bytes}


def main(argv: list[str] | None = None) -> int:
    from service.settings import ConfigError, parse_products, parse_url

    parser = argparse.ArgumentParser(
        description="Record raw Coinbase level-2 frames to a gzip JSON-lines file."
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
    args = parser.parse_args(argv)
    try:
        products = list(parse_products(args.products, "--products"))
        url = parse_url(args.url, "--url")
    except ConfigError as exc:
        parser.error(str(exc))
    if args.duration is not None and args.duration <= 0:
        parser.error(f"--duration must be > 0, got {args.duration}")
    credentials = None
    if args.feed == "exchange-auth":
        from coinbase.auth import Credentials

        try:
            credentials = Credentials.from_env()
        except ValueError as exc:
            parser.error(str(exc))
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
        )

    totals = asyncio.run(run())
    print(f"wrote {totals['frames']} frames ({totals['bytes']} bytes) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
