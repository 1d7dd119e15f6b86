"""Waiting for a state with a deadline in async tests (``tests.daemon.wait_for`` is the
synchronous counterpart): poll ``probe`` until it returns something true. ``probe`` may be a
plain function or a coroutine function."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
INTERVAL = 0.02


async def eventually(
    probe: Callable[[], Awaitable[T]] | Callable[[], T], timeout: float, what: str
) -> T:
    """The first true value ``probe`` returns; AssertionError naming ``what`` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(INTERVAL)


async def listening(host: str, port: int, timeout: float = 10.0) -> None:
    """Return once ``host:port`` accepts a TCP connection."""

    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await eventually(accepts, timeout, f"{host}:{port} to accept connections")
