"""One product's feed session, sans-IO: its freshness rules and typed stats.

:class:`Session` is one product's state; :class:`~coinbase.multiplex.ConnectionSession`
(in :mod:`coinbase.multiplex`) is one connection carrying several products' sessions: it
decodes the frames, routes each product's events to its session, and decides which
faults concern which products. Following python-websockets' design (a protocol core that
never touches a socket, under a thin asyncio layer), neither knows how frames arrive, so
every rule is testable with hand-built frames, no socket
(``tests/test_coinbase_session.py``). The connection session calls:

* :meth:`Session.start` once: the events that open the partition (a reset);
* :meth:`Session.attach` on each new connection that carries the product;
* :meth:`Session.offer` with the product's decoded events: those to emit;
* :meth:`Session.resubscribe` when the product alone needs a fresh snapshot, and
  :meth:`Session.fail` when a permanent error names it;
* :meth:`Session.disconnect` when a connection ended: the reset and whether to reconnect.

The rules of one product:

* A :class:`~events.BookReset` comes first (fresh or resumed) and again whenever a
  connection ends or the product is resubscribed, before anything else of the product;
  consecutive resets are collapsed into one.
* Updates before the snapshot that follows a reset are dropped and counted.
* A permanent error reply (unknown product, refused credentials) stops the session.
* The local exchange marks its subscriptions reply with ``"local_exchange": "sim"`` or
  ``"replay"``: from then on the data's feed is that, whatever URL led there (``replay``
  wins over ``sim``, since a replayed recording of the sim carries the sim's marker).
  A served replay ends with a normal close (code 1000): that is the end of the data, not
  a fault, so the session ends instead of reconnecting.
* Log lines: a resync is logged at most once a second per product (a count of the lines
  held back comes with the next one), and any feed text a line quotes (a reason, an
  error reply, a close reason) goes through :func:`common.text.shown`, escaped and cut
  to :data:`LOGGED_CHARS`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from orjson import loads

from coinbase.errors import AuthError, FeedError, UnknownProduct
from coinbase.feeds import FEEDS, LOCAL_FEEDS, _check_product, coinbase_feed
from common.logs import RateLimitedLog
from common.text import shown
from events import BookChanges, BookEvent, BookReset, BookSnapshot

__all__ = [
    "Action",
    "Session",
    "SessionStats",
    "Step",
]

log = logging.getLogger(__name__)

LOCAL_EXCHANGE_MARKER = "local_exchange"
"""Field of the local exchange's subscriptions reply naming its feed."""
NORMAL_CLOSURE = 1000
LOGGED_CHARS = 400
"""Characters of a reason or an error quoting feed text kept in one log line (a
malformed frame's reason and 160-character excerpt fit; a 1 MB product id does not)."""


class Action(Enum):
    """What the connection layer must do after a step."""

    CONTINUE = "continue"
    """Keep reading (or, after a disconnect: reconnect)."""
    RESYNC = "resync"
    """End this connection; reconnect for a fresh snapshot."""
    STOP = "stop"
    """Stop for good: retrying cannot help (unknown product, refused credentials)."""
    END = "end"
    """The data is over (a served replay finished): stop, without a fault."""


@dataclass(slots=True)
class Step:
    """Events to emit, then what to do; ``reason`` says why when not CONTINUE."""

    events: list[BookEvent] = field(default_factory=list)
    action: Action = Action.CONTINUE
    reason: str = ""


