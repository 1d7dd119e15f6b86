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
    await preload.wait()  # watchfiles is imported off the loop's thread while PostgreSQL starts
    from watchfiles import awatch

    folder = _folder(path)
    last = await asyncio.to_thread(_fingerprint, path)
    # step: how often the watcher thread wakes up to check for cancellation (ms).
    async for _ in awatch(folder, debounce=200, step=1000, recursive=False):
        now = await asyncio.to_thread(_fingerprint, path)
        if now != last:
            last = now
            log.event(_logger, "settings file changed", path=str(path))
            on_change()


def _folder(path: Path) -> Path:
    return path.absolute().parent


def _fingerprint(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
