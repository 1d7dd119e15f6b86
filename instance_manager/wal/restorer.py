"""Restore with prefetch.

When PostgreSQL asks for segment N, N is fetched straight into its destination and the
next segments on the same timeline are fetched into a spool on pg_wal's filesystem
(beside the WAL directory, see Settings.restore_spool), so handing one over is an atomic
rename. Where the spool still ends up on another filesystem (pg_wal symlinked elsewhere
by hand), the rename fails with EXDEV and the file is copied, fsynced and renamed
instead. A spooled file is handed over once (removed from the spool) and only for its
exact name, so it can never be served twice or for another timeline; files of another
timeline are dropped from the spool. The spool only ever saves a fetch: any error in it
counts as "not prefetched" and the file is fetched directly. Rewind mode fetches exactly
the requested file, as pg_rewind needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from instance_manager import durable, log
from instance_manager.errors import WalNotFound
from instance_manager.state import WalState
from instance_manager.wal import names
from instance_manager.wal.backend import WalBackend

_logger = log.get("wal-restore")


class Restorer:
    def __init__(
        self,
        backend: WalBackend,
        spool: Path,
        max_parallel: Callable[[], int],
        segment_size: Callable[[], int],
        state: WalState,
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.max_parallel = max_parallel
        self.segment_size = segment_size
        self.state = state
        self._fetching: dict[str, asyncio.Task[bool]] = {}
        self._usable = True  # False once the spool could not be prepared: no prefetch
        self._copy_logged = False

    def prepare(self) -> None:
        """An empty spool: what an earlier run left may belong to another timeline."""
        try:
            self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
            for entry in self.spool.iterdir():
                entry.unlink(missing_ok=True)
        except OSError as exc:
            self._usable = False
            log.event(
                _logger,
                "restore spool unusable: WAL is fetched without prefetch",
                logging.WARNING,
                spool=str(self.spool),
                error=str(exc),
            )

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        """Put WAL file ``name`` at ``destination``; WalNotFound when nobody has it."""
        if self._usable and not rewind and names.is_segment(name):
            spooled = await self._from_spool(name, destination)
            self._prefetch(name)
            if spooled:
                self._done(name, spooled=True)
                return
        await self.backend.restore(name, destination, rewind)
        self._done(name, spooled=False)

    def _done(self, name: str, spooled: bool) -> None:
        self.state.last_restored_wal = name
        self.state.restored_count += 1
        self.state.restored_from_spool += int(spooled)

    async def _from_spool(self, name: str, destination: Path) -> bool:
        """Hand a prefetched ``name`` over to ``destination``; False when not prefetched
        or when the spool fails in any way (the caller then fetches it directly)."""
        running = self._fetching.get(name)
        if running is not None:
            await asyncio.shield(running)
        spooled = self.spool / name
        try:
            self._drop_other_timelines(name)
            try:
                os.replace(spooled, destination)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                await self._copy_over(spooled, destination)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.event(_logger, "restore spool failed", logging.WARNING, wal=name, error=str(exc))
            return False
        return True

    async def _copy_over(self, spooled: Path, destination: Path) -> None:
        """EXDEV: the spool and pg_wal are on different filesystems (the kernel refuses the
        rename before it looks at the source, so this also runs for files not spooled)."""
        if not self._copy_logged:
            self._copy_logged = True
            log.event(
                _logger,
                "restore spool and pg_wal are on different filesystems: handing over by copy",
                logging.WARNING,
                spool=str(self.spool),
                destination=str(destination.parent),
            )
        await asyncio.to_thread(durable.move_file, spooled, destination)

    def _prefetch(self, name: str) -> None:
        try:
            wanted = names.following(name, self.max_parallel() - 1, self.segment_size())
            for next_name in wanted:
                if next_name in self._fetching or (self.spool / next_name).exists():
                    continue
                task = asyncio.get_running_loop().create_task(self._fetch(next_name))
                self._fetching[next_name] = task
        except OSError as exc:
            log.event(_logger, "prefetch skipped", logging.WARNING, wal=name, error=str(exc))

    async def _fetch(self, name: str) -> bool:
        """Fetch into the spool under a temporary name, then rename. Never raises."""
        partial = self.spool / f"{name}.partial"
        try:
            await self.backend.restore(name, partial, rewind=False)
            os.replace(partial, self.spool / name)
            return True
        except WalNotFound:
            return False  # past the end of the archive: PostgreSQL will hear it in turn
        except Exception as exc:
            log.event(_logger, "prefetch failed", wal=name, error=str(exc))
            return False
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
            self._fetching.pop(name, None)

    def _drop_other_timelines(self, name: str) -> None:
        timeline = names.timeline_of(name)
        for entry in self.spool.iterdir():
            if names.is_segment(entry.name) and names.timeline_of(entry.name) != timeline:
                entry.unlink(missing_ok=True)

    async def close(self) -> None:
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
