"""``python -m local_exchange``: run the local Coinbase exchange until Ctrl-C or SIGTERM.

Both signals are taken explicitly, whatever the process inherited: a non-interactive shell
starts a background job (``cmd &``) with SIGINT ignored, the ignored disposition survives
``exec``, and CPython installs its ``KeyboardInterrupt`` handler only over the default
one, so the old CLI, started by a test suite that ran in the background, ignored Ctrl-C
for good. They are blocked before the server thread starts and taken with
``signal.sigwait``: no handler runs in the middle of start-up or shutdown code, and a
signal that arrives early stays pending until the exchange is up, then stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from coinbase.feeds import ADVANCED_TRADE, DEFAULT_PRODUCTS, EXCHANGE
from common import validation
from common.validation import argparse_type
from local_exchange.config import RATE_MAX, ExchangeConfig
from local_exchange.market import MAX_DEPTH
from local_exchange.server import LocalExchange

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _number(name: str, high: float) -> Callable[[str], float]:
    return argparse_type(name, lambda n, text: validation.number(n, text, high=high))


def _integer(name: str, low: int, high: int) -> Callable[[str], int]:
    return argparse_type(name, lambda n, text: validation.integer(n, text, low, high))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local_exchange",
        description=(
            "Local Coinbase level-2 exchange: Exchange feed at ws://HOST:PORT/ and Advanced "
            "Trade feed at ws://HOST:PORT/advanced-trade, simulated or replayed from a "
            "recording; Coinbase's REST books on the same port (http://HOST:PORT/products/"
            "ID/book?level=2, /api/v3/brokerage/market/product_book?product_id=ID), and "
            "faults while it runs through GET /_local/corrupt?product_id=ID&kind=skip|"
            "wrong_size and /_local/rest-errors?kind=429|500|timeout|not_json&count=N "
            "(request log: /_local/rest-requests). level2 auth credentials come from the environment variables "
            "COINBASE_SIM_API_KEY, COINBASE_SIM_API_SECRET (base64) and "
            "COINBASE_SIM_PASSPHRASE, never from the command line."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=_integer("--port", 0, 65535), default=8765,
        help="0 = any free port (default 8765)")  # fmt: skip
    add("--products", type=argparse_type("--products", validation.products),
        default=DEFAULT_PRODUCTS,
        help=f"comma-separated product ids (default {','.join(DEFAULT_PRODUCTS)})")  # fmt: skip
    add("--depth", type=_integer("--depth", 1, MAX_DEPTH), default=1000,
        help="levels per side (default 1000)")  # fmt: skip
    add("--rate", type=_number("--rate", RATE_MAX), default=20.0,
        help=f"batches per second per product, at most {RATE_MAX:g} (default 20)")  # fmt: skip
    add("--changes-per-batch", type=_integer("--changes-per-batch", 1, 10_000),
        default=5, help="changes per batch (default 5)")  # fmt: skip
    add("--seed", type=_integer("--seed", -(2**63), 2**63 - 1), default=0,
        help="random seed (default 0)")  # fmt: skip
    add("--heartbeat-interval", type=_number("--heartbeat-interval", 3600),
        default=1.0, help="seconds (default 1)")  # fmt: skip
    add("--socket-lag", type=_integer("--socket-lag", 0, 1000), default=1,
        help="market steps the WebSocket feeds run behind the true book and its REST "
             "books (default 1: 50 ms at 20 batches a second)")  # fmt: skip
    add("--max-l2-streams", type=_integer("--max-l2-streams", 1, 10_000), default=16,
        help="Advanced Trade level2 products per connection (default 16)")  # fmt: skip
    add("--replay", metavar="PATH",
        help="serve this recording instead of simulating; tardis.dev CSV files and "
             "cryptofeed captures (paths or globs, comma-separated) are converted "
             "first")  # fmt: skip
    add("--speed", type=_number("--speed", 1e9), default=None,
        help="replay pacing: 1 = original, N = N times faster (default: as fast as possible)")  # fmt: skip
    return parser


def _config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> ExchangeConfig:
    args = parser.parse_args(argv)
    if args.speed is not None and not args.replay:
        parser.error("--speed only applies with --replay PATH")
    if args.replay:
        # a recording of this project, or foreign files (tardis.dev, cryptofeed)
        # converted first into a temporary recording: importers/replay.py
        from importers.replay import ReplayInputError, recording_to_serve

        try:
            args.replay = str(recording_to_serve(args.replay))
        except ReplayInputError as exc:
            parser.error(f"--replay: {exc}")
    env = os.environ
    try:
        return ExchangeConfig(
            products=args.products,
            depth=args.depth,
            rate=args.rate,
            changes_per_batch=args.changes_per_batch,
            seed=args.seed,
            host=args.host,
            port=args.port,
            api_key=env.get("COINBASE_SIM_API_KEY"),
            api_secret=env.get("COINBASE_SIM_API_SECRET"),
            passphrase=env.get("COINBASE_SIM_PASSPHRASE"),
            heartbeat_interval=args.heartbeat_interval,
            socket_lag=args.socket_lag,
            max_l2_streams=args.max_l2_streams,
            recording=args.replay,
            replay_speed=args.speed,
            announce=True,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; exit status 0, 2 for a bad option, 1 if it cannot
    listen."""
    parser = build_parser()
    config = _config(parser, argv)
    try:
        exchange = LocalExchange(config=config)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # An inherited SIG_IGN (a shell starts background jobs with SIGINT ignored) would
    # make Ctrl-C do nothing: take both signals explicitly. Blocked before any thread
    # starts (threads inherit the mask), they stay pending for sigwait in _serve.
    handlers = {sig: signal.signal(sig, signal.SIG_DFL) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return _serve(exchange, config)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _serve(exchange: LocalExchange, config: ExchangeConfig) -> int:
    try:
        exchange.start()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    mode = (
        f"replaying {config.recording}"
        if config.recording
        else f"simulating {', '.join(exchange.products)}"
    )
    auth = "enabled" if exchange.level2_auth else "not configured (level2 refused)"
    print(f"local Coinbase exchange {mode}")
    print(f"  Exchange feed:       {exchange.url(EXCHANGE)}")
    print(f"  Advanced Trade feed: {exchange.url(ADVANCED_TRADE)}")
    rest = exchange.rest_url()
    print(f"  REST books:          {rest}/products/ID/book?level=2")
    print(
        f"                       {rest}/api/v3/brokerage/market/product_book?product_id=ID"
    )
    print(f"  faults:              {rest}/_local/corrupt?product_id=ID&kind=skip")
    print(f"                       {rest}/_local/rest-errors?kind=429&count=N")
    print(f"  level2 auth: {auth}")
    print("Ctrl-C to stop", flush=True)
    received = signal.sigwait(STOP_SIGNALS)
    print(f"{signal.Signals(received).name}: stopping", flush=True)
    exchange.stop()
    print("stopped", flush=True)
    return 0
