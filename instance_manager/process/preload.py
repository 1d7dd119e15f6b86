"""Heavy libraries (the web stack, psycopg) imported in a worker thread.

The daemon imports them while PostgreSQL starts: on the event loop's thread those imports
(150-300 ms) would hold the loop, so that PostgreSQL's readiness would be noticed only
after them. In a worker thread the loop keeps running: the switch interval is lowered
meanwhile, so that the loop gets the GIL back within a millisecond of waking up.

Code on the loop's thread that needs one of these libraries first awaits :func:`wait`:
importing a module the worker is importing would block the loop until the worker is done.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Sequence

SWITCH_INTERVAL = 0.001  # seconds, while the worker imports (Python's default is 0.005)

_running: asyncio.Future[None] | None = None


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
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        sys.setswitchinterval(previous)
