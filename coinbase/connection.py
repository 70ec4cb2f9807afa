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
  waits for a new snapshot (its own deadline is the handler's business).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

import websockets

from coinbase.pacing import CONNECTION_PACER, MESSAGE_PACER, Backoff, ConnectionPacer

__all__ = ["MAX_FRAME_BYTES", "SNAPSHOT_GRACE_FACTOR", "Connection", "Handler"]

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 2**20
"""Live full-depth snapshots are 5+ MB; websockets' 1 MiB default would drop them."""
SNAPSHOT_GRACE_FACTOR = 3.0
"""A connection must settle (deliver its snapshot) within this many watchdog periods of
connecting; after that, any frame feeds the watchdog."""


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
    ) -> None:
        self.url = url
        self.name = name
        self.watchdog = watchdog_seconds
        self.backoff = backoff or Backoff()
        self._pacer = pacer
        self._message_pacer = message_pacer
        self._max_size = max_size
        self._wakeup: asyncio.Event | None = None
        self._live = False

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

    async def _once(self, handler: Handler) -> bool:
        """One connection's life; returns whether to reconnect."""
        try:
            ws = await websockets.connect(
                self.url,
                max_size=self._max_size,
                open_timeout=max(10.0, self.watchdog),
                close_timeout=1.0,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            handler.connect_failed(f"connect failed: {type(exc).__name__}: {exc}")
            log.warning("%s: cannot connect to %s: %s", self.name, self.url, exc)
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
            reason = f"connection closed ({exc})"
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
            await ws.close()
        return handler.closed(reason, ws.close_code)

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
        loop = asyncio.get_running_loop()
        normal = self.watchdog
        async with asyncio.timeout(normal * SNAPSHOT_GRACE_FACTOR) as deadline:
            async for frame in ws:
                verdict = handler.received(frame, time.time_ns())
                if verdict is not None:
                    return verdict
                # Until the handler first settles only the grace deadline counts; after
                # that any frame feeds the watchdog (a product resubscribed alone on a
                # shared connection has its own snapshot deadline in the session).
                if self._live or handler.settled:
                    self._live = True
                    deadline.reschedule(loop.time() + normal)
        code = ws.close_code
        return "server closed the connection" + (f" (code {code})" if code else "")
