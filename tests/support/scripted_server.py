"""A tiny loopback WebSocket server that plays an exact script per connection.

For frame-by-frame tests (specific malformed frames, exact error replies, what the client
sent in its handshake) where the full local exchange would be too indirect. The server runs
its own asyncio loop on a daemon thread and listens on 127.0.0.1 on an ephemeral port.

A script is ``async def script(conn: ScriptedConnection) -> None``; when it returns, the
server closes the connection. ``conn.index`` counts connections from 0, so a script can
behave differently after a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Self

from websockets.asyncio.server import ServerConnection, serve


class ScriptedConnection:
    """One accepted client connection plus the messages it sent."""

    def __init__(self, ws: ServerConnection, index: int, received: list[Any]) -> None:
        self.ws = ws
        self.index = index
        self.received = received

    async def recv_json(self, timeout: float = 5.0) -> Any:
        """The next client message, decoded and recorded."""
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.received.append(message)
        return message

    async def send(self, frame: Any) -> None:
        """Send ``frame`` as is when it is a str, else as JSON text."""
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def hold(self, seconds: float = 30.0) -> None:
        """Keep the connection open and silent (until the client goes away)."""
        try:
            await asyncio.wait_for(self.ws.wait_closed(), seconds)
        except TimeoutError:
            pass


Script = Callable[[ScriptedConnection], Awaitable[None]]


class ScriptedServer:
    """``with ScriptedServer(script) as server: ... server.url ... server.received``."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self.received: list[list[Any]] = []
        """Per connection, the JSON messages the client sent (as read by the script)."""
        self.connections = 0
        self.errors: list[Exception] = []
        """Exceptions that ended a script early (usually the client hanging up)."""
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(
            target=self._main, name="scripted-ws", daemon=True
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, ws: ServerConnection) -> None:
        index = self.connections
        self.connections += 1
        received: list[Any] = []
        self.received.append(received)
        try:
            await self._script(ScriptedConnection(ws, index, received))
        except Exception as exc:
            self.errors.append(exc)

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def _main(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("scripted server did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(
                lambda: self._stop.done() or self._stop.set_result(None)
            )
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
