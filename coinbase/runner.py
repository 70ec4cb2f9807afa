"""One asyncio event loop on one daemon thread, shared by every connection of the process.

Users read 50 to 300 products; a thread and an event loop per product cost a thread
stack, a selector and a self-pipe each, and bought nothing: the GIL serialises the
parsing anyway. Measured (``threading.active_count()`` of a process with its partitions
built): 4 products 5 -> 2 threads, 50 products 51 -> 2 threads (see the report in
``coinbase_source``'s docstring).

The one cost: a frame is parsed on this thread, so a 60 ms full-depth snapshot delays the
other products' frames by as much (before, GIL switching interleaved them at 5 ms);
snapshots come once per connection.

The loop is ``uvloop``'s (libuv), not asyncio's default: see :data:`NEW_LOOP`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any

import uvloop

__all__ = ["LOOP", "NEW_LOOP", "LoopRunner"]

NEW_LOOP = uvloop.new_event_loop
"""What makes the feed thread's loop. uvloop's loop costs less per frame read: the feed
thread's CPU per message, 4 products of the local exchange's market at about 5,000
msg/s, two alternating pairs on the busy 2-core machine: asyncio 33.3 and 27.0 µs,
uvloop 27.1 and 22.7 (-16 to -19%). At 800 msg/s no difference (50 µs both: there the
cost is per wake-up, and the worker's polls dominate)."""


class LoopRunner:
    """Starts its thread on first use (and again in a forked child)."""

    def __init__(self, name: str = "coinbase-io") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = NEW_LOOP()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._main, args=(loop, ready), name=self.name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run ``coro`` on the shared loop; cancel the returned future to cancel it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.loop().call_soon_threadsafe(fn, *args)


LOOP = LoopRunner()
"""The process's loop for feed connections."""
