"""Feed sessions, sans-IO: frames in, book events and decisions out.

:class:`Session` is one product's state; :class:`ConnectionSession` is one connection
carrying several products' sessions (see its docstring for which faults reset one
product and which reset them all). The notes below are about one product.

Following python-websockets' design (a protocol core that never touches a socket, under a
thin asyncio layer), this module holds every rule about *what the frames mean* for one
product's book, and nothing about how they arrive. The asyncio side
(:mod:`coinbase.connection`) opens sockets and calls:

* :meth:`Session.start` once: the events that open the partition (a reset);
* :meth:`Session.connect` on each new connection: the subscribe messages to send;
* :meth:`Session.receive` for each frame: a :class:`Step` with the events to emit and
  whether to go on, resync (end this connection, start afresh) or stop for good;
* :meth:`Session.overflow` when the consumer fell too far behind, and
  :meth:`Session.request_resync` when it asks for a fresh snapshot;
* :meth:`Session.disconnect` when a connection ended: the reset and whether to reconnect.

So every freshness rule is testable with hand-built frames, no socket
(``tests/test_coinbase_session.py``):

* A :class:`~events.BookReset` comes first (fresh or resumed) and again whenever a
  connection ends (close, error, silence, sequence gap, malformed book frame, overflow),
  before anything else of the product; consecutive resets are collapsed into one.
* Updates before the snapshot that follows a reset are dropped and counted.
* Resync is always a new connection: Exchange level2 frames carry no sequence, so a
  fresh subscription (new snapshot) is the only way back to a correct book.
* Error replies: unknown products and refused credentials are permanent (the session
  stops); other errors resync.
* The local exchange marks its subscriptions reply with ``"local_exchange": "sim"`` or
  ``"replay"``: from then on the data's origin is that, whatever URL led there (``replay``
  wins over ``sim``, since a replayed recording of the sim carries the sim's marker).
  A served replay ends with a normal close (code 1000): that is the end of the data, not
  a fault, so the session ends instead of reconnecting.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from coinbase.auth import Credentials
from coinbase.decode import FrameDecoder, _loads
from coinbase.errors import (
    AuthError,
    FeedError,
    MalformedFrame,
    SequenceGap,
    UnknownProduct,
)
from coinbase.feeds import (
    ADVANCED_TRADE,
    _check_feed,
    _check_product,
    subscribe_messages,
)
from events import BookChanges, BookEvent, BookReset, BookSnapshot
from service.logs import RateLimitedLog

__all__ = [
    "PRODUCTS_PER_CONNECTION",
    "Action",
    "ConnectionSession",
    "ConnectionStep",
    "Session",
    "SessionStats",
    "Step",
    "group_messages",
]

log = logging.getLogger(__name__)

LOCAL_EXCHANGE_MARKER = "local_exchange"
"""Field of the local exchange's subscriptions reply naming what it serves."""
LOCAL_ORIGINS = ("sim", "replay")
NORMAL_CLOSURE = 1000


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
    malformed: int = 0
    bad_times: int = 0
    dropped_before_snapshot: int = 0
    foreign: int = 0
    resets: int = 0
    resyncs: int = 0
    connections: int = 0
    reconnects: int = 0
    sequence_gaps: int = 0
    overflows: int = 0
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
        origin: str | None = None,
        credentials: Credentials | None = None,
        resumed: bool = False,
    ) -> None:
        self.protocol = _check_feed(feed).protocol
        self.product_id = _check_product(product_id)
        self.feed = feed
        self.origin = origin or feed
        """The label every event carries; the local exchange's marker overrides it."""
        self.local_exchange: str | None = None
        """What the local exchange said it serves (``sim``/``replay``), if it is one."""
        self.stats = SessionStats()
        self.error: FeedError | None = None
        """The permanent error that stopped this session, if any."""
        self._credentials = credentials
        self._resumed = resumed
        self._awaiting_snapshot = True
        self._last_was_reset = False
        self._decoder: FrameDecoder | None = None
        self._bad_times_before = 0
        self._malformed_log = RateLimitedLog(log)

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

    def connect(self, now: float | None = None) -> list[dict]:
        """A new connection is open: the subscribe messages (signed afresh at ``now``)."""
        self.attach()
        self._bad_times_before = self.stats.bad_times
        self._decoder = FrameDecoder(self.protocol, self.origin)
        return subscribe_messages(
            self.feed,
            self.product_id,
            self._credentials,
            time.time() if now is None else now,
        )

    def attach(self) -> None:
        """A new connection carries this product (the connection owns the decoder)."""
        self.stats.connections += 1
        self.stats.state = "connected"
        self._awaiting_snapshot = True

    def resubscribe(self, reason: str) -> list[BookEvent]:
        """This product alone needs a fresh snapshot on a live shared connection: a
        reset now; the caller unsubscribes and subscribes it again."""
        self.stats.resyncs += 1
        log.warning("%s: resync (resubscribing it alone): %s", self.product_id, reason)
        return self._reset(reason)

    def fail(self, exc: FeedError) -> list[BookEvent]:
        """A permanent error names this product: a reset, and it stops for good."""
        step = self._feed_error(exc)
        if step.action is not Action.STOP:  # pragma: no cover - callers pass permanent
            return []
        self.stats.state = "failed"
        return self._reset(step.reason)

    def connect_failed(self, reason: str) -> None:
        self.stats.state = "connecting"
        self.stats.last_error = reason[:300]

    def retrying(self) -> None:
        """About to back off and connect again."""
        self.stats.reconnects += 1
        self.stats.state = "connecting"

    def overflow(self, dropped: int) -> Step:
        """The consumer fell ``dropped`` events behind: drop the backlog and resync."""
        self.stats.overflows += 1
        return self._resync(f"the dataflow fell {dropped} events behind")

    def request_resync(self, reason: str) -> Step:
        """Someone downstream (the book step: a book stuck crossed) wants a new snapshot."""
        return self._resync(f"requested: {reason}")

    def disconnect(self, reason: str, close_code: int | None = None) -> Step:
        """The connection ended for ``reason``: a reset, then reconnect, stop or end."""
        self._decoder = None
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
        log.info("%s: disconnected: %s", self.product_id, reason)
        return Step(events, Action.CONTINUE, reason)

    def close(self) -> None:
        if not self.done:
            self.stats.state = "closed"

    # -- frames ---------------------------------------------------------------------------

    def receive(self, frame: str | bytes, received_ns: int) -> Step:
        """Decode one frame of the current connection and apply the freshness rules."""
        decoder = self._decoder
        if decoder is None:
            raise RuntimeError("receive() before connect()")
        stats = self.stats
        stats.frames += 1
        try:
            decoded = decoder.decode(frame, received_ns)
        except MalformedFrame as exc:
            stats.malformed += 1
            self._malformed_log.warning(
                f"{self.product_id}: skipped malformed frame: {exc}"
            )
            if exc.resync:
                return self._resync(f"malformed book frame ({exc.reason})")
            return Step()
        except SequenceGap as exc:
            stats.sequence_gaps += 1
            return self._resync(str(exc))
        except FeedError as exc:
            return self._feed_error(exc)
        finally:
            stats.bad_times = self._bad_times_before + decoder.bad_times
        if not decoded:
            if isinstance(frame, str) and LOCAL_EXCHANGE_MARKER in frame:
                self._read_marker(frame)
            return Step()
        return Step(self._offer(decoded))

    def offer(self, decoded: list[BookEvent]) -> list[BookEvent]:
        """Events decoded from this product's frames: the freshness rules applied."""
        return self._offer(decoded)

    def _offer(self, decoded: list[BookEvent]) -> list[BookEvent]:
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
            payload = _loads(frame)
        except ValueError:
            return
        if not isinstance(payload, dict) or "subscriptions" not in (
            payload.get("type"),
            payload.get("channel"),
        ):
            return
        marker = payload.get(LOCAL_EXCHANGE_MARKER)
        if marker not in LOCAL_ORIGINS or self.local_exchange == "replay":
            return  # a recording of the sim replayed still says "replay"
        if marker != self.local_exchange:
            log.info(
                "%s: the server is the local exchange serving %s data; origin %r",
                self.product_id,
                marker,
                marker,
            )
        self.local_exchange = marker
        self.origin = marker
        if self._decoder is not None:
            self._decoder.feed_label = marker

    # -- decisions ------------------------------------------------------------------------

    def _reset(self, reason: str) -> list[BookEvent]:
        self._awaiting_snapshot = True
        if self._last_was_reset:
            return []
        self._last_was_reset = True
        self.stats.resets += 1
        return [BookReset(self.product_id, reason, self.origin, time.time_ns())]

    def _resync(self, reason: str) -> Step:
        self.stats.resyncs += 1
        log.warning("%s: resync: %s", self.product_id, reason)
        return Step([], Action.RESYNC, reason)

    def _feed_error(self, exc: FeedError) -> Step:
        """An error reply: stop for good when permanent, else resync."""
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
        self.stats.last_error = message
        if exc.permanent:
            self.error = exc
            log.error(message)
            return Step([], Action.STOP, message)
        log.warning("%s; reconnecting", message)
        return Step([], Action.RESYNC, message)


