"""Reload when the settings file changes, as if SIGHUP had been sent.

The directory is watched, not the file: a Kubernetes ConfigMap volume replaces files by
swapping a symlink, which a watch on the old file would miss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from instance_manager import log
from instance_manager.process import preload

_logger = log.get()


async def watch(path: Path, on_change: Callable[[], None]) -> None:
    last = await asyncio.to_thread(_fingerprint, path)
    await preload.wait()  # watchfiles is imported off the loop's thread while PostgreSQL starts
    from instance_manager.process.watch import awatch

    last = await _compare(path, last, on_change)  # a change while watchfiles was imported
    folder = _folder(path)
    # step: how often the watcher thread wakes up to check for cancellation (ms).
    async for _ in awatch(folder, debounce=200, step=1000, recursive=False):
        last = await _compare(path, last, on_change)


async def _compare(path: Path, last: bytes | None, on_change: Callable[[], None]) -> bytes | None:
    now = await asyncio.to_thread(_fingerprint, path)
    if now != last:
        log.event(_logger, "settings file changed", path=str(path))
        on_change()
    return now


def _folder(path: Path) -> Path:
    return path.absolute().parent


def _fingerprint(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
