"""A hostile Exchange-feed server on 127.0.0.1: the red team's attacks, generated.

Each connection gets a valid ``subscriptions`` reply and a valid snapshot per product, then
a *script* of attacks drawn from :data:`ATTACKS` by a seeded :class:`random.Random`
(extreme numbers, forged product ids, binary frames, frames over the client's size limit,
floods of malformed updates, invalid and deeply nested JSON, wrong types), and at its end
a *sentinel*: a fresh valid snapshot of every product whose best bid names the connection
(``99.{index}5``, above the ladder's other bids), so a test can tell that the client read past the attacks and its books
are right again (an attack that makes the client hang up cuts its script short). Every
connection after the scripts is clean: snapshots whose best bid is
``sentinel_bid(len(scripts))``, then heartbeats. A subscribe the client sends later (a
one-product resync) is answered with the product's current snapshot.

A :class:`~tests.support.scripted_server.ScriptedServer` runs it.
``HostileExchange(seed, scripts=4, huge_bytes=...)``: ``url``, ``connections``,
``sentinel_bid(index)``, ``attacks_sent`` (names of the attacks played, in order).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any, Self

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.support.frames import (
    exchange_heartbeat,
    exchange_l2update,
    exchange_snapshot,
    exchange_subscriptions,
    ladder,
)
from tests.support.scripted_server import ScriptedConnection, ScriptedServer

FORGED_IDS = (
    "../../../tmp/owned",
    "BTC-USD\n2026-01-01 00:00:00 ERROR forged log line",
    "\x1b[2J\x1b[31mRED-USD",
    "<script>alert(1)</script>",
    "btc-usd",
    "",
    "A" * 1_000_000,
)
EXTREME_NUMBERS = (
    "1e20",
    "100000000000000000000.00000001",
    "1e-999999999",
    "1e-40",
    "1e25",
    "1e400",
    "NaN",
    "-Infinity",
    "Infinity",
    "-5",
    "0x10",
    "",
    "1" * 5000,
    "0." + "0" * 5000 + "1",
)


def _extreme_snapshot(rng: random.Random, product: str) -> str:
    big = rng.choice(EXTREME_NUMBERS)
    return json.dumps(
        exchange_snapshot(
            product, bids=[[big, "1"]], asks=[[big, rng.choice(EXTREME_NUMBERS)]]
        )
    )


def _extreme_update(rng: random.Random, product: str) -> str:
    side = rng.choice(("buy", "sell", "offer", "", "BUY"))
    return json.dumps(
        exchange_l2update(
            product,
            [(side, rng.choice(EXTREME_NUMBERS), rng.choice(EXTREME_NUMBERS))],
        )
    )


def _wrong_types(rng: random.Random, product: str) -> str:
    frame = rng.choice(
        [
            {"type": "l2update", "product_id": product, "changes": 5},
            {"type": "l2update", "product_id": product, "changes": [[1, 2, 3]]},
            {
                "type": "l2update",
                "product_id": product,
                "changes": [["buy", 1.5, None]],
            },
            {"type": "snapshot", "product_id": product, "bids": "x", "asks": None},
            {"type": "snapshot", "product_id": [product], "bids": [], "asks": []},
            {"type": None},
            [1, 2, 3],
            "just a string",
            {
                "type": "l2update",
                "product_id": product,
                "time": "not a time",
                "changes": [["buy", "100", "1"]],
            },  # fmt: skip
        ]
    )
    return json.dumps(frame)


def _forged_id(rng: random.Random, _product: str) -> str:
    forged = rng.choice(FORGED_IDS)
    if rng.random() < 0.5:
        return json.dumps(exchange_snapshot(forged, *ladder(100, 3)))
    return json.dumps(exchange_l2update(forged, [("buy", "99", "3")]))


def _invalid_json(rng: random.Random, _product: str) -> str:
    return rng.choice(
        [
            '{"type": "l2update", "product_id": ',
            "\x00\xff garbage",
            "[" * 100_000,
            "{}{}",
        ]
    )


Attack = tuple[str, Callable[[random.Random, str], Any]]
ATTACKS: tuple[Attack, ...] = (
    ("extreme-snapshot", _extreme_snapshot),
    ("extreme-update", _extreme_update),
    ("wrong-types", _wrong_types),
    ("forged-id", _forged_id),
    ("invalid-json", _invalid_json),
    ("binary", lambda rng, _p: rng.randbytes(rng.randint(1, 4096))),
    ("flood", None),  # 5,000 malformed updates
    ("huge", None),  # one frame over the client's size limit: it must hang up
)


class HostileExchange:
    """``with HostileExchange(seed=1, products=[...], scripts=4) as ex: ... ex.url``."""

    def __init__(
        self,
        seed: int,
        products: list[str],
        scripts: int = 4,
        attacks_per_script: int = 12,
        huge_bytes: int = 4 << 20,
    ) -> None:
        self.products = products
        self.huge_bytes = huge_bytes
        rng = random.Random(seed)
        self.scripts: list[list[tuple[str, int]]] = []
        for _ in range(scripts):
            picks = [
                (rng.randrange(len(ATTACKS) - 1), rng.randrange(1 << 30))
                for _ in range(attacks_per_script)
            ]
            self.scripts.append(picks)
        # Attacks that make the client hang up (a frame too big; a frame of no known
        # product resets the whole connection) cut a script short, so the two that
        # must be seen open scripts of their own: a flood first, then a huge frame.
        flood = next(i for i, (name, _) in enumerate(ATTACKS) if name == "flood")
        self.scripts[1 % scripts].insert(0, (flood, 0))
        self.scripts[2 % scripts].insert(0, (len(ATTACKS) - 1, 0))
        self.attacks_sent: list[str] = []
        self._books: dict[str, tuple[list, list]] = {
            p: ladder(100, 5) for p in products
        }
        self._server = ScriptedServer(self._handle)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def connections(self) -> int:
        """Connections accepted so far (the next one plays script ``connections``)."""
        return self._server.connections

    @staticmethod
    def sentinel_bid(index: int) -> str:
        """The best bid of every product after connection ``index``'s script."""
        return f"99.{index}5"

    def _set_sentinel(self, index: int) -> None:
        for product in self.products:
            bids, asks = ladder(100, 5)
            bids[0] = [self.sentinel_bid(index), "1.25"]  # replaces 99
            self._books[product] = (bids, asks)

    async def _snapshots(self, ws: ServerConnection, products: list[str]) -> None:
        for product in products:
            bids, asks = self._books[product]
            await ws.send(json.dumps(exchange_snapshot(product, bids, asks)))

    async def _listen(self, ws: ServerConnection) -> None:
        """Answer every later subscribe with the products' current snapshots."""
        async for message in ws:
            try:
                request = json.loads(message)
            except ValueError:
                continue
            if not isinstance(request, dict) or request.get("type") != "subscribe":
                continue
            products = set(request.get("product_ids") or [])
            for channel in request.get("channels") or []:
                if isinstance(channel, dict):
                    products.update(channel.get("product_ids") or [])
            wanted = sorted(p for p in products if p in self._books)
            await ws.send(json.dumps(exchange_subscriptions(wanted)))
            await self._snapshots(ws, wanted)

    async def _play(self, ws: ServerConnection, index: int) -> None:
        if index >= len(self.scripts):  # clean from now on
            self._set_sentinel(len(self.scripts))
            await self._snapshots(ws, self.products)
        else:
            script = self.scripts[index]
            for attack, seed in script:
                name, build = ATTACKS[attack]
                self.attacks_sent.append(name)
                rng = random.Random(seed)
                product = rng.choice(self.products)
                if name == "flood":
                    bad = json.dumps(exchange_l2update(product, [("buy", "NaN", "1")]))
                    for _ in range(5000):
                        await ws.send(bad)
                elif name == "huge":
                    await ws.send("x" * self.huge_bytes)
                    return  # the client must hang up now
                else:
                    await ws.send(build(rng, product))
            self._set_sentinel(index)
            await self._snapshots(ws, self.products)
        sequence = 0
        while True:
            await asyncio.sleep(0.5)
            sequence += 1
            for product in self.products:
                await ws.send(json.dumps(exchange_heartbeat(product, sequence)))

    async def _handle(self, conn: ScriptedConnection) -> None:
        ws = conn.ws
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert isinstance(first, dict) and first.get("type") == "subscribe"
            await ws.send(json.dumps(exchange_subscriptions(self.products)))
            await self._snapshots(ws, self.products)
            listener = asyncio.create_task(self._listen(ws))
            try:
                await self._play(ws, conn.index)
                await ws.wait_closed()
            finally:
                listener.cancel()
        except (ConnectionClosed, TimeoutError, AssertionError, ValueError):
            pass

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