@dataclass(slots=True)
class SessionStats:
    """Counters of one product's session over all its connections."""

    state: str = "starting"
    """starting, connecting, connected, reconnecting, failed, finished or closed."""
    frames: int = 0
    events: int = 0
    snapshots: int = 0
    malformed_frames: int = 0
    bad_times: int = 0
    dropped_before_snapshot: int = 0
    foreign: int = 0
    resets: int = 0
    resyncs: int = 0
    connections: int = 0
    reconnects: int = 0
    sequence_gaps: int = 0
    backlog_drops: int = 0
    errors: int = 0
    last_error: str | None = None
    last_disconnect: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Session:
    """The book-side state of one product's feed; one per partition, across reconnects."""

    def __init__(
        self,
        product_id: str,
        feed: str,
        *,
        protocol: str | None = None,
        resumed: bool = False,
    ) -> None:
        self.protocol = FEEDS[coinbase_feed(feed, protocol)].protocol
        self.product_id = _check_product(product_id)
        self.feed = feed
        """The feed every event carries; the local exchange's marker overrides it."""
        self.local_exchange: str | None = None
        """What the local exchange said it serves (``sim``/``replay``), if it is one."""
        self.stats = SessionStats()
        self.error: FeedError | None = None
        """The permanent error that stopped this session, if any."""
        self._resumed = resumed
        self._awaiting_snapshot = True
        self._last_was_reset = False
        self._resync_log = RateLimitedLog(log)
        """Resync lines: at most one a second for this product (5,000 malformed updates
        in a second used to log 5,000), with a count of the ones it held back."""

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Whether the current connection delivered its snapshot (the book is live)."""
        return not self._awaiting_snapshot

    @property
    def done(self) -> bool:
        """Stopped for good or finished: no reconnecting."""
        return self.stats.state in ("failed", "finished")

    def start(self) -> list[BookEvent]:
        """The partition's first events: a reset, so that no stale book is ever served."""
        return self._reset("resume" if self._resumed else "start")

    def attach(self) -> None:
        """A new connection carries this product (the connection owns the decoder)."""
        self.stats.connections += 1
        self.stats.state = "connected"
        self._awaiting_snapshot = True

    def resubscribe(self, reason: str) -> list[BookEvent]:
        """This product alone needs a fresh snapshot on a live shared connection: a
        reset now; the caller unsubscribes and subscribes it again."""
        self.stats.resyncs += 1
        self._resync_log.warning(
            "%s: resync (resubscribing it alone): %s",
            self.product_id,
            shown(reason, LOGGED_CHARS),
        )
        return self._reset(reason)

    def fail(self, exc: FeedError) -> list[BookEvent]:
        """A permanent error names this product: a reset, and it stops for good."""
        self.stats.state = "failed"
        return self._reset(self._failed(exc))

    def connect_failed(self, reason: str) -> None:
        self.stats.state = "connecting"
        self.stats.last_error = reason[:300]

    def retrying(self) -> None:
        """About to back off and connect again."""
        self.stats.reconnects += 1
        self.stats.state = "connecting"

    def disconnect(self, reason: str, close_code: int | None = None) -> Step:
        """The connection ended for ``reason``: a reset, then reconnect, stop or end."""
        self.stats.last_disconnect = reason
        events = self._reset(reason)
        if self.error is not None:
            self.stats.state = "failed"
            return Step(events, Action.STOP, reason)
        if self.local_exchange == "replay" and close_code == NORMAL_CLOSURE:
            self.stats.state = "finished"
            log.info("%s: the served replay is over", self.product_id)
            return Step(events, Action.END, "end of the served replay")
        self.stats.state = "reconnecting"
        log.info("%s: disconnected: %s", self.product_id, shown(reason, LOGGED_CHARS))
        return Step(events, Action.CONTINUE, reason)

    def close(self) -> None:
        if not self.done:
            self.stats.state = "closed"

    # -- frames ---------------------------------------------------------------------------

    def offer(self, decoded: list[BookEvent]) -> list[BookEvent]:
        """Events decoded from this product's frames: the freshness rules applied."""
        stats = self.stats
        out: list[BookEvent] = []
        for event in decoded:
            if event.product_id != self.product_id:
                stats.foreign += 1
                continue
            if isinstance(event, BookSnapshot):
                self._awaiting_snapshot = False
                stats.snapshots += 1
            elif self._awaiting_snapshot and isinstance(event, BookChanges):
                stats.dropped_before_snapshot += 1
                continue
            self._last_was_reset = False
            out.append(event)
        stats.events += len(out)
        return out

    def _read_marker(self, frame: str) -> None:
        """The local exchange's ``"local_exchange"`` field in its subscriptions reply."""
        try:
            payload = loads(frame)
        except ValueError:
            return
        if not isinstance(payload, dict) or "subscriptions" not in (
            payload.get("type"),
            payload.get("channel"),
        ):
            return
        marker = payload.get(LOCAL_EXCHANGE_MARKER)
        if marker not in LOCAL_FEEDS or self.local_exchange == "replay":
            return  # a recording of the sim replayed still says "replay"
        if marker != self.local_exchange:
            log.info(
                "%s: the server is the local exchange serving %s data; feed %r",
                self.product_id,
                marker,
                marker,
            )
        self.local_exchange = marker
        self.feed = marker

    # -- decisions ------------------------------------------------------------------------

    def _reset(self, reason: str) -> list[BookEvent]:
        self._awaiting_snapshot = True
        if self._last_was_reset:
            return []
        self._last_was_reset = True
        self.stats.resets += 1
        return [BookReset(self.product_id, reason, self.feed, time.time_ns())]

    def _failed(self, exc: FeedError) -> str:
        """A permanent error reply: counted, kept, said once; its line."""
        self.stats.errors += 1
        if isinstance(exc, UnknownProduct):
            message = (
                f"Coinbase does not know product {self.product_id} on feed {self.feed}: "
                f"{exc}; this partition stops"
            )
        elif isinstance(exc, AuthError):
            message = (
                f"{self.product_id}: authentication failed on feed {self.feed}: {exc}"
            )
        else:
            message = f"{self.product_id}: {exc}"
        message = shown(message, LOGGED_CHARS)
        self.stats.last_error = message
        self.error = exc
        log.error("%s", message)
        return message
