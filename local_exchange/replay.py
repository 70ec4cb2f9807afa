"""Serving a recording (``--replay``): recorded frames, verbatim, to whoever subscribes.

The products are the recording's. A subscribe for product P on the recording's protocol
path gets P's recorded frames in recorded order (several products: merged by receive
time), paced by ``speed`` (1 = original pace, N = N times faster, None = as fast as
possible). With ``announce``, a recorded subscriptions reply gets the
``"local_exchange": "replay"`` field appended (nothing else is touched), so the client can
tell replayed data from live and ends at the close below.

A recording has an end: after the last frame the server closes the connection normally
(1000). Staying open and silent instead made the client's watchdog take the silence for
a dead connection after 5 s, reconnect, and read the whole recording again. For the same
reason a product is played once per exchange: a subscribe for a product already played
to its end (a client reconnecting after the close) is closed normally at once, with
nothing sent. Start a new exchange to serve the recording again.

The recording reader (:mod:`recording.format`) yields whatever JSON a line holds; a record
that is not an object with a text ``frame``, a ``product_id`` of a product id's shape
(:func:`common.domain.is_product_id`: a served product's name reaches clients and logs)
and an integer ``t_ns`` is skipped, counted (``stats["replay_records_skipped"]``) and
logged at most once a second.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
from typing import TYPE_CHECKING, Any

import orjson

from coinbase.feeds import ADVANCED_TRADE
from common.domain import is_product_id
from common.logs import RateLimitedLog
from local_exchange.connections import CLOSE, Connection, Stats
from local_exchange.protocol import ADVANCED_TRADE_PATH, MARKER_FIELD, dumps
from recording.format import RecordingError
from recording.reader import Recording

if TYPE_CHECKING:
    from local_exchange.protocol import Protocol

log = logging.getLogger("local_exchange.replay")

_JSON_KINDS = {list: "array", str: "string", type(None): "null", bool: "boolean"}
_JSON_KINDS |= {int: "number", float: "number"}

Frame = tuple[int, int, str]
"""``(receive time ns, record index, frame text)``: sorts in recorded order."""


def _requested_products(msg: dict) -> list[str]:
    pids: list[str] = []
    if isinstance(msg.get("product_ids"), list):
        pids += [p for p in msg["product_ids"] if isinstance(p, str)]
    for ch in msg.get("channels") or []:
        if isinstance(ch, dict) and isinstance(ch.get("product_ids"), list):
            pids += [p for p in ch["product_ids"] if isinstance(p, str)]
    return list(dict.fromkeys(pids))


def _marked(frame: str) -> str:
    """A recorded subscriptions reply with the replay marker appended; others as is."""
    if '"subscriptions"' not in frame[:80]:
        return frame
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return frame
    if not isinstance(msg, dict) or "subscriptions" not in (
        msg.get("type"),
        msg.get("channel"),
    ):
        return frame
    body = frame.rstrip()
    return body[:-1] + "," + dumps(MARKER_FIELD) + ':"replay"}'


class ReplayServer:
    """Loads a recording's frames per product and serves them to subscribers."""

    def __init__(
        self,
        path: str | os.PathLike,
        speed: float | None,
        stats: Stats,
        announce: bool = False,
    ) -> None:
        try:
            self.recording = Recording.open(path)
        except RecordingError as exc:
            raise ValueError(str(exc)) from None
        self._speed = speed
        self._announce = announce
        self._stats = stats
        self._bad_log = RateLimitedLog(log)
        self._frames: dict[str, list[Frame]] = {}
        self._played: set[str] = set()  # products whose recording was played to its end
        for index, record in self.recording.records():
            self._load(index, record)
        self.products = tuple(dict.fromkeys([*self.recording.products, *self._frames]))

    @property
    def protocol(self) -> str:
        return self.recording.protocol

    def _load(self, index: int, record: Any) -> None:
        if not isinstance(record, dict):
            self._skip(
                index, f"JSON {_JSON_KINDS.get(type(record), 'value')}, not an object"
            )
            return
        if record.get("event") is not None:
            return  # a (re)connection marker: the recorded frames after it say it all
        if "audit" in record:
            return  # a recorded REST book (recording.format): its server is this one
        frame, pid, t_ns = (
            record.get("frame"),
            record.get("product_id"),
            record.get("t_ns"),
        )
        if t_ns is None:
            t_ns = 0
        if (
            not isinstance(frame, str)
            or not isinstance(pid, str)
            or isinstance(t_ns, bool)
            or not isinstance(t_ns, int)
        ):
            self._skip(index, "no text frame, product_id and integer t_ns")
            return
        if not is_product_id(pid):
            self._skip(index, "its product_id is not a product id")
            return
        if self._announce:
            frame = _marked(frame)
        self._frames.setdefault(pid, []).append((t_ns, index, frame))

    def _skip(self, index: int, why: str) -> None:
        self._stats.bump("replay_records_skipped")
        self._bad_log.warning(
            "%s: record %d skipped: %s", self.recording.path, index, why
        )

    def handle(self, conn: Connection, msg: dict, *, subscribe: bool) -> None:
        """Start serving the requested products (an unsubscribe is ignored)."""
        if not subscribe:
            return
        protocol: Protocol = conn.protocol
        if protocol.name != self.protocol:
            conn.put(
                "error",
                protocol.error(
                    f"this server replays a recording of the {self.protocol} feed "
                    f"at path {ADVANCED_TRADE_PATH if self.protocol == ADVANCED_TRADE else '/'}"
                ),
            )
            return
        wanted, ended = [], []
        served = conn.subs.setdefault("replay", [])
        for pid in _requested_products(msg):
            if pid not in self.products:
                conn.put("error", protocol.error(f"{pid} is not a valid product"))
            elif pid in self._played:
                ended.append(pid)
            elif pid not in served:
                served.append(pid)
                wanted.append(pid)
        if wanted:
            conn.replays_running += 1
            conn.tasks.append(asyncio.create_task(self._serve(conn, wanted)))
        elif ended and conn.replays_running == 0:
            conn.put("close", CLOSE)  # played already: the recording's end, at once

    async def _serve(self, conn: Connection, pids: list[str]) -> None:
        try:
            await self._play(conn, pids)
            self._played.update(pids)
        finally:
            conn.replays_running -= 1
            if conn.replays_running == 0:
                conn.put("close", CLOSE)

    async def _play(self, conn: Connection, pids: list[str]) -> None:
        frames = list(heapq.merge(*(self._frames.get(p, []) for p in pids)))
        if not frames:
            return
        loop = asyncio.get_running_loop()
        start, t0 = loop.time(), frames[0][0]
        for n, (t_ns, _, text) in enumerate(frames):
            if self._speed:
                wait = start + (t_ns - t0) / 1e9 / self._speed - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif n % 1000 == 999:
                await asyncio.sleep(0)
            conn.put("replay", text)
