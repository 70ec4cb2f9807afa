"""The resync registry: the book step asks, the product's source partition takes."""

from __future__ import annotations

import threading

import pytest

from resync import (
    clear_resync_requests,
    pending_resyncs,
    request_resync,
    take_resync_request,
)


@pytest.fixture(autouse=True)
def _empty_registry():
    clear_resync_requests()
    yield
    clear_resync_requests()


def test_a_request_is_taken_once_with_its_reason():
    assert take_resync_request("BTC-USD") is None
    assert request_resync("BTC-USD", "crossed for 3.0 s") is True
    assert take_resync_request("ETH-USD") is None  # per product
    assert take_resync_request("BTC-USD") == "crossed for 3.0 s"
    assert take_resync_request("BTC-USD") is None


def test_a_pending_request_keeps_its_first_reason():
    assert request_resync("BTC-USD", "crossed") is True
    assert request_resync("BTC-USD", "locked") is False
    assert pending_resyncs() == {"BTC-USD": "crossed"}
    assert take_resync_request("BTC-USD") == "crossed"
    assert request_resync("BTC-USD", "locked") is True  # a new one after the take


def test_bad_product_id_is_refused():
    with pytest.raises(ValueError):
        request_resync("", "why")


@pytest.mark.slow  # threads
def test_requests_from_many_threads_are_each_taken_exactly_once():
    products = [f"P{i}-USD" for i in range(200)]
    taken: list[str] = []
    start = threading.Barrier(5)

    def ask(chunk):
        start.wait()
        for p in chunk:
            request_resync(p, "crossed")

    def take():
        start.wait()
        for _ in range(50):
            for p in products:
                if take_resync_request(p) is not None:
                    taken.append(p)

    threads = [threading.Thread(target=ask, args=(products[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=take))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    taken += [p for p in products if take_resync_request(p) is not None]
    assert sorted(taken) == sorted(products)
