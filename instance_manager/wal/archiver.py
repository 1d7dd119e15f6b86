"""Archiving with look-ahead (CNPG's ``wal.maxParallel``).

When PostgreSQL asks for segment N, the next ``.ready`` segments are archived at the same
time, up to maxParallel in flight. A segment archived ahead leaves a marker file in the
spool; PostgreSQL's later call for it finds the marker (or the still-running upload)
and returns at once. Markers are written only after the plugin confirmed durable
storage, so a marker never hides an unarchived segment; losing the spool (a new pod)
only means archiving those segments again.
"""

from __future__ import annotations

import asyncio
import heapq
import os
from collections.abc import Callable
from pathlib import Path

from instance_manager import log
from instance_manager.state import WalState
from instance_manager.wal.backend import WalBackend

_logger = log.get("wal-archive")


class Archiver:
    def __init__(
        self,
        backend: WalBackend,
        spool: Path,
        max_parallel: Callable[[], int],
        state: WalState,
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.max_parallel = max_parallel
        self.state = state
        self._ahead: dict[str, asyncio.Task[None]] = {}

    def prepare(self) -> None:
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def archive(self, source: Path) -> None:
        """Archive ``source`` (an absolute path in pg_wal); raise on failure."""
        name = source.name
        try:
            await self._archive_one(source)
        except Exception as exc:
            self.state.failed(name, str(exc))
            self.state.ready_wal_files = len(self._ready(source.parent))
            raise
        ready = self._ready(source.parent)
        self.state.ready_wal_files = len(ready)
        if self.max_parallel() > 1:
            self._look_ahead(source, ready)

    async def _archive_one(self, source: Path) -> None:
        name = source.name
        running = self._ahead.get(name)
        if running is not None:
            await asyncio.shield(running)  # never raises: a failure leaves no marker
        if self._take_marker(name):
            self.state.archived(name, ahead=True)
            return
        await self.backend.archive(source)
        self.state.archived(name)

    def _take_marker(self, name: str) -> bool:
        try:
            (self.spool / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def _look_ahead(self, source: Path, ready: list[str]) -> None:
        """Start uploads of the next .ready segments, keeping maxParallel - 1 in flight."""
        room = self.max_parallel() - 1 - len(self._ahead)
        if room <= 0:
            return
        loop = asyncio.get_running_loop()
        for name in self._next_ready(source.name, ready, room):
            self._ahead[name] = loop.create_task(self._archive_ahead(source.parent / name))

    def _next_ready(self, current: str, ready: list[str], limit: int) -> list[str]:
        """The first ``limit`` ready names after ``current`` not already taken care of."""
        later = (n for n in ready if n > current and n not in self._ahead)
        candidates = heapq.nsmallest(limit + len(self._ahead), later)
        return [n for n in candidates if not (self.spool / n).exists()][:limit]

    async def _archive_ahead(self, source: Path) -> None:
        """Upload one segment early; on success leave its marker. Never raises."""
        try:
            await self.backend.archive(source)
            (self.spool / source.name).touch()
            log.event(_logger, "archived ahead", wal=source.name)
        except Exception as exc:
            # Not fatal: PostgreSQL asks for it in turn and we archive it then.
            log.event(_logger, "archive ahead failed", wal=source.name, error=str(exc))
        finally:
            self._ahead.pop(source.name, None)

    @staticmethod
    def _ready(pg_wal: Path) -> list[str]:
        """Names with a .ready status file: one directory listing, no stat() per file."""
        try:
            entries = os.listdir(pg_wal / "archive_status")
        except FileNotFoundError:
            return []
        return [e[: -len(".ready")] for e in entries if e.endswith(".ready")]

    async def close(self) -> None:
        tasks = list(self._ahead.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
