"""Keys that put each product's book on the worker that already reads its socket.

Bytewax 0.21 places the partitions of a ``FixedPartitionedSource`` round-robin over the
sorted partition names, but routes every key of a stateful step to worker
``siphash13(key bytes + b"\\xff") % worker_count`` (Rust's ``DefaultHasher`` over a
``String``). With product ids as keys, the default four products pile up: three books on
one worker of two, three on one worker of four. So the book step is keyed by a *routing
key*: the product id, or the product id with a short suffix chosen so that its hash is
congruent to the product's round-robin slot modulo 840 (the least common multiple of 1 to
8). For any worker count that divides 840 (1 to 8, 10, 12, 14, 15, ...) every book then
lives on the same worker as its socket: no cross-worker hop, and an even spread.
``tests/test_placement.py`` checks this against Bytewax itself, so an upgrade that
changes the rule fails loudly instead of silently unbalancing the cluster.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache

SLOT_MODULUS = 840
"""lcm(1..8): any worker count dividing it sees the chosen residues as round-robin."""

_MASK = (1 << 64) - 1
_MAX_SUFFIX = 200_000


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with a zero key: what Rust's ``DefaultHasher::new()`` computes."""
    v0 = 0x736F6D6570736575
    v1 = 0x646F72616E646F6D
    v2 = 0x6C7967656E657261
    v3 = 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    length = len(data)
    whole = length - length % 8
    for offset in range(0, whole, 8):
        (m,) = struct.unpack_from("<Q", data, offset)
        v3 ^= m
        sip_round()
        v0 ^= m
    last = ((length & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    sip_round()
    sip_round()
    sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def bytewax_worker_for_key(key: str, worker_count: int) -> int:
    """The worker Bytewax 0.21 routes a stateful key to."""
    return siphash13(key.encode() + b"\xff") % worker_count


def source_worker_for_product(
    products: Iterable[str], product: str, worker_count: int
) -> int:
    """The worker Bytewax 0.21 gives a ``FixedPartitionedSource`` partition to."""
    return sorted(products).index(product) % worker_count


@lru_cache(maxsize=1024)
def _key_for_slot(product: str, slot: int) -> str:
    for suffix in range(_MAX_SUFFIX):
        key = product if suffix == 0 else f"{product}~{suffix}"
        if siphash13(key.encode() + b"\xff") % SLOT_MODULUS == slot:
            return key
    return product  # unreachable in practice: ~840 tries are expected


def routing_keys(products: Iterable[str]) -> dict[str, str]:
    """Map each product id to the key its book step should be routed by."""
    ordered = sorted(products)
    return {p: _key_for_slot(p, i % SLOT_MODULUS) for i, p in enumerate(ordered)}


class RouteByProduct:
    """The routing step: keys each `(product_id, event)` by its product's routing key."""

    def __init__(self, products: list[str]) -> None:
        self.keys = routing_keys(products)

    def __call__(self, item: tuple[str, object]) -> tuple[str, object]:
        product_id, event = item
        return self.keys.get(product_id, product_id), event
