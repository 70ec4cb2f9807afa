"""Several products on one connection, sans-IO: which faults reset one product, which all.

:class:`ConnectionSession` carries the :class:`~coinbase.session.Session` of each
product of one WebSocket connection: it builds the grouped subscribe messages, routes
each frame to its product, and decides, per fault, which products it concerns. Like
:mod:`coinbase.session`, it never touches a socket; ``coinbase_source._Group`` is the
glue that runs it on a :class:`~coinbase.connection.Connection`.

The grouping rules, stated here once (``coinbase_source.py`` and the docs link here):

* Which products share a connection: the partitions of one source built in one process
  fill connections in the order Bytewax builds them, up to
  :data:`PRODUCTS_PER_CONNECTION` per connection (Exchange 32, Advanced Trade 16; the
  reasons are there).
* When a connection opens: once its group is full, or ``coinbase_source.GATHER_SECONDS``
  (50 ms) after the last product joined it (Bytewax builds partitions one at a time,
  within milliseconds of each other), so that one subscribe message per channel carries
  the whole group. A product that joins a live connection is subscribed with one more
  message.
* Which faults reset every product of the connection (action RESYNC: a new connection,
  a fresh snapshot of each): a drop, silence (the watchdog), an Advanced Trade sequence
  gap (its numbers are per connection), a malformed book frame whose product cannot be
  told, a transient error reply, a product joining or resubscribed that gets no snapshot
  within the snapshot grace (the source's watchdog times
  ``coinbase.connection.SNAPSHOT_GRACE_FACTOR``), and any per-product resync on a
  served replay (the local exchange's replay ignores unsubscribes).
* Which reset ONE product alone (unsubscribed and subscribed again on the live
  connection, its updates dropped until the new snapshot: both feeds send one on
  subscribe, and Exchange level2 carries no sequence, so a new subscription is the only
  way back): a malformed book frame naming it, its queue overflowing (the dataflow fell
  behind), a resync requested downstream (the book step: a book stuck crossed).
* Which stop products for good: an error reply naming one product (unknown product)
  stops that product alone; refused credentials stop every product (they are the
  connection's).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from orjson import loads

from coinbase.auth import Credentials
from coinbase.decode import FrameDecoder, loads_beyond_double
from coinbase.errors import (
    FeedError,
    MalformedFrame,
    SequenceGap,
    UnknownProduct,
)
from coinbase.feeds import (
    ADVANCED_TRADE,
    FEEDS,
    _check_feed,
    _check_product,
    coinbase_feed,
    subscribe_messages,
)
from common.domain import is_product_id
from common.logs import RateLimitedLog
from common.text import shown
from events import BookEvent

__all__ = [
    "PRODUCTS_PER_CONNECTION",
    "ConnectionSession",
    "ConnectionStep",
    "group_messages",
]

from coinbase.session import (
    LOCAL_EXCHANGE_MARKER,
    LOGGED_CHARS,
    Action,
    Session,
)

log = logging.getLogger(__name__)

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

    About 390 lines, over the project's ~300 for a class, on purpose: every rule below
    reads and writes the same per-connection state (the products, their pending
    resubscribes and snapshot deadlines, the sequence counter's decoder), and split by
    fault kind that state would be passed around instead of owned.

    The per-product rules stay in each :class:`Session`; this class decides what a frame
    or fault means for the connection and which products it concerns, by the rules of
    the module docstring (:mod:`coinbase.multiplex`).

    Malformed frames and whole-connection resyncs are each logged at most once a second
    per connection, the feed text they quote escaped and cut (:func:`common.text.shown`).

    Messages to send on the live connection are collected and handed out by
    :meth:`outgoing`, batched: one unsubscribe and one subscribe however many products.
    """

    def __init__(
        self,
        feed: str,
        *,
        protocol: str | None = None,
        credentials: Credentials | None = None,
        name: str = "",
        snapshot_grace_ns: int = SNAPSHOT_GRACE_NS,
    ) -> None:
        self.feed = feed
        self._subscribe_as = coinbase_feed(feed, protocol)
        """The Coinbase feed whose subscribe messages go out (:func:`coinbase_feed`)."""
        self.protocol = FEEDS[self._subscribe_as].protocol
        self.name = name
        self.sessions: dict[str, Session] = {}
        self.frames = 0
        self.foreign = 0
        self._frames_at_connect = 0
        self._credentials = credentials
        self._decoder: FrameDecoder | None = None
        self._connected = False
        self._joining: list[str] = []
        self._resubscribing: list[str] = []
        self._deadlines: dict[str, int] = {}
        self._snapshot_grace_ns = snapshot_grace_ns
        self.local_exchange: str | None = None
        """The local exchange's feed, once its subscriptions reply said it."""
        self._log = RateLimitedLog(log)
        """Malformed frames of the connection: at most one line a second."""
        self._resync_log = RateLimitedLog(log)
        """Whole-connection resyncs: at most one line a second."""

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
                f"{session.product_id}: protocol {session.protocol} != {self.protocol}"
            )
        self.sessions[session.product_id] = session
        if self.local_exchange is not None:
            session.feed = session.local_exchange = self.local_exchange
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
        self._frames_at_connect = self.frames
        self._joining.clear()
        self._resubscribing.clear()
        self._deadlines.clear()
        active = self.active
        self._decoder = FrameDecoder(self.protocol, self.local_exchange or self._feed())
        for session in active:
            session.attach()
        if not active:
            return []
        return group_messages(
            self._subscribe_as, [s.product_id for s in active], self._credentials, now
        )

    @property
    def frames_on_connection(self) -> int:
        """Frames received on the live connection (0 when none): what a test compares
        with what the local exchange sent (``LocalExchange.open_frames``) to know that
        all was read. Costs nothing per frame: :attr:`frames` is counted anyway, and
        only its value at :meth:`connect` is kept."""
        return self.frames - self._frames_at_connect if self._connected else 0

    def _feed(self) -> str:
        first = next(iter(self.sessions.values()), None)
        return first.feed if first is not None else self.feed

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
                self._subscribe_as,
                again,
                self._credentials,
                now,
                kind="unsubscribe",
                heartbeats=False,
            )
            messages += group_messages(
                self._subscribe_as, again, self._credentials, now, heartbeats=False
            )
        if joining:
            # Advanced Trade's heartbeats are per connection, already subscribed.
            messages += group_messages(
                self._subscribe_as,
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
            session.stats.backlog_drops += 1
        return self._resubscribe(
            [product_id], f"the dataflow fell {dropped} events behind"
        )

    def _resubscribe(
        self, product_ids: list[str], reason: str, now_ns: int | None = None
    ) -> ConnectionStep:
        if self.local_exchange == "replay":
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
        self._resync_log.warning(
            "%s: resync of every product of the connection: %s",
            self.name,
            shown(reason, LOGGED_CHARS),
        )
        return ConnectionStep(action=Action.RESYNC, reason=reason)

    def _malformed(
        self, exc: MalformedFrame, frame: str | bytes, received_ns: int
    ) -> ConnectionStep:
        named = self._blame(frame)
        victims = [self.sessions[p] for p in named] if named else self.active
        for session in victims:
            session.stats.malformed_frames += 1
        self._log.warning(
            "%s: skipped malformed frame: %s", self.name, shown(exc, LOGGED_CHARS)
        )
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
        event must name a known product, and unreadable JSON names none. An id not of
        Coinbase's shape names no product of ours and is left out.
        """
        try:
            payload = loads(frame)
        except (ValueError, TypeError):
            payload = loads_beyond_double(frame)  # a price of 1e400 names its product
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
        # a badly shaped id is nobody's (ours are checked at start-up): not a suspect
        named = [p for p in dict.fromkeys(found) if is_product_id(p)]
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
        """The local exchange's marker: the feed of every product of the connection."""
        first = next(iter(self.sessions.values()), None)
        if first is None:
            return
        first._read_marker(frame)
        marker = first.local_exchange
        if marker is None:
            return
        self.local_exchange = self.feed = marker
        for session in self.sessions.values():
            session.local_exchange = session.feed = marker
        if self._decoder is not None:
            self._decoder.feed = marker