# -- several products on one connection ---------------------------------------------------

PRODUCTS_PER_CONNECTION = {"exchange": 32, ADVANCED_TRADE: 16}
"""Products one connection carries at most, per protocol.

Advanced Trade refuses more than a few level2 products per connection ("too many L2
streams requested in a single session": a user found 32 failed and 16 worked; the local
exchange enforces 16, ``max_l2_streams``): 16. The Exchange documents no such limit but
advises to spread products over connections (one reader must keep up or be cut off,
``ErrSlowConsume``, and a drop resets every product it carries): 32, so that 300 products
need 10 connections (1.3 s of connection pacing) instead of 300 (40 s)."""

SNAPSHOT_GRACE_NS = 15 * 10**9
"""A product subscribed (or resubscribed) on a live connection must get its snapshot
within this long, else the whole connection resyncs (the default watchdog's grace)."""

_PRODUCT_FIELD = re.compile(r'"product_id"\s*:\s*"([^"\\]{1,40})"')


def group_messages(
    feed: str,
    product_ids: list[str],
    credentials: Credentials | None = None,
    now: float | None = None,
    *,
    kind: str = "subscribe",
    heartbeats: bool = True,
) -> list[dict]:
    """Messages that (un)subscribe ``product_ids`` together: ONE message per channel.

    ``heartbeats=False`` leaves the heartbeat subscription alone (a resubscribe of the
    book channel only). Exchange ``exchange-auth`` messages are signed at ``now``.
    """
    spec = _check_feed(feed)
    for product_id in product_ids:
        _check_product(product_id)
    pids = list(product_ids)
    if spec.protocol == ADVANCED_TRADE:
        messages: list[dict] = [
            {"type": kind, "product_ids": pids, "channel": spec.channel}
        ]
        if heartbeats:
            messages.append({"type": kind, "channel": "heartbeats"})
        return messages
    if feed == "exchange-auth" or heartbeats:  # the same shape as one product's
        [message] = subscribe_messages(
            feed, pids[0], credentials, time.time() if now is None else now
        )
        message["type"] = kind
        channels = message["channels"] if heartbeats else message["channels"][:1]
        message["channels"] = [{**ch, "product_ids": pids} for ch in channels]
        return [message]
    return [{"type": kind, "channels": [{"name": spec.channel, "product_ids": pids}]}]


