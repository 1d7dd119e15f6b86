"""Heavy libraries (the web stack, psycopg) imported in a worker thread.

The daemon imports them while PostgreSQL starts: on the event loop's thread those imports
(150-300 ms) would hold the loop, so that PostgreSQL's readiness would be noticed only
after them. In a worker thread the loop keeps running: the switch interval is lowered
meanwhile, so that the loop gets the GIL back within a millisecond of waking up.

A lower switch interval does not help while the worker sits in a long C call (unmarshalling
a module, loading an extension), so the loop can also ask for the GIL outright: while a
probe is answered (:func:`priority`), the worker waits before each module it imports, for
at most PRIORITY_LIMIT per request, and the loop runs alone.

Code on the loop's thread that needs one of these libraries first awaits :func:`wait`:
importing a module the worker is importing would block the loop until the worker is done.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import time
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

SWITCH_INTERVAL = 0.001  # seconds, while the worker imports (Python's default is 0.005)
PRIORITY_LIMIT = 0.05  # seconds the worker may be held by one request

_running: asyncio.Future[None] | None = None
_released = threading.Event()
_released.set()
_held_until = 0.0  # monotonic time until which the worker waits (unless released first)
_worker: int | None = None  # the importing thread's ident


@contextmanager
def priority() -> Iterator[None]:
    """While the block runs (at most PRIORITY_LIMIT), the worker imports nothing more."""
    global _held_until
    if _worker is None:  # no import under way: nothing to hold
        yield
        return
    _held_until = time.monotonic() + PRIORITY_LIMIT
    _released.clear()
    try:
        yield
    finally:
        _held_until = 0.0
        _released.set()


class _Gate(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path`` during the preload: the worker waits here while held;
    finds nothing itself."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if threading.get_ident() == _worker:
            remaining = _held_until - time.monotonic()
            if remaining > 0:
                _released.wait(remaining)
        return None


def start(modules: Sequence[str], after: Awaitable[None]) -> asyncio.Future[None]:
    """Once ``after`` is done, import ``modules`` in a worker thread; the future resolves
    when they are imported. :func:`wait` waits for it from now on."""
    global _running

    async def run() -> None:
        await after
        await asyncio.to_thread(_import, tuple(modules))

    _running = asyncio.ensure_future(run())
    return _running


async def wait() -> None:
    """Until the worker started by :func:`start` (if any) is done; never raises for it."""
    running = _running
    if running is not None and not running.done():
        await asyncio.wait({running})


def _import(modules: tuple[str, ...]) -> None:
    global _worker
    previous = sys.getswitchinterval()
    gate = _Gate()
    sys.meta_path.insert(0, gate)
    _worker = threading.get_ident()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        sys.setswitchinterval(previous)
        _worker = None
        sys.meta_path.remove(gate)
