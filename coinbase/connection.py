"""The asyncio side of a feed: connect, subscribe, read, watch, back off, reconnect.

A :class:`Connection` knows sockets and time, nothing of books: what to send, what a
frame means and whether to go on are its :class:`Handler`'s business (the source's
partition wraps a :class:`~coinbase.session.Session`; the recorder writes frames to a
file). Shared by the source and the recorder, so both get the same behaviour:

* connection attempts and subscribe messages paced process-wide under Coinbase's 8 per
  second per IP (:data:`~coinbase.pacing.CONNECTION_PACER`, ``MESSAGE_PACER``),
  including the messages a handler sends on a live connection (``outgoing()``, after
  :meth:`Connection.wake`: products joining, a product resubscribed alone);
* reconnects after jittered exponential backoff, reset after a healthy connection (one
  whose handler *settled*, i.e. delivered a snapshot);
* a watchdog: silence for ``watchdog_seconds`` ends the connection; until the handler
  settles only a longer grace (``SNAPSHOT_GRACE_FACTOR`` periods) applies, so that a
  multi-MB snapshot on a slow link is waited for, while heartbeats alone cannot keep a
  book-less connection alive. Once settled, any frame feeds it, even while one product
  waits for a new snapshot (its own deadline is the handler's business);
* bounded memory: a message over ``max_size`` bytes drops the connection as soon as its
  header says so, and at most :data:`MAX_QUEUE_FRAMES` received frames wait to be read
  (see :class:`_BoundedConnection`);
* a feed that cannot work is given up: a definitely permanent error before the feed ever
  settled (:func:`permanent_error`), or :data:`GIVE_UP_AFTER` connections in a row that
  never settled, asks the handler's optional ``hopeless(reason)`` whether to stop.

URLs are logged and put in reasons only through :func:`common.text.redact_url`: user info
and secret-looking query parameters never reach a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from coinbase.pacing import CONNECTION_PACER, MESSAGE_PACER, Backoff, ConnectionPacer
from common.text import redact_url, shown

__all__ = [
    "GIVE_UP_AFTER",
    "MAX_FRAME_BYTES",
    "MAX_QUEUE_FRAMES",
    "SNAPSHOT_GRACE_FACTOR",
    "Connection",
    "Handler",
    "permanent_error",
]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 16 * 2**20
"""The default limit of one received message (16 MiB). Coinbase's largest messages are
full-depth snapshots: 5.08 MB measured for BTC-USD on Advanced Trade, about as much on
the Exchange feed, so websockets' 1 MiB default would drop them; 16 MiB leaves three
times that. The limit is also the unit of the worst case of memory a hostile or broken
server can make a connection hold (see :data:`MAX_QUEUE_FRAMES`): before, with 64 MiB
and websockets' queue of 16 frames, a server sending 64 MB frames faster than they were
parsed grew a client by about 64 MB a second, to 1.3 GB measured."""
MAX_QUEUE_FRAMES = 4
"""Received frames websockets queues before it stops reading the socket (its default is
16). Memory held by one connection is at most about ``(MAX_QUEUE_FRAMES + 2) *
max_size``: the queue, the frame being read and its decoded copy; 96 MiB at the default
limit instead of 1 GiB+. Frames are read on the same loop that parses them, so a shorter
queue costs nothing measurable: 300,000 small frames from another process read at
80,000-125,000 a second with a queue of 16, 4, 2 or 1 alike."""
GIVE_UP_AFTER = 10
"""Connections in a row that end before the feed delivered anything useful (before the
handler settled) after which a feed that never worked in this process is declared
unusable: with the default backoff (0.25 s doubling to 30 s) about one minute of trying.
Long enough for a network that is still coming up when the service starts; short enough
that a wrong URL, a server speaking the other protocol or a limit no snapshot fits under
ends the run instead of retrying forever."""
_NEVER_WORKS_STATUS = range(200, 500)
_RETRYABLE_STATUS = (408, 425, 429)
"""HTTP statuses of a refused upgrade that retrying may cure (timeout, too early, rate
limit); 5xx are the server's own trouble, retried too."""


