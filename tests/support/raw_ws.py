"""A WebSocket server on raw sockets: the opening handshake, then bytes exactly as a test
lays them out (frames of its own making, cut where it wants).

For what websockets' own server would never send on purpose: a header over the
client's limit, frames cut across reads at chosen bytes, frames right behind the
handshake's response. Listens on 127.0.0.1 on an ephemeral port, one thread per
connection.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Self

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONTINUATION, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked (server) frame."""
    size = len(payload)
    first = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        return first + bytes([size]) + payload
    if size < 2**16:
        return first + b"\x7e" + struct.pack("!H", size) + payload
    return first + b"\x7f" + struct.pack("!Q", size) + payload


def accept(conn: socket.socket) -> bytes:
    """Read the client's opening request; the ``101`` response that accepts it."""
    request = b""
    while b"\r\n\r\n" not in request:
        more = conn.recv(4096)
        if not more:
            raise OSError("the client left during the handshake")
        request += more
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key")
    )
    digest = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + digest + b"\r\n\r\n"
    )


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = conn.recv(size - len(data))
        if not more:
            raise OSError("the client left")
        data += more
    return data


def receive(conn: socket.socket, opcode: int) -> bytes:
    """Read the client's frames until one of ``opcode``; its payload, unmasked."""
    while True:
        first, second = _exactly(conn, 2)
        size = second & 0x7F
        if size >= 126:
            size = int.from_bytes(_exactly(conn, 2 if size == 126 else 8))
        mask = _exactly(conn, 4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[k % 4] for k, b in enumerate(_exactly(conn, size)))
        if first & 0x0F == opcode:
            return payload


def close(conn: socket.socket, code: int = 1000) -> None:
    """The closing handshake as a server does it: send a close frame, read the
    client's frames until its close frame, then (on return) close the TCP connection
    first, so the client need not wait for it."""
    conn.sendall(frame(CLOSE, struct.pack("!H", code)))
    receive(conn, CLOSE)


class RawServer:
    """``with RawServer(serve) as server: ... server.url``; ``serve(conn, response)``
    runs per connection with the handshake's response still to send."""

    def __init__(self, serve: Callable[[socket.socket, bytes], None]) -> None:
        self._serve = serve
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._serve(conn, accept(conn))
            except (OSError, StopIteration):
                pass

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
