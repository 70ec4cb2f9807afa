"""Client-side helpers for the local exchange tests: the exchange fixture, open, read,
drain, sign.

Frames and subscribe messages come from :mod:`tests.support.frames`, the reference book
from :mod:`tests.support.reference_book` (``ReferenceBooks``), waits from
:func:`tests.support.flow.wait_until`."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import NamedTuple

import pytest
from websockets.sync.client import ClientConnection, connect

from local_exchange.auth import sign_level2
from local_exchange.server import LocalExchange

KEY = "sim-key-123"
SECRET = base64.b64encode(b"a very secret hmac key for tests").decode()
PASSPHRASE = "open sesame"
AT_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
EX_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def exchange() -> Iterator[LocalExchange]:
    with LocalExchange(
        depth=200,
        rate=50,
        heartbeat_interval=0.2,
        api_key=KEY,
        api_secret=SECRET,
        passphrase=PASSPHRASE,
        announce=True,
    ) as ex:
        yield ex


def open_ws(ex: LocalExchange, protocol: str = "exchange") -> ClientConnection:
    # max_queue=None: the sync client stops reading when 16 frames wait unread, so closing
    # mid-stream would otherwise wait 10 s for a close frame stuck behind them.
    return connect(ex.url(protocol), max_size=None, max_queue=None, open_timeout=5)


def recv(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def recv_until(
    ws: ClientConnection, pred, timeout: float = 5.0
) -> tuple[dict, list[dict]]:
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = recv(ws, max(0.01, deadline - time.monotonic()))
        if pred(msg):
            return msg, seen
        seen.append(msg)


def drain_with_marker(ex: LocalExchange, ws: ClientConnection, apply) -> list[dict]:
    """After pause_market(), a marker frame queued behind every generated change."""
    ex.send_malformed(kinds=["unknown_type"])

    def is_marker(m: dict) -> bool:
        return m.get("type") == "sim_unknown" or m.get("channel") == "sim_unknown"

    _, seen = recv_until(ws, is_marker)
    for msg in seen:
        apply(msg)
    return seen


def signed(
    msg: dict, *, key=KEY, secret=SECRET, passphrase=PASSPHRASE, ts: str | None = None
) -> dict:
    ts = ts if ts is not None else str(time.time())
    return {
        **msg,
        "signature": sign_level2(secret, ts),
        "key": key,
        "passphrase": passphrase,
        "timestamp": ts,
    }


class HttpReply(NamedTuple):
    status: int
    body: bytes
    content_type: str

    def json(self):
        return json.loads(self.body)


def rest_get(ex: LocalExchange, path: str, timeout: float = 10.0) -> HttpReply:
    """A plain HTTP GET of ``path`` on the exchange's port, by the stdlib's client (an
    error status is a reply too; a timeout raises ``TimeoutError``)."""
    url = f"http://127.0.0.1:{ex.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return HttpReply(r.status, r.read(), r.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as e:
        return HttpReply(e.code, e.read(), e.headers.get("Content-Type", ""))
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise e.reason from e
        raise


ARRIVAL_JITTER = 0.1
"""Seconds by which a loaded machine may delay the time a loopback server notes a
request's arrival (its thread waits for the GIL) while a later request is noted on
time: a test counting arrivals against a per-second budget counts them in a window
this much shorter. The budget's own rule is proven on a fake clock
(``tests/test_coinbase_audit.py::test_the_budget_never_exceeds_its_rate_in_any_second``);
arrivals of 4 requests in one second against a budget of 3 were seen once, with both
cores busy and the test polling every 5 ms."""


def busiest_window(times: list[float], window: float = 1.0) -> int:
    """The most requests in any ``window``-second stretch (sliding, half-open
    ``[t, t + window)``) of sorted arrival ``times``, e.g. ``LocalExchange.rest_requests()``'s
    first fields: what a per-second rate budget is checked against."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