def permanent_error(exc: BaseException) -> bool:
    """True when connecting failed in a way no retry can cure: the URL is not a
    WebSocket URI (or its port is not a port), the server answered the upgrade with an
    HTTP status that says this is not (or not for us) a WebSocket endpoint (e.g. 200,
    301, 400, 401, 403, 404), or the server's certificate does not verify."""
    if isinstance(exc, (InvalidURI, ValueError)):  # e.g. "Port out of range 0-65535"
        return True
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return status in _NEVER_WORKS_STATUS and status not in _RETRYABLE_STATUS
    return isinstance(exc, ssl.SSLCertVerificationError)


class _BoundedConnection(ClientConnection):
    """websockets' client connection, which lets go of a server it failed.

    On a frame over ``max_size`` (or any frame it cannot parse) websockets sends a close
    (1009 "message too big") and discards what follows without keeping it, but then waits
    for the server to close the TCP connection, and nothing enforces ``close_timeout`` on
    that path: a server that keeps streaming holds the connection (and a reader blocked
    in ``recv()``) until the watchdog fires. Here the transport is aborted
    ``close_timeout`` seconds after such a failure, as websockets does for closes it
    starts itself.
    """

    _abort_scheduled = False
    frame_sink: Callable[[str, int], None] | None = None
    """When set (by :meth:`Connection._read`), each complete text message is handed to
    it as soon as websockets has parsed it, ``(text, time.time_ns())``, from
    ``data_received``, instead of being queued for ``recv()``: see
    :meth:`process_event`."""

    def process_event(self, event: Any) -> None:
        """A complete text frame straight to :attr:`frame_sink`, in order.

        websockets (pinned, 17.4) queues every data frame in its assembler, and the
        reader takes it out through ``async for`` -> ``recv()`` -> ``Assembler.get()``
        -> ``SimpleQueue.get()``: four coroutines resumed per frame, and a task woken
        per frame when the queue had been empty. Handed over here, a frame costs one
        call. The feed thread's CPU per message, the code before and this alternately
        (4 products, bench_peer's recording): at 30,000 msg/s 13.6 -> 11.0-11.2 µs
        (load average 1.5) and 11.2-12.8 -> 10.6-10.8 (load 4.5); at 4 products x 200
        batches/s 45.8-50.3 -> 37.5-41.3 µs. Only when nothing waits in the assembler
        (so the order holds); fragmented, binary or undecodable messages still go the
        queued way, where websockets reassembles them or fails the connection (1007)
        as before. Pings, pongs and closes are websockets' business as before."""
        sink = self.frame_sink
        if (
            sink is not None
            and type(event) is Frame
            and event.opcode is Opcode.TEXT
            and event.fin
            and not self.recv_messages.frames
        ):
            try:
                text = event.data.decode()
            except UnicodeDecodeError:
                pass  # recv() fails the connection with 1007, as websockets does
            else:
                sink(text, time.time_ns())
                return
        super().process_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The parser's exception (EOF, a frame too big...) holds, through its traceback,
        # the parser's generator frame, whose local is the LAST frame received: a cycle
        # through the protocol, freed only by a full garbage collection (rare here, see
        # service.runtime.tune_garbage_collector). Measured: a server sending 16 MB junk
        # frames grew a client by about 15 MB per reconnect (310 MB after 11 of them).
        failure = self.protocol.parser_exc
        if failure is not None:
            failure.__traceback__ = None

    # --- complete text frames split off the stream before websockets' parser ---------
    _handshake: bytearray | None = None
    """What the server sent before the connection opened (to find where frames begin)."""
    _split = False
    """Whether :meth:`data_received` knows where each frame begins (see there)."""
    _head = b""
    """The first bytes of a frame header held back until the rest arrives."""
    _ws_left = 0
    """Bytes websockets still needs of a frame it was given the start of."""

    def data_received(self, data: bytes) -> None:
        """Complete text frames go straight to :attr:`frame_sink`; every other byte,
        in order, to websockets' parser, always at a frame's start.

        Why: websockets' parser (pure Python generators: ``Frame.parse`` on
        ``read_exact``, a ``Frame`` built and checked, the protocol's bookkeeping) cost
        3.8 µs a frame of a 300-byte Advanced Trade update, against 0.5 µs for reading
        the header here; it was 13% of the process at 40,000 msg/s. A frame goes the
        short way only when websockets would hand it to :meth:`process_event`'s sink
        unchanged: a server frame (unmasked), text, final, no extension bit, within
        ``max_size``, valid UTF-8, the connection open, no message being reassembled
        or queued. Anything else (control frames, binary, fragments, a frame cut by the
        end of a read, a header over ``max_size``) reaches websockets whole or from its
        first byte, exactly as it arrived, so its checks, answers (pongs, closes) and
        failures are unchanged. Boundaries are followed from the end of the opening
        handshake; a connection whose first frames cannot be placed is left to
        websockets alone."""
        if self._split:
            self._split_frames(data)
            return
        protocol = self.protocol
        opening = protocol.state is State.CONNECTING
        if opening:
            if self._handshake is None:
                self._handshake = bytearray()
            self._handshake += data
        self._parse(data)
        if opening and protocol.state is State.OPEN:
            self._split = _whole_frames(self._handshake)
        if protocol.state is not State.CONNECTING:
            self._handshake = None

    def eof_received(self) -> None:
        if self._head:  # websockets sees the cut header: its "unexpected end"
            head, self._head = self._head, b""
            self._parse(head)
        super().eof_received()

    def _parse(self, data: bytes) -> None:
        """Bytes to websockets' parser (which may fail the connection: then it is let
        go ``close_timeout`` later, see the class)."""
        super().data_received(data)
        protocol = self.protocol
        if (
            protocol.parser_exc is not None
            and protocol.state is State.CLOSING
            and not self._abort_scheduled
        ):
            self._abort_scheduled = True
            self.loop.call_later(self.close_timeout or 0.0, self.transport.abort)

    def _pass_on(self, data: bytes) -> bool:
        """``data``, whole frames, to websockets; whether frames are still split here
        (not once it is closing or failed: then it has every later byte)."""
        self._parse(data)
        if self.protocol.state is State.OPEN and self.protocol.parser_exc is None:
            return True
        self._split = False
        return False

    def _split_frames(self, data: bytes) -> None:
        if self._ws_left:
            data = self._end_of_frame(data)
        elif self._head:
            data = self._head + data
            self._head = b""
        protocol = self.protocol
        sink = self.frame_sink
        limit = protocol.max_message_size
        end = len(data)
        start = i = 0  # data[start:i]: whole frames for websockets, not yet given
        received_ns = 0
        while (found := _frame_at(data, i)) is not None:
            at, stop = found
            if stop > end or (limit is not None and stop - at > limit):
                # cut by the end of this read (websockets gathers the rest), or too
                # big (websockets refuses it from its header)
                if self._pass_on(data[start:]) and stop > end:
                    self._ws_left = stop - end
                self._split = self._split and stop > end
                return
            if data[i] == 0x81 and data[i + 1] < 0x80 and sink is not None:
                if start < i and not self._pass_on(data[start:i]):
                    self._parse(data[i:])
                    return
                start = i
                if (
                    protocol.state is State.OPEN
                    and not protocol.expect_continuation_frame
                    and not self.recv_messages.frames
                ):
                    try:
                        text = data[at:stop].decode()
                    except UnicodeDecodeError:
                        pass  # websockets fails the connection (1007)
                    else:
                        received_ns = received_ns or time.time_ns()
                        sink(text, received_ns)
                        start = stop
            i = stop
        if start < i and not self._pass_on(data[start:i]):
            self._parse(data[i:])
            return
        self._head = data[i:]

    def _end_of_frame(self, data: bytes) -> bytes:
        """The rest of a frame websockets has the start of, to it; what follows (b""
        when nothing does, or when websockets now takes every byte)."""
        left = self._ws_left
        self._ws_left = max(0, left - len(data))
        if len(data) <= left:
            self._parse(data)
            return b""
        if not self._pass_on(data[:left]):
            self._parse(data[left:])
            return b""
        return data[left:]


