"""coinbase.connection's reading: complete text messages go straight from websockets'
parser to the handler (``_BoundedConnection.frame_sink``), the rest through ``recv()``;
both ways keep the order, a reason to stop ends the reading at once, and what websockets
refuses (bad UTF-8) still ends the connection as it did."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coinbase.connection import Connection
from coinbase.pacing import Backoff, ConnectionPacer
from tests.support import raw_ws
from tests.support.scripted_server import ScriptedConnection, ScriptedServer

pytestmark = pytest.mark.slow


class Recorder:
    """A handler that keeps what it is given and stops at the first close."""

    settled = True

    def __init__(self, stop_at: str | None = None, fail_at: str | None = None) -> None:
        self.frames: list[str | bytes] = []
        self.closes: list[str] = []
        self.stop_at = stop_at
        self.fail_at = fail_at

    def opened(self) -> list[dict]:
        return [{"type": "hello"}]

    def received(self, frame: str | bytes, received_ns: int) -> str | None:
        assert received_ns > 0
        self.frames.append(frame)
        if frame == self.fail_at:
            raise RuntimeError("a handler bug")
        return "enough" if frame == self.stop_at else None

    def closed(self, reason: str, close_code: int | None) -> bool:
        self.closes.append(reason)
        return False  # never reconnect

    def connect_failed(self, reason: str) -> None:
        self.closes.append(f"connect failed: {reason}")

    def retrying(self) -> None:  # pragma: no cover - closed() never asks for it
        pass


def read_all(script, handler: Recorder) -> None:
    with ScriptedServer(script) as server:
        read_from(server.url, handler)


def read_from(url: str, handler: Recorder) -> None:
    connection = Connection(
        url,
        name="test",
        watchdog_seconds=10.0,
        backoff=Backoff(initial=0.01),
        pacer=ConnectionPacer(100),
        message_pacer=ConnectionPacer(100),
    )
    asyncio.run(asyncio.wait_for(connection.run(handler), 20))


def test_text_fragmented_and_binary_messages_arrive_in_order() -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send("a")
        await conn.ws.send(["b1", "b2"])  # one message in two fragments
        await conn.send("c")
        await conn.ws.send(b"d")  # binary
        for k in range(200):  # many in few reads: the direct way
            await conn.send(f"e{k}")
        await conn.ws.send(iter(["f1", "f2", "f3"]))
        await conn.send("g")

    handler = Recorder()
    read_all(script, handler)
    assert handler.frames == (
        ["a", "b1b2", "c", b"d"] + [f"e{k}" for k in range(200)] + ["f1f2f3", "g"]
    )
    assert handler.closes == ["server closed the connection (code 1000)"]


def test_a_reason_to_stop_ends_the_reading_at_once() -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        for k in range(50):
            await conn.send(f"m{k}")
        await conn.hold(5)

    handler = Recorder(stop_at="m9")
    read_all(script, handler)
    assert handler.frames == [f"m{k}" for k in range(10)]
    assert handler.closes == ["enough"]


def test_a_handler_error_ends_the_connection_and_is_logged(caplog) -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        for k in range(20):
            await conn.send(f"m{k}")
        await conn.hold(5)

    class Once(Recorder):
        def retrying(self) -> None:  # the second connection stops at its first frame
            self.fail_at, self.stop_at = None, "m0"

    handler = Once(fail_at="m4")
    read_all(script, handler)
    # the failing frame ended the first connection's reading: m5... were never read
    assert handler.frames == ["m0", "m1", "m2", "m3", "m4", "m0"]
    assert handler.closes == ["enough"]
    assert "unexpected error in the connection loop" in caplog.text
    assert "a handler bug" in caplog.text


def test_bad_utf8_in_a_text_message_still_ends_the_connection() -> None:
    async def script(conn: ScriptedConnection) -> None:
        await conn.recv_json()
        await conn.send("a")
        await conn.ws.send(b'{"x":"\xff"}', text=True)  # unchecked by the server
        await conn.send("never read")
        await conn.hold(5)

    handler = Recorder()
    read_all(script, handler)
    assert handler.frames == ["a"]
    assert len(handler.closes) == 1
    assert "1007" in handler.closes[0] or "invalid" in handler.closes[0].lower()


def test_a_frame_handed_over_after_the_watchdog_fired_is_not_read() -> None:
    """websockets' data_received may hand a frame over after the watchdog's deadline
    fired and before the reader's cancellation is delivered: that frame must not
    reach the session (a snapshot there made a feed that never kept to its watchdog
    look like one that had delivered a book)."""
    from types import SimpleNamespace

    from coinbase.connection import _Reader

    async def run() -> list:
        handler = Recorder()
        owner = SimpleNamespace(watchdog=1.0, _live=False)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(0.01) as deadline:
                reader = _Reader(owner, None, handler, deadline)
                # after the deadline's own timer: the watchdog has fired by then
                loop.call_at(deadline.when() + 0.001, reader.take, "late", 1)
                await asyncio.sleep(1)
        except TimeoutError:
            pass
        await asyncio.sleep(0.01)
        return handler.frames

    assert asyncio.run(run()) == []


def test_a_frame_past_the_grace_deadline_is_late_even_before_its_timer_ran() -> None:
    """Before the first book, a frame handed over once the grace deadline has passed
    is late, even when the loop runs its I/O before the deadline's due timer."""
    from types import SimpleNamespace

    from coinbase.connection import _Reader

    handler = Recorder()
    handler.settled = False  # no book yet: the grace deadline counts

    async def run() -> None:
        owner = SimpleNamespace(watchdog=1.0, _live=False)
        async with asyncio.timeout(3600) as deadline:
            reader = _Reader(owner, None, handler, deadline)
            reader.take("in time", 1)
            deadline.reschedule(asyncio.get_running_loop().time() - 1)  # passed
            reader.take("late", 2)  # its timer has not run: nothing awaited since
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError):
        asyncio.run(run())
    assert handler.frames == ["in time"]


