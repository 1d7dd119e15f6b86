"""Archiving with look-ahead (CNPG's ``wal.maxParallel``).

When PostgreSQL asks for a segment and maxParallel is above 1, up to maxParallel - 1 of
the next ``.ready`` segments are uploaded at the same time, and each upload that succeeds
starts the next one, so the look-ahead keeps pace with a backlog on its own.

Every segment stored while maxParallel is above 1 leaves a marker file in the spool,
written only after the plugin confirmed durable storage, so a marker never hides an
unarchived segment. PostgreSQL's archive_command tests for the marker in the shell before
it starts the client (``postgres/config.py``): a segment stored ahead costs PostgreSQL a
shell's start, not an interpreter's. When the client runs all the same (the upload was
still running), the daemon waits for that upload and answers from its marker. While a
segment is uploaded ahead, the daemon holds an exclusive ``flock`` on its file in the
in-flight directory, from before the upload until after the marker: the shell waits for
that lock (``flock -s``) and tests for the marker again before it starts the client, so
PostgreSQL waits for an upload under way without an interpreter either. The kernel drops
the lock if the daemon dies, so the wait ends with the daemon. A marker is
removed once its segment has no ``.ready`` file any more, that is once PostgreSQL has
recorded it as archived; losing the spool (a new pod) only means archiving those
segments again. Each stored segment is counted once, when the plugin stored it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import os
from collections.abc import Callable, Iterable
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
        inflight: Path,
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.inflight = inflight
        self.max_parallel = max_parallel
        self.state = state
        self._ahead: dict[str, asyncio.Task[None]] = {}
        self._asked: set[str] = set()  # what PostgreSQL is asking for right now

    def prepare(self) -> None:
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.inflight.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in os.listdir(self.inflight):  # an earlier daemon's: nothing holds them
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.inflight / entry)

    async def archive(self, source: Path) -> None:
        """Archive ``source`` (an absolute path in pg_wal); raise on failure."""
        name = source.name
        self._asked.add(name)
        try:
            await self._archive_one(source)
        except Exception as exc:
            self.state.failed(name, str(exc))
            self.state.ready_wal_files = len(self._ready(source.parent))
            raise
        finally:
            self._asked.discard(name)
        # After the reply: PostgreSQL's archiver waits for it, not for this bookkeeping.
        asyncio.get_running_loop().call_soon(self._refill, source.parent)

    async def _archive_one(self, source: Path) -> None:
        name = source.name
        running = self._ahead.get(name)
        if running is not None:
            await asyncio.shield(running)  # never raises: a failure leaves no marker
        if (self.spool / name).exists():
            return  # stored earlier, and counted then
        await self.backend.archive(source)
        self.state.archived(name)
        if self.max_parallel() > 1:
            self._mark(name)  # so that the look-ahead does not store it again

    def _refill(self, pg_wal: Path) -> None:
        """Start uploads of the first .ready segments nobody has taken care of, keeping
        maxParallel - 1 in flight, and drop the markers PostgreSQL no longer needs."""
        ready = self._ready(pg_wal)
        self.state.ready_wal_files = len(ready)
        room = self.max_parallel() - 1 - len(self._ahead)
        if room <= 0:
            return
        busy = self._ahead.keys() | self._asked | self._prune(ready)
        loop = asyncio.get_running_loop()
        for name in heapq.nsmallest(room, (n for n in ready if n not in busy)):
            self._ahead[name] = loop.create_task(self._archive_ahead(pg_wal / name))

    def _prune(self, ready: Iterable[str]) -> set[str]:
        """The markers of segments still waiting in archive_status; the others are removed."""
        try:
            entries = os.listdir(self.spool)
        except FileNotFoundError:
            return set()
        waiting = set(ready)
        for entry in entries:
            if entry not in waiting:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spool / entry)
        return waiting.intersection(entries)

    async def _archive_ahead(self, source: Path) -> None:
        """Upload one segment early; on success leave its marker and start the next.
        Never raises: PostgreSQL asks for a segment that failed here in its turn."""
        name = source.name
        held = self._hold(name)
        try:
            marked = await self._store_ahead(source)
        finally:
            self._ahead.pop(name, None)
            self._release(name, held)  # after the marker: the shell waiting sees it
        if marked:
            log.event(_logger, "archived ahead", wal=name)
            self._refill(source.parent)

    async def _store_ahead(self, source: Path) -> bool:
        """True once the plugin stored ``source`` and its marker is written."""
        try:
            await self.backend.archive(source)
        except Exception as exc:
            log.event(_logger, "archive ahead failed", wal=source.name, error=str(exc))
            return False
        self.state.archived(source.name, ahead=True)
        return self._mark(source.name)

    def _hold(self, name: str) -> int | None:
        """An exclusive lock on ``name``'s in-flight file, taken before the file appears
        under its name (a shell that opens it always waits); None if it cannot be made."""
        path, staged = self.inflight / name, self.inflight / f".{name}"
        try:
            fd = os.open(staged, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.event(_logger, "cannot hold an in-flight lock", wal=name, error=str(exc))
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this file
            os.rename(staged, path)
        except OSError as exc:
            log.event(_logger, "cannot hold an in-flight lock", wal=name, error=str(exc))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
            os.close(fd)
            return None
        return fd

    def _release(self, name: str, fd: int | None) -> None:
        """Remove the in-flight file, then drop its lock: a shell waiting on it goes on,
        and one that comes later finds no file and no wait."""
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.inflight / name)
        os.close(fd)

    def _mark(self, name: str) -> bool:
        try:
            (self.spool / name).touch()
        except OSError as exc:
            log.event(_logger, "cannot leave an archive marker", wal=name, error=str(exc))
            return False
        return True

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
