"""The real command (`python -m bytewax.run dataflow:flow`) against feeds that misbehave
or can never work, each a real server on 127.0.0.1 started by the test: a message far
over the size limit, a web server that is not a WebSocket endpoint, a refused port. And
the credentials a feed URL may carry never reach the log."""

from __future__ import annotations

import contextlib
import http.server
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.flow import FlowProcess, flow_env, free_port, wait_until
from tests.support.raw_ws import RawServer

pytestmark = pytest.mark.slow  # processes, sockets and threads


class OversizedFrameServer(RawServer):
    """A WebSocket server that answers every subscribe with a text frame whose header
    declares ``size`` bytes, then streams that payload (1 MiB at a time) for as long
    as the client reads, frame after frame.

    Raw sockets, since websockets' own server would not send such a frame on purpose.
    ``lifetimes`` records, per connection, the seconds from the oversized header to the
    client going away.
    """

    def __init__(self, size: int) -> None:
        super().__init__(self._oversized)
        self.size = size
        self.lifetimes: list[float] = []
        self.start()

    def _oversized(self, conn: socket.socket, response: bytes) -> None:
        conn.sendall(response)
        conn.recv(4096)  # the subscribe message
        started = time.monotonic()
        chunk = b"a" * 2**20
        try:
            while not self.stopping:
                conn.sendall(b"\x81\x7f" + struct.pack("!Q", self.size))
                for _ in range(self.size // len(chunk) + 1):
                    conn.sendall(chunk)
        finally:
            self.lifetimes.append(time.monotonic() - started)


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_an_oversized_message_drops_the_connection_at_once_with_bounded_memory(
    tmp_path,
):
    """A frame over the limit is refused from its header: the connection is dropped
    within about a second (websockets alone waited for the server to close, so until
    the watchdog), with one line naming the limit's setting, and memory stays flat while
    the server streams on (before: frames under the old 64 MiB limit were taken in, 16 at
    a time, growing the process by about 64 MB a second)."""
    size = 20 * 2**20  # over the default 16 MiB limit, under the former 64 MiB
    server = OversizedFrameServer(size)
    try:
        env = flow_env(
            ORDERBOOK_WS_URL=server.url,
            ORDERBOOK_PRODUCTS="BTC-USD",
            ORDERBOOK_OUTPUT=f"jsonl:{tmp_path / 'out.jsonl'}",
        )
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        # the fourth ended: the third's line was said before it began (a connection
        # dropped as the flow stops may go unsaid, its task cancelled first)
        flow.wait_for(
            lambda: len(server.lifetimes) >= 4, 60, "four dropped connections"
        )
        peak = _peak_rss_mib(flow.proc.pid)
        assert flow.stop() == 0
    finally:
        server.close()
    drops = [line for line in flow.stderr.splitlines() if "message too big" in line]
    assert len(drops) >= 3, flow.stderr[-3000:]
    assert all("ORDERBOOK_MAX_MESSAGE_BYTES" in line for line in drops)
    assert f"frame with {size} bytes exceeds limit of {16 * 2**20} bytes" in drops[0]
    assert max(server.lifetimes[:3]) < 5.0, server.lifetimes  # the watchdog's grace: 15
    assert peak < 120, f"peak RSS {peak:.0f} MiB"  # measured: 44; before: 181
    assert "Traceback" not in flow.stderr


class _NotWebSocket(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_error(404, "no WebSocket here")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _web_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotWebSocket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_against_a_server_that_is_not_websocket_ends_with_one_line():
    """Before, the 404 was retried for ever: a run that never produced anything and
    never ended. The URL's credentials stay out of the line."""
    with _web_server() as port:
        url = f"ws://alice:hunter2@127.0.0.1:{port}/feed?token=s3cr3t"
        env = flow_env(ORDERBOOK_WS_URL=url, ORDERBOOK_PRODUCTS="BTC-USD,ETH-USD")
        flow = FlowProcess(["bytewax.run", "dataflow:flow"], env)
        status = flow.finish(timeout=60)
    assert status == 1, flow.stderr[-3000:]
    # the service's one early-exit line (service.runtime.Shutdown), the outputs closed
    [line] = [
        line for line in flow.stderr.splitlines() if line.startswith("orderbook: ")
    ]
    assert "failed permanently" in line and "HTTP 404" in line
    assert f"ws://***@127.0.0.1:{port}/feed?token=***" in line
    assert "hunter2" not in flow.stderr and "s3cr3t" not in flow.stderr
    assert "Traceback" not in flow.stderr


def test_the_credentials_of_a_feed_url_never_reach_the_log():
    """Every failed connect logged ORDERBOOK_WS_URL in full, user info and token."""
    port = free_port()  # nobody listens: each connect is refused, and retried
    url = f"wss://alice:hunter2@127.0.0.1:{port}/feed?token=s3cr3t&depth=2"
    flow = FlowProcess(
        ["bytewax.run", "dataflow:flow"],
        flow_env(ORDERBOOK_WS_URL=url, ORDERBOOK_PRODUCTS="BTC-USD"),
    )
    try:
        wait_until(
            lambda: flow.proc.poll() is not None or _stderr_has(flow, "cannot connect"),
            30,
            "a failed connect",
        )
    finally:
        flow.stop()
    assert f"wss://***@127.0.0.1:{port}/feed?token=***&depth=2" in flow.stderr
    assert "hunter2" not in flow.stderr and "alice" not in flow.stderr
    assert "s3cr3t" not in flow.stderr


def _stderr_has(flow: FlowProcess, text: str) -> bool:
    """Read what stderr holds so far without blocking (the process keeps running)."""
    stream = flow.proc.stderr
    assert stream is not None
    fd = stream.fileno()
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 65536)
        if not data:
            break
        flow.stderr += data.decode("utf-8", "replace")
    return text in flow.stderr
