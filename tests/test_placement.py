"""Books live on the worker that reads their socket, checked against Bytewax itself."""

from __future__ import annotations

import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import cluster_main

from service.placement import (
    RouteByProduct,
    bytewax_worker_for_key,
    routing_keys,
    source_worker_for_product,
)

pytestmark = pytest.mark.slow  # processes, sockets and threads

PRODUCTS = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR", "SOL-USD"]


class _OnePerPart(StatefulSourcePartition):
    def __init__(self, key: str) -> None:
        self.key = key
        self.sent = False

    def next_batch(self):
        if self.sent:
            raise StopIteration
        self.sent = True
        return [(self.key, None)]

    def snapshot(self):
        return None


class _Products(FixedPartitionedSource):
    """One item per product, keyed by the product id, or by ``keys`` when given (as
    ``CoinbaseSource.key_by`` makes the live source do)."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = keys or {}

    def list_parts(self):
        return PRODUCTS

    def build_part(self, step_id, for_part, resume_state):
        return _OnePerPart(self.keys.get(for_part, for_part))


def _observe(worker_count: int, route, source=None) -> tuple[dict, dict]:
    seen_source: dict[str, int] = {}
    seen_state: dict[str, int] = {}
    lock = threading.Lock()

    def at_source(step_id, item, epoch, worker):
        with lock:
            seen_source[_product_of(item[0])] = worker

    def at_state(step_id, item, epoch, worker):
        with lock:
            seen_state[item[1]] = worker

    flow = Dataflow("placement")
    items = op.input("in", flow, source or _Products())
    op.inspect_debug("source", items, at_source)
    keyed = items if route is None else op.map("route", items, route)
    state = op.stateful_map("book", keyed, lambda s, v: (s, None))
    named = op.map("name", state, lambda kv: (kv[0], _product_of(kv[0])))
    op.inspect_debug("state", named, at_state)
    cluster_main(flow, [], 0, worker_count_per_proc=worker_count)
    return seen_source, seen_state


def _product_of(key: str) -> str:
    return key.split("~")[0]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_hash_model_predicts_bytewax_routing(workers):
    source, state = _observe(workers, lambda item: item)
    assert source == {
        p: source_worker_for_product(PRODUCTS, p, workers) for p in PRODUCTS
    }
    assert state == {p: bytewax_worker_for_key(p, workers) for p in PRODUCTS}


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_book_lives_with_its_socket(workers):
    source, state = _observe(workers, RouteByProduct(PRODUCTS))
    assert state == source
    per_worker = [list(state.values()).count(w) for w in range(workers)]
    assert max(per_worker) - min(per_worker) <= 1


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_items_keyed_at_the_source_need_no_routing_step(workers):
    """The live source keys its items itself (dataflow.get_flow gives it the routing
    keys): without a routing step each book still lives with its socket."""
    source, state = _observe(workers, None, _Products(routing_keys(PRODUCTS)))
    assert state == source
    per_worker = [list(state.values()).count(w) for w in range(workers)]
    assert max(per_worker) - min(per_worker) <= 1


def test_plain_product_keys_pile_up_which_is_why_routing_keys_exist():
    default = ["BTC-USD", "ETH-USD", "BTC-EUR", "ETH-EUR"]
    plain = [bytewax_worker_for_key(p, 4) for p in default]
    routed = [bytewax_worker_for_key(k, 4) for k in routing_keys(default).values()]
    assert max(plain.count(w) for w in range(4)) >= 3
    assert sorted(routed) == [0, 1, 2, 3]
