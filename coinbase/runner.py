"""The event loop every connection of a source runs on: on a daemon thread of its own,
or run in slices by the Bytewax worker that polls the partitions (``inline``).

Users read 50 to 300 products; a thread and an event loop per product cost a thread
stack, a selector and a self-pipe each, and bought nothing: the GIL serialises the
parsing anyway. Measured (``threading.active_count()`` of a process with its partitions
built): 4 products 5 -> 2 threads, 50 products 51 -> 2 threads (see the report in
``coinbase_source``'s docstring).

The one cost: a frame is parsed on the loop, so a 60 ms full-depth snapshot delays the
other products' frames by as much (before, GIL switching interleaved them at 5 ms);
inline, it holds the worker's steps as long too. Snapshots come once per connection.

**Inline** (``LoopRunner(inline=True)``, what the service runs): no thread. The worker
that polls a partition runs the loop's due work first (:meth:`LoopRunner.pump`: the
sockets read without waiting, their frames decoded and queued, the timers that fell
due), at most every :data:`PUMP_INTERVAL`. Bytewax wakes its worker every millisecond
anyway (its floor, see docs/performance.md), so the feed costs no wake-up of its own,
and no frame crosses between two threads taking turns with the interpreter lock.
Measured, the whole process's CPU per message (``bench/bench_peer.py --stages 30000``,
4 products, two alternating pairs): 26.6 and 24.5 µs on a thread -> 20.4 and 19.9
inline; at moderate rates over several connections 10% more (50 products x 20
batches/s: asyncio's Python loop costs a little more than the thread's wake-ups did;
docs/performance.md, "The feed read in the worker's polls"). What it changes: the feed
is read only while the dataflow polls (Bytewax polls only while the outputs keep up),
so a stalled dataflow leaves the socket unread instead of queueing events; the stall
watchdog sees the time since the last pump instead (``coinbase_source``'s
``progress()``).

The threaded loop is ``uvloop``'s (libuv), not asyncio's default: see :data:`NEW_LOOP`;
the inline one is asyncio's: see :data:`NEW_INLINE_LOOP`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any

import uvloop

__all__ = [
    "CLOSE_SECONDS",
    "LOOP",
    "NEW_INLINE_LOOP",
    "NEW_LOOP",
    "PUMP_INTERVAL",
    "TAKE_OVER_SECONDS",
    "LoopRunner",
]

NEW_LOOP = uvloop.new_event_loop
"""What makes the feed thread's loop. uvloop's loop costs less per frame read: the feed
thread's CPU per message, 4 products of the local exchange's market at about 5,000
msg/s, two alternating pairs on the busy 2-core machine: asyncio 33.3 and 27.0 µs,
uvloop 27.1 and 22.7 (-16 to -19%). At 800 msg/s no difference (50 µs both: there the
cost is per wake-up, and the worker's polls dominate)."""
NEW_INLINE_LOOP = asyncio.new_event_loop
"""What makes an inline loop. One pump (``stop()`` then ``run_forever()``: one pass over
the ready sockets and due timers, without waiting) costs 1.9 µs on asyncio's loop and
10.5 to 10.8 on uvloop's, which sets up the signal wake-up at each run on the main
thread, where Bytewax's ``-w 1`` worker runs (1.4 on another thread; timeit, idle
loops). Inline the frames arrive in batches, so uvloop's cheaper read per frame no
longer pays: the process's CPU per message at 30,000 msg/s inline was 19.4 to 20.2 µs
with asyncio's loop, 20.1 with uvloop's."""
PUMP_INTERVAL = 0.0005
"""Seconds between two pumps at least."""
CLOSE_SECONDS = 2.0
"""How long closing an inline loop waits for its tasks to end (a connection says
goodbye within its 1-s close timeout): the last partition's close, once the shutdown's
shared budget is spent, when a threaded loop would finish them in the background."""
TAKE_OVER_SECONDS = 0.01
"""One poller runs the loop (the *pumper*: the first to ask); another takes over once
the loop has not run for this long (the pumper's product went quiet or failed, or its
partition closed). With every poller pumping in turn, each kept the 1-ms poll on its own
phase: the worker woke 1,513 times a second instead of 978 (50 products, 4
connections, 20 batches/s each) and the process used 0.117 to 0.120 of a core instead
of 0.090."""


class LoopRunner:
    """Starts its loop on first use (and again in a forked child): on a daemon thread,
    or, ``inline``, to be run by :meth:`pump` from whichever thread polls."""

    def __init__(self, name: str = "coinbase-io", *, inline: bool = False) -> None:
        self.name = name
        self.inline = inline
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._pumping = threading.Lock()
        """Held while a thread runs the inline loop: one at a time, the others skip."""
        self._next_pump = 0.0
        self._pumper: object = None
        self.frames = 0
        """Frames the loop's connections read, ever (their handlers count them)."""
        self._frames_seen = 0
        self.idle_pumps = 0
        """Pumps in a row that read no frame: the pumper may poll less often once the
        loop has been quiet for a while (``coinbase_source``'s quiet rule)."""
        self.last_frames = 0
        """Frames the last pump read: in bulk, the pumper is polled again at once."""
        self.pumped_ns = time.time_ns()
        """When an inline loop last ran (``time.time_ns()``): how long the feed has gone
        unread when the dataflow stops polling."""

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                if self.inline:
                    loop = NEW_INLINE_LOOP()
                else:
                    loop = NEW_LOOP()
                    ready = threading.Event()
                    thread = threading.Thread(
                        target=self._main,
                        args=(loop, ready),
                        name=self.name,
                        daemon=True,
                    )
                    thread.start()
                    ready.wait()
                self._loop, self._pid = loop, os.getpid()
                self._pumping = threading.Lock()
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    def pump(self, by: object) -> bool:
        """Inline: run the loop's due work once, without waiting, if ``by`` is the
        pumper (or takes over: see :data:`TAKE_OVER_SECONDS`), unless it ran less than
        :data:`PUMP_INTERVAL` ago or another thread is running it. True if it ran.
        Does nothing on a threaded runner (one attribute read)."""
        if not self.inline:
            return False
        now = time.monotonic()
        if now < self._next_pump:
            return False
        if by is not self._pumper:
            if now < self._next_pump + TAKE_OVER_SECONDS:
                return False
            self._pumper = by
        loop = self.loop()
        if not self._pumping.acquire(blocking=False):
            return False
        try:
            if loop.is_running():  # called from the loop's own work: nothing to do
                return False
            self._next_pump = now + PUMP_INTERVAL
            loop.stop()  # stop() before run_forever(): one pass, no wait
            loop.run_forever()
            self.pumped_ns = time.time_ns()
            self.last_frames = self.frames - self._frames_seen
            if self.last_frames:
                self._frames_seen, self.idle_pumps = self.frames, 0
            else:
                self.idle_pumps += 1
            return True
        finally:
            self._pumping.release()

    def pumps_for(self, by: object) -> bool:
        """Whether ``by`` is the one that runs the loop (it should keep polling)."""
        return self.inline and by is self._pumper

    def on_loop(self) -> bool:
        """Whether the caller runs on the loop (in one of its callbacks or tasks)."""
        loop = self._loop
        return loop is not None and asyncio._get_running_loop() is loop

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``event``, set by the loop's work; inline,
        running the loop meanwhile (nobody else would). True if it was set."""
        if not self.inline:
            return event.wait(timeout)
        deadline = time.monotonic() + timeout
        loop = self.loop()
        if not self._pumping.acquire(timeout=max(timeout, 0.0)):
            return event.is_set()
        try:
            if loop.is_running():
                return event.is_set()
            loop.run_until_complete(_until(event, deadline))
            self.pumped_ns = time.time_ns()
        finally:
            self._pumping.release()
        return event.is_set()

    def close(self) -> None:
        """Inline: close the loop once its work is done (its tasks cancelled), so that
        no unclosed loop is left to the garbage collector, whose warning runs Python
        code wherever the collection happens (in CPython 3.11 inside ``ast.parse``
        that fails the parse: "AST constructor recursion depth mismatch"). A later use
        makes a new loop. Nothing on a threaded runner: its thread serves the process."""
        loop = self._loop
        if not self.inline or loop is None or loop.is_closed() or loop.is_running():
            return
        with self._pumping:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                if not task.cancelling():  # a second cancel would cut its goodbye short
                    task.cancel()
            if tasks:  # a connection's close handshake: 1 s at most (close_timeout)
                loop.run_until_complete(asyncio.wait(tasks, timeout=CLOSE_SECONDS))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(asyncio.sleep(0))  # the closed transports' sockets
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run ``coro`` on the loop; cancel the returned future to cancel it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.loop().call_soon_threadsafe(fn, *args)


async def _until(event: threading.Event, deadline: float) -> None:
    """Let the loop run until ``event`` is set or ``deadline`` (monotonic) passes; the
    event is set by the loop's own work, seen within a millisecond."""
    while not event.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)


LOOP = LoopRunner()
"""The process's threaded loop for feed connections: the default of a
:class:`~coinbase_source.CoinbaseSource` (a library user's source needs nobody to pump
it). Process-wide by nature: one loop thread serves every source of the process."""