_MESSAGE = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=40)),
    st.tuples(st.just("text"), st.integers(100, 70_000).map(lambda n: "é" * n)),
    st.tuples(st.just("fragments"), st.lists(st.text(max_size=20), min_size=2)),
    st.tuples(st.just("binary"), st.binary(max_size=40)),
    st.tuples(st.just("ping"), st.binary(max_size=20)),
)


def _frames(kind: str, body) -> bytes:
    if kind == "text":
        return raw_ws.frame(raw_ws.TEXT, body.encode())
    if kind == "binary":
        return raw_ws.frame(raw_ws.BINARY, body)
    if kind == "ping":
        return raw_ws.frame(raw_ws.PING, body)
    parts = [part.encode() for part in body]
    return b"".join(
        raw_ws.frame(raw_ws.TEXT if k == 0 else raw_ws.CONTINUATION, part, fin)
        for k, part in enumerate(parts)
        for fin in [k == len(parts) - 1]
    )


@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(_MESSAGE, max_size=12),
    cuts=st.lists(st.integers(0, 2**20), max_size=8),
    behind_the_response=st.booleans(),
)
def test_frames_cut_anywhere_arrive_whole_and_in_order(
    messages, cuts, behind_the_response
) -> None:
    """Whatever the reads' boundaries (inside a header, inside a payload, frames right
    behind the handshake's response), every message arrives once, whole, in order:
    complete text frames split off before websockets' parser, the rest through it."""
    stream = b"".join(_frames(kind, body) for kind, body in messages)
    at = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(at, at[1:], strict=False) if b > a]

    def serve(conn: socket.socket, response: bytes) -> None:
        rest = chunks
        if behind_the_response and chunks:
            conn.sendall(response + chunks[0])
            rest = chunks[1:]
        else:
            conn.sendall(response)
        conn.settimeout(5)
        raw_ws.receive(conn, raw_ws.TEXT)  # its subscribe: it reads from now on
        for chunk in rest:
            conn.sendall(chunk)
            time.sleep(0.001)  # mostly one read each
        raw_ws.close(conn)

    handler = Recorder()
    with raw_ws.RawServer(serve) as server:
        read_from(server.url, handler)
    expected = [
        "".join(body) if kind == "fragments" else body
        for kind, body in messages
        if kind != "ping"
    ]
    assert handler.frames == expected
    assert handler.closes == ["server closed the connection (code 1000)"]