@dataclass(slots=True)
class ConnectionStep:
    """What one frame (or fault) of a shared connection means for its products.

    ``events``: (product, events) pairs to emit, in order; ``stopped``: products that
    failed for good now; ``send``: messages are waiting (:meth:`ConnectionSession.
    outgoing`); ``action``/``reason``: what to do with the connection itself.
    """

    events: list[tuple[str, list[BookEvent]]] = field(default_factory=list)
    action: Action = Action.CONTINUE
    reason: str = ""
    stopped: list[str] = field(default_factory=list)
    send: bool = False


class ConnectionSession:
    """Sans-IO state of ONE connection carrying several products' :class:`Session` s.

    The per-product rules stay in each :class:`Session`; this class decides what a frame
    or fault means for the connection and which products it concerns:

    * a drop, silence, sequence gap (Advanced Trade numbers messages per connection), an
      unattributable malformed book frame or a transient error reply resets EVERY product
      of the connection (action RESYNC, then :meth:`disconnect`);
    * a malformed book frame naming its product(s), a consumer overflow or a resync
      requested downstream resets THAT product alone: it is unsubscribed and subscribed
      again on the live connection (both feeds send a fresh snapshot on subscribe; Exchange
      level2 carries no sequence, so a new subscription is the only way back), and its
      updates are dropped until that snapshot;
    * an error reply naming one product (unknown product) stops that product alone;
      refused credentials stop all (they are the connection's);
    * products that join a live connection are subscribed in one more message.

    Messages to send on the live connection are collected and handed out by
    :meth:`outgoing`, batched: one unsubscribe and one subscribe however many products.
    """

    def __init__(
        self,
        feed: str,
        *,
        credentials: Credentials | None = None,
        name: str = "",
        snapshot_grace_ns: int = SNAPSHOT_GRACE_NS,
    ) -> None:
        self.feed = feed
        self.protocol = _check_feed(feed).protocol
        self.name = name
        self.sessions: dict[str, Session] = {}
        self.frames = 0
        self.foreign = 0
        self._credentials = credentials
        self._decoder: FrameDecoder | None = None
        self._connected = False
        self._joining: list[str] = []
        self._resubscribing: list[str] = []
        self._deadlines: dict[str, int] = {}
        self._snapshot_grace_ns = snapshot_grace_ns
        self._origin: str | None = None
        """The local exchange's marker, once a subscriptions reply said it."""
        self._log = RateLimitedLog(log)

    # -- membership -----------------------------------------------------------------------

    @property
    def active(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.done]

    @property
    def settled(self) -> bool:
        """Every live product of the connection holds a book."""
        active = self.active
        return bool(active) and all(s.settled for s in active)

    def add(self, session: Session, now_ns: int | None = None) -> bool:
        """A product joins; True if it must be subscribed on the live connection now."""
        if session.protocol != self.protocol:
            raise ValueError(
                f"{session.product_id}: feed {session.feed} != {self.feed}"
            )
        self.sessions[session.product_id] = session
        if self._origin is not None:
            session.origin = session.local_exchange = self._origin
        if not self._connected:
            return False
        session.attach()
        self._joining.append(session.product_id)
        self._expect(session.product_id, now_ns)
        return True

    # -- lifecycle ------------------------------------------------------------------------

    def connect(self, now: float | None = None) -> list[dict]:
        """A new connection: every live product subscribed in one message per channel."""
        self._connected = True
        self._joining.clear()
        self._resubscribing.clear()
        self._deadlines.clear()
        active = self.active
        self._decoder = FrameDecoder(self.protocol, self._origin or self._label())
        for session in active:
            session.attach()
        if not active:
            return []
        return group_messages(
            self.feed, [s.product_id for s in active], self._credentials, now
        )

    def _label(self) -> str:
        first = next(iter(self.sessions.values()), None)
        return first.origin if first is not None else self.feed

    def outgoing(self, now: float | None = None) -> list[dict]:
        """Messages for the live connection: resubscribes, then products joining."""
        if not self._connected:
            return []
        again = [p for p in self._resubscribing if not self.sessions[p].done]
        joining = [p for p in self._joining if not self.sessions[p].done]
        self._resubscribing, self._joining = [], []
        messages: list[dict] = []
        if again:
            messages += group_messages(
                self.feed,
                again,
                self._credentials,
                now,
                kind="unsubscribe",
                heartbeats=False,
            )
            messages += group_messages(
                self.feed, again, self._credentials, now, heartbeats=False
            )
        if joining:
            # Advanced Trade's heartbeats are per connection, already subscribed.
            messages += group_messages(
                self.feed,
                joining,
                self._credentials,
                now,
                heartbeats=self.protocol != ADVANCED_TRADE,
            )
        return messages

    def connect_failed(self, reason: str) -> None:
        for session in self.active:
            session.connect_failed(reason)

    def retrying(self) -> None:
        for session in self.active:
            session.retrying()

    def disconnect(self, reason: str, close_code: int | None = None) -> ConnectionStep:
        """The connection ended: every product resets; reconnect, end, or stop."""
        self._connected = False
        self._decoder = None
        out = ConnectionStep(reason=reason)
        actions = set()
        for session in self.sessions.values():
            if session.done:
                continue
            step = session.disconnect(reason, close_code)
            if step.events:
                out.events.append((session.product_id, step.events))
            actions.add(step.action)
        if Action.END in actions:
            out.action = Action.END
        elif Action.CONTINUE in actions:
            out.action = Action.CONTINUE
        else:
            out.action = Action.STOP
        return out

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()

    # -- per-product faults ---------------------------------------------------------------

    def request_resync(self, product_id: str, reason: str) -> ConnectionStep:
        """Downstream wants a fresh snapshot of one product (a book stuck crossed)."""
        return self._resubscribe([product_id], f"requested: {reason}")

    def overflow(self, product_id: str, dropped: int) -> ConnectionStep:
        """One product's consumer fell ``dropped`` events behind: that product resyncs."""
        session = self.sessions.get(product_id)
        if session is not None:
            session.stats.overflows += 1
        return self._resubscribe(
            [product_id], f"the dataflow fell {dropped} events behind"
        )

    def _resubscribe(
        self, product_ids: list[str], reason: str, now_ns: int | None = None
    ) -> ConnectionStep:
        if self._origin == "replay":
            # The local exchange's replay serves each product once per connection and
            # ignores unsubscribes: only a new connection starts the data again.
            return self._resync_all(f"{', '.join(product_ids)}: {reason}")
        out = ConnectionStep()
        for product_id in product_ids:
            session = self.sessions.get(product_id)
            if session is None or session.done:
                continue
            awaiting = not session.settled
            events = session.resubscribe(reason)
            if events:
                out.events.append((product_id, events))
            if not self._connected or awaiting:
                continue  # a (re)subscription is already on its way: its snapshot
            if product_id not in self._resubscribing:
                self._resubscribing.append(product_id)
                self._expect(product_id, now_ns)
                out.send = True
        return out

    def _expect(self, product_id: str, now_ns: int | None) -> None:
        now_ns = time.time_ns() if now_ns is None else now_ns
        self._deadlines[product_id] = now_ns + self._snapshot_grace_ns

    # -- frames ---------------------------------------------------------------------------

    def receive(self, frame: str | bytes, received_ns: int) -> ConnectionStep:
        """Decode one frame and route its events to their products' sessions."""
        decoder = self._decoder
        if decoder is None:
            raise RuntimeError("receive() before connect()")
        self.frames += 1
        bad_before = decoder.bad_times
        try:
            decoded = decoder.decode(frame, received_ns)
        except MalformedFrame as exc:
            return self._malformed(exc, frame, received_ns)
        except SequenceGap as exc:
            for session in self.active:
                session.stats.sequence_gaps += 1
            return self._resync_all(str(exc))
        except FeedError as exc:
            return self._feed_error(exc)
        if not decoded:
            if isinstance(frame, str) and LOCAL_EXCHANGE_MARKER in frame:
                self._read_marker(frame)
            return self._check_deadlines(received_ns)
        out = self._route(decoded, decoder.bad_times - bad_before)
        if self._deadlines:
            late = self._check_deadlines(received_ns)
            if late.action is not Action.CONTINUE:
                late.events[:0] = out.events
                return late
        return out

    def _route(self, decoded: list[BookEvent], bad_times: int) -> ConnectionStep:
        out = ConnectionStep()
        sessions = self.sessions
        if len(decoded) == 1:
            groups: dict[str, list[BookEvent]] = {decoded[0].product_id: decoded}
        else:
            groups = {}
            for event in decoded:
                groups.setdefault(event.product_id, []).append(event)
        for product_id, events in groups.items():
            session = sessions.get(product_id)
            if session is None or session.done:
                self.foreign += 1
                continue
            stats = session.stats
            stats.frames += 1
            stats.bad_times += bad_times
            emitted = session.offer(events)
            if emitted:
                out.events.append((product_id, emitted))
                if product_id in self._deadlines and session.settled:
                    del self._deadlines[product_id]
        return out

    def _check_deadlines(self, now_ns: int) -> ConnectionStep:
        late = [
            p
            for p, due in self._deadlines.items()
            if now_ns > due
            and not self.sessions[p].settled
            and not self.sessions[p].done
        ]
        if not late:
            return ConnectionStep()
        grace = self._snapshot_grace_ns / 1e9
        return self._resync_all(
            f"no snapshot of {', '.join(late[:3])} within {grace:g} s of subscribing"
        )

    def _resync_all(self, reason: str) -> ConnectionStep:
        for session in self.active:
            session.stats.resyncs += 1
        log.warning(
            "%s: resync of every product of the connection: %s", self.name, reason
        )
        return ConnectionStep(action=Action.RESYNC, reason=reason)

    def _malformed(
        self, exc: MalformedFrame, frame: str | bytes, received_ns: int
    ) -> ConnectionStep:
        named = self._blame(frame)
        victims = [self.sessions[p] for p in named] if named else self.active
        for session in victims:
            session.stats.malformed += 1
        self._log.warning(f"{self.name}: skipped malformed frame: {exc}")
        if not exc.resync:
            return ConnectionStep()
        reason = f"malformed book frame ({exc.reason})"
        if named:
            return self._resubscribe(named, reason, received_ns)
        return self._resync_all(reason + "; its product is unknown")

    def _blame(self, frame: str | bytes) -> list[str]:
        """The live products a malformed frame is about, or [] if it cannot be told.

        Exchange frames carry one product each: its ``product_id``, read from the JSON or,
        when the JSON is cut, from the text. Advanced Trade frames may carry several: every
        event must name a known product, and unreadable JSON names none.
        """
        try:
            payload = _loads(frame)
        except (ValueError, TypeError):
            payload = None
        found: list[str] = []
        if isinstance(payload, dict):
            if self.protocol == ADVANCED_TRADE:
                events = payload.get("events")
                if not isinstance(events, list) or not events:
                    return []
                for event in events:
                    pid = event.get("product_id") if isinstance(event, dict) else None
                    if not isinstance(pid, str):
                        return []
                    found.append(pid)
            else:
                pid = payload.get("product_id")
                if not isinstance(pid, str):
                    return []
                found.append(pid)
        elif payload is None and self.protocol != ADVANCED_TRADE:
            text = (
                frame
                if isinstance(frame, str)
                else bytes(frame).decode("utf-8", "replace")
            )
            found = _PRODUCT_FIELD.findall(text[:2000])
            if len(set(found)) != 1:
                return []
        else:
            return []
        named = list(dict.fromkeys(found))
        if not all(p in self.sessions and not self.sessions[p].done for p in named):
            return []
        return named

    def _feed_error(self, exc: FeedError) -> ConnectionStep:
        """An error reply: stop the product it names, or all (credentials), or resync."""
        active = self.active
        target: list[Session] = []
        if isinstance(exc, UnknownProduct):
            named = exc.product_id
            if named in self.sessions:
                target = [self.sessions[named]] if not self.sessions[named].done else []
                if not target:
                    return ConnectionStep()  # said twice
            elif named is None and len(active) == 1:
                target = active
            else:
                # Cannot tell which product (or one not on this connection): retried.
                for session in active:
                    session.stats.errors += 1
                    session.stats.last_error = str(exc)[:300]
                return self._resync_all(f"{exc} (cannot tell which product)")
        elif exc.permanent:
            target = active
        if target:
            out = ConnectionStep()
            for session in target:
                events = session.fail(exc)
                if events:
                    out.events.append((session.product_id, events))
                out.stopped.append(session.product_id)
                self._deadlines.pop(session.product_id, None)
            if not self.active:
                out.action, out.reason = Action.STOP, str(exc)
            return out
        for session in active:
            session.stats.errors += 1
            session.stats.last_error = f"{session.product_id}: {exc}"[:300]
        return self._resync_all(str(exc))

    def _read_marker(self, frame: str) -> None:
        """The local exchange's marker: the origin of every product of the connection."""
        first = next(iter(self.sessions.values()), None)
        if first is None:
            return
        first._read_marker(frame)
        marker = first.local_exchange
        if marker is None:
            return
        self._origin = marker
        for session in self.sessions.values():
            session.local_exchange = session.origin = marker
        if self._decoder is not None:
            self._decoder.feed_label = marker
