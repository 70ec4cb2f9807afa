"""The resync channel: the book step asks, the product's source partition takes; one
channel per flow, owned by its source."""

from __future__ import annotations

import copy
import json
import pickle
import threading
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from book_step import RESYNC_AFTER_SECONDS
from coinbase_source import CoinbaseSource
from dataflow import get_flow
from events import BID, BookChanges, BookSnapshot
from recording.replay import ReplaySource
from recording.writer import RecordingWriter
from resync import ResyncRequests
from service.settings import Settings


@pytest.fixture
def requests() -> ResyncRequests:
    return ResyncRequests()


def test_a_request_is_taken_once_with_its_reason(requests):
    assert requests.take("BTC-USD") is None
    assert requests.request("BTC-USD", "crossed for 3.0 s") is True
    assert requests.take("ETH-USD") is None  # per product
    assert requests.take("BTC-USD") == "crossed for 3.0 s"
    assert requests.take("BTC-USD") is None


def test_a_pending_request_keeps_its_first_reason(requests):
    assert requests.request("BTC-USD", "crossed") is True
    assert requests.request("BTC-USD", "locked") is False
    assert requests.pending() == {"BTC-USD": "crossed"}
    assert requests.take("BTC-USD") == "crossed"
    assert requests.request("BTC-USD", "locked") is True  # a new one after the take


def test_bad_product_id_is_refused(requests):
    with pytest.raises(ValueError):
        requests.request("", "why")


@pytest.mark.slow  # threads
def test_requests_from_many_threads_are_each_taken_exactly_once(requests):
    products = [f"P{i}-USD" for i in range(200)]
    taken: list[str] = []
    start = threading.Barrier(5)

    def ask(chunk):
        start.wait()
        for p in chunk:
            requests.request(p, "crossed")

    def take():
        start.wait()
        for _ in range(50):
            for p in products:
                if requests.take(p) is not None:
                    taken.append(p)

    threads = [threading.Thread(target=ask, args=(products[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=take))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    taken += [p for p in products if requests.take(p) is not None]
    assert sorted(taken) == sorted(products)


# -- one channel per flow ------------------------------------------------------------------


def test_two_channels_never_share_a_request():
    first, second = ResyncRequests(), ResyncRequests()
    first.request("BTC-USD", "crossed")
    assert second.take("BTC-USD") is None and second.pending() == {}
    assert first.take("BTC-USD") == "crossed"


def test_a_copy_in_the_same_process_is_the_same_channel(requests):
    """Bytewax may pickle or deep-copy the objects a flow is built from."""
    for again in (pickle.loads(pickle.dumps(requests)), copy.deepcopy(requests)):
        assert again is requests
    source = CoinbaseSource(["BTC-USD"])
    assert pickle.loads(pickle.dumps(source.resync_requests)) is source.resync_requests


def _recording(path) -> str:
    header = {"protocol": "exchange", "feed": "exchange", "url": "test"}
    writer = RecordingWriter(path, {**header, "products": ["BTC-USD"], "started": "t"})
    snapshot = {"type": "snapshot", "product_id": "BTC-USD", "bids": [], "asks": []}
    writer.connected("BTC-USD", 1)
    writer.frame("BTC-USD", json.dumps(snapshot), 1)
    writer.close()
    return path


def test_each_source_owns_its_channel_or_is_given_one(tmp_path, requests):
    path = _recording(tmp_path / "r.jsonl.gz")
    sources = [
        CoinbaseSource(["BTC-USD"]),
        CoinbaseSource(["BTC-USD"]),
        ReplaySource(path, progress=False),
        ReplaySource(path, progress=False),
    ]
    channels = [s.resync_requests for s in sources]
    assert all(isinstance(c, ResyncRequests) for c in channels)
    assert len({id(c) for c in channels}) == len(channels)
    given = CoinbaseSource(["BTC-USD"], resync_requests=requests)
    assert given.resync_requests is requests
    replay = ReplaySource(path, progress=False, resync_requests=requests)
    assert pickle.loads(pickle.dumps(replay)).resync_requests is requests


S = 1_000_000_000
T = datetime(2026, 8, 25, tzinfo=UTC)


class _Source(TestingSource):
    """A testing source that owns a resync channel, as the service's sources do."""

    def __init__(self, events: list) -> None:
        super().__init__([(e.product_id, e) for e in events])
        self.resync_requests = ResyncRequests()


def _crossed_for_long(product: str) -> list:
    """A book crossed for longer than RESYNC_AFTER_SECONDS of feed time."""
    snap = BookSnapshot(product, [(D(100), D(1))], [(D(101), D(1))], None, "x", S)
    return [
        snap,
        BookChanges(product, [(BID, D(102), D(1))], T, "x", 2 * S),
        BookChanges(
            product, [(BID, D(103), D(1))], T, "x", int((3 + RESYNC_AFTER_SECONDS) * S)
        ),
    ]


@pytest.mark.parametrize("depth_levels", [0, 5])  # the plain fast path, BookStep
def test_get_flow_gives_the_book_step_its_sources_channel(depth_levels):
    """Two flows in one process: each book step asks its own source, not the other's."""
    asking = _Source(_crossed_for_long("BTC-USD"))
    quiet = _Source(_crossed_for_long("ETH-USD")[:1])
    for source, product in ((asking, "BTC-USD"), (quiet, "ETH-USD")):
        flow = get_flow(
            Settings(spread_threshold_pct=D(0), depth_levels=depth_levels),
            source=source,
            products=[product],
            sink=TestingSink([]),
        )
        run_main(flow)
    reason = asking.resync_requests.take("BTC-USD")
    assert reason is not None and "crossed" in reason
    assert quiet.resync_requests.pending() == {}