def _frame_at(data: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """Where the payload of the frame whose header starts at ``data[i]`` starts and
    ends (the end may lie past the data); None when the header is not all there."""
    end = len(data)
    if end - i < 2:
        return None
    size = data[i + 1] & 0x7F
    at = i + 2
    if size >= 126:
        at += 2 if size == 126 else 8
        if at > end:
            return None
        size = int.from_bytes(data[i + 2 : at])
    if data[i + 1] & 0x80:  # masked (a server must not: websockets refuses it)
        at += 4
        if at > end:
            return None
    return at, at + size


def _whole_frames(received: bytes | bytearray) -> bool:
    """Whether what followed the opening handshake's response in ``received`` (frames
    websockets already parsed) ends where a frame ends, so that splitting can begin."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return False
    i = end + 4
    while i < len(received):
        found = _frame_at(received, i)
        if found is None:
            return False
        i = found[1]
    return i == len(received)


SNAPSHOT_GRACE_FACTOR = 3.0
"""A connection must settle (deliver its snapshot) within this many watchdog periods of
connecting; after that, any frame feeds the watchdog."""
WATCHDOG_SLACK = 0.02
"""The watchdog's deadline is moved at most once per this fraction of its period (and
set that much further out): silence ends a connection after between 1 and 1.02 watchdog
periods (5 to 5.1 s by default). Moving the deadline on every frame (an
``asyncio.timeout`` reschedule: a timer cancelled and a new one pushed on the loop's
heap) cost about 1 µs of the feed thread per message; now it costs one clock read."""


class Handler(Protocol):
    """What a :class:`Connection` asks of its owner."""

    @property
    def settled(self) -> bool:
        """True once this connection delivered what proves it healthy (a snapshot)."""
        ...

    def opened(self) -> list[dict]:
        """A connection is open: the messages to send (signed afresh if need be)."""
        ...

    def received(self, frame: str | bytes, received_ns: int) -> str | None:
        """One frame; a reason to end this connection, or None to keep reading."""
        ...

    def closed(self, reason: str, close_code: int | None) -> bool:
        """The connection ended; True to reconnect, False to stop for good."""
        ...

    def connect_failed(self, reason: str) -> None: ...

    # Optional: ``outgoing()`` returns the messages to send on the live connection; the
    # handler calls :meth:`Connection.wake` when there are some (see ``_write``).
    # Optional: ``hopeless(reason) -> bool``: the feed never worked and ``reason`` says
    # why it seems it never will (see ``Connection._hopeless``); True stops the loop.

    def retrying(self) -> None:
        """About to wait (backoff) and connect again."""
        ...


class Connection:
    """Connects to ``url`` again and again for one handler, until it says stop."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        watchdog_seconds: float = 5.0,
        backoff: Backoff | None = None,
        pacer: ConnectionPacer = CONNECTION_PACER,
        message_pacer: ConnectionPacer = MESSAGE_PACER,
        max_size: int = MAX_FRAME_BYTES,
        give_up_after: int = GIVE_UP_AFTER,
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)
        """The URL as logs and reasons show it: user info and secrets redacted."""
        self.name = name
        self.watchdog = watchdog_seconds
        self.backoff = backoff or Backoff()
        self._pacer = pacer
        self._message_pacer = message_pacer
        self._max_size = max_size
        self._give_up_after = give_up_after
        self._wakeup: asyncio.Event | None = None
        self._live = False
        self.ever_settled = False
        """Whether any connection of this object delivered what settles the handler."""
        self.failures = 0
        """Connections in a row that ended (or failed to open) before settling."""
        self._permanent = False
        self.last_failure = ""

    def wake(self) -> None:
        """Messages are waiting (``handler.outgoing()``); call on the loop thread."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self, handler: Handler) -> None:
        """Connect, read, reconnect until the handler stops it (or the task is cancelled)."""
        first = True
        while True:
            if not first:
                handler.retrying()
                await asyncio.sleep(self.backoff.next_delay())
            first = False
            await self._pacer.turn()
            try:
                if not await self._once(handler):
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the connection's life
                log.exception("%s: unexpected error in the connection loop", self.name)
            if self._hopeless(handler):
                return

    def _hopeless(self, handler: Handler) -> bool:
        """After a failed connection: True if the handler agrees to stop trying. Asked
        on a definitely permanent error or after ``give_up_after`` failures in a row,
        and only while no connection of this object ever settled (a feed that worked
        once is retried for ever: an outage ends)."""
        if self.ever_settled or not hasattr(handler, "hopeless"):
            return False
        if self._permanent:
            why = f"cannot be used: {self.last_failure}"
        elif self.failures >= self._give_up_after:
            why = (
                f"never sent a book: {self.failures} connections in a row failed; "
                f"the last: {self.last_failure}"
            )
        else:
            return False
        return bool(handler.hopeless(f"the feed at {self.shown_url} {why}"))

    def _failed(self, reason: str, permanent: bool = False) -> None:
        self.failures += 1
        self.last_failure = reason
        self._permanent = permanent

    def _describe(self, exc: BaseException) -> str:
        """An exception as one safe line: the URL redacted, foreign text escaped."""
        text = str(exc).replace(self.url, self.shown_url)
        return shown(f"{type(exc).__name__}: {text}", limit=300)

    async def _once(self, handler: Handler) -> bool:
        """One connection's life; returns whether to reconnect."""
        try:
            ws = await websockets.connect(
                self.url,
                max_size=self._max_size,
                max_queue=MAX_QUEUE_FRAMES,
                open_timeout=max(10.0, self.watchdog),
                close_timeout=1.0,
                create_connection=_BoundedConnection,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            described = self._describe(exc)
            permanent = permanent_error(exc)
            self._failed(
                described if permanent else f"cannot connect: {described}", permanent
            )
            handler.connect_failed(f"connect failed: {described}")
            log.warning(
                "%s: cannot connect to %s: %s", self.name, self.shown_url, described
            )
            return True
        reason = "connection closed"
        writer: asyncio.Task | None = None
        self._live = False
        try:
            for message in handler.opened():
                await self._message_pacer.turn()
                await ws.send(json.dumps(message))
            if hasattr(handler, "outgoing"):
                self._wakeup = asyncio.Event()
                self._wakeup.set()  # whatever joined while the subscribe was paced
                writer = asyncio.create_task(self._write(ws, handler))
            reason = await self._read(ws, handler)
        except websockets.ConnectionClosed as exc:
            reason = self._closed_reason(exc)
        except TimeoutError:
            if self._live:
                reason = f"watchdog: no message for {self.watchdog:g} s"
            else:
                grace = self.watchdog * SNAPSHOT_GRACE_FACTOR
                reason = f"watchdog: no snapshot within {grace:g} s of connecting"
        except OSError as exc:
            reason = f"network error ({exc})"
        finally:
            if writer is not None:
                writer.cancel()
            self._wakeup = None
            if self._live or handler.settled:
                self.backoff.reset()  # this connection proved healthy
                self.ever_settled = True
                self.failures = 0
            else:
                self._failed(reason)
            await ws.close()
        return handler.closed(reason, ws.close_code)

    def _closed_reason(self, exc: websockets.ConnectionClosed) -> str:
        sent = exc.sent
        if sent is not None and sent.code == 1009:  # we refused a message too big
            return (
                f"message too big: {shown(sent.reason, limit=120)} "
                "(ORDERBOOK_MAX_MESSAGE_BYTES); connection dropped"
            )
        return f"connection closed ({shown(exc, limit=300)})"

    async def _write(self, ws: Any, handler: Any) -> None:
        """Send what the handler has for the live connection, paced like the rest."""
        wakeup = self._wakeup
        assert wakeup is not None
        try:
            while True:
                await wakeup.wait()
                wakeup.clear()
                for message in handler.outgoing():
                    await self._message_pacer.turn()
                    await ws.send(json.dumps(message))
        except (websockets.ConnectionClosed, OSError):
            pass  # the reader sees the end and says why

    async def _read(self, ws: Any, handler: Handler) -> str:
        """Hand every frame to the handler until it gives a reason to stop, the
        connection ends (an exception: closed, network error) or the watchdog fires
        (``TimeoutError``)."""
        async with asyncio.timeout(self.watchdog * SNAPSHOT_GRACE_FACTOR) as deadline:
            return await _Reader(self, ws, handler, deadline).run()


class _Reader:
    """One connection's reading.

    Complete text messages arrive through ``ws.frame_sink`` (see
    :meth:`_BoundedConnection.process_event`), the rest through ``recv()`` in a task of
    its own; either way :meth:`take` passes them on, and the first reason to stop (or
    exception) ends the reading. Frames that follow it are not read, as when the reader
    returned from its ``async for`` loop."""

    def __init__(
        self, owner: Connection, ws: Any, handler: Handler, deadline: asyncio.Timeout
    ) -> None:
        self.owner = owner
        self.ws = ws
        self.handler = handler
        self.deadline = deadline
        self.loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[str] = self.loop.create_future()
        self.normal = owner.watchdog
        self.slack = owner.watchdog * WATCHDOG_SLACK
        self.move_at = 0.0
        """When the watchdog's deadline is next moved."""

    async def run(self) -> str:
        ws = self.ws
        direct = isinstance(ws, _BoundedConnection)
        if direct:
            ws.frame_sink = self.take
        reader = asyncio.ensure_future(self.queued())
        try:
            return await self.ended
        finally:
            if direct:
                ws.frame_sink = None
            reader.cancel()

    def take(self, frame: str | bytes, received_ns: int) -> None:
        ended = self.ended
        if ended.done() or self.deadline.expired():
            # The connection is ending: the rest is not read. The watchdog's firing
            # cancels the reader at its next step, while data_received may still hand
            # frames over (and moving an expired deadline would raise).
            return
        if not self.owner._live and time.monotonic() >= self.deadline.when():
            # Past the grace deadline, before its timer ran: a loop iteration runs its
            # I/O callbacks before its due timers. Before the first book that frame
            # is late, as the queued way (a task woken after the timer) treated it: a
            # snapshot there made a feed that never kept to its watchdog look like one
            # that had delivered a book, never given up (tests/test_coinbase_source.py,
            # seen on a busy machine). The clock is time.monotonic(), not loop.time():
            # uvloop's is read once per iteration, in milliseconds (never ahead of
            # time.monotonic(), the clock of asyncio's). After the first book no check
            # is made per frame.
            return
        handler = self.handler
        try:
            verdict = handler.received(frame, received_ns)
        except Exception as exc:  # to the caller, as from the reading loop before
            ended.set_exception(exc)
            return
        if verdict is not None:
            ended.set_result(verdict)
            return
        # Until the handler first settles only the grace deadline counts; after that
        # any frame feeds the watchdog (a product resubscribed alone on a shared
        # connection has its own snapshot deadline in the session).
        owner = self.owner
        if owner._live or handler.settled:
            owner._live = True
            now = self.loop.time()
            if now >= self.move_at:  # see WATCHDOG_SLACK
                self.deadline.reschedule(now + self.normal + self.slack)
                self.move_at = now + self.slack

    async def queued(self) -> None:
        """What does not come through the sink, and the connection's end."""
        ended = self.ended
        ws = self.ws
        try:
            async for frame in ws:
                self.take(frame, time.time_ns())
                if ended.done():
                    return
        except Exception as exc:  # ConnectionClosedError, OSError...
            if not ended.done():
                ended.set_exception(exc)
            return
        if not ended.done():
            code = ws.close_code
            ended.set_result(
                "server closed the connection" + (f" (code {code})" if code else "")
            )
