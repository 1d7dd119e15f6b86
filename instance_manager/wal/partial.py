"""Archive the current REDO segment as ``<segment>.partial``.

Used when a primary cluster is demoted to a replica cluster: the fenced former primary
hands its last, incomplete segment to the archive so the new primary's history can follow
it. Checks in CNPG's order, each refusal with CNPG's code: NOT_FENCED ->
NOT_EXPECTED_PRIMARY (targetPrimary and currentPrimary must both be this pod) ->
pg_controldata fails (ControlDataUnreadable) -> COULD_NOT_PARSE_REDOWAL_FILE ->
ERROR_WHILE_CREATING_SYMLINK (a hard link, in fact) -> ERROR_WHILE_EXECUTING_WAL_ARCHIVE.
The link is always removed.

Fenced means ``InstanceState.fenced``; while it is false every call is refused NOT_FENCED.
The segment goes through the same path as every WAL file PostgreSQL archives: by default
the thin client asks the daemon's WAL socket (what archive_command runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from instance_manager import log
from instance_manager.postgres import config, controldata
from instance_manager.process import spawn
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

REDO_WAL_KEY = "Latest checkpoint's REDO WAL file"
# One segment through the plugins: an upload to object storage, normally seconds.
ARCHIVE_TIMEOUT = 300.0
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_logger = log.get("wal-archive")

ArchiveFile = Callable[[Path], Awaitable[None]]


class PartialRefused(Exception):
    """The segment cannot be archived: CNPG's error ``code`` and a message."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ControlDataUnreadable(Exception):
    """pg_controldata failed: the message says why."""


def thin_client_archiver(settings: Callable[[], Settings]) -> ArchiveFile:
    """Archive a file the way archive_command does: the thin client and the WAL socket."""

    async def archive(path: Path) -> None:
        s = settings()
        argv = [*config.wal_client(s), "wal-archive", str(path)]
        await spawn.run(argv, env=spawn.base_env(), timeout=ARCHIVE_TIMEOUT)

    return archive


class PartialArchiver:
    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        archive: ArchiveFile | None = None,
    ) -> None:
        self._settings = settings
        self._state = state
        self._archive = archive or thin_client_archiver(settings)
        self._lock = asyncio.Lock()

    async def archive_partial(self) -> str:
        """Archive ``<REDO segment>.partial``; the segment's name. PartialRefused or
        ControlDataUnreadable otherwise."""
        if not self._state.fenced:
            raise PartialRefused("NOT_FENCED")
        s = self._settings()
        pod = s.instance.podName
        status = s.cluster.status
        if status.get("targetPrimary") != pod or status.get("currentPrimary") != pod:
            raise PartialRefused("NOT_EXPECTED_PRIMARY")
        try:
            values, _ = await controldata.read(s)
        except Exception as exc:
            raise ControlDataUnreadable(str(exc).strip() or type(exc).__name__) from exc
        segment = values.get(REDO_WAL_KEY, "")
        if not _SEGMENT.match(segment):
            raise PartialRefused("COULD_NOT_PARSE_REDOWAL_FILE")
        async with self._lock:  # two concurrent calls would fight over one link
            await self._archive_link(s.pgdata / "pg_wal", segment)
        return segment

    async def _archive_link(self, pg_wal: Path, segment: str) -> None:
        source, partial = pg_wal / segment, pg_wal / f"{segment}.partial"
        try:
            await asyncio.to_thread(os.link, source, partial)
        except OSError as exc:
            raise PartialRefused("ERROR_WHILE_CREATING_SYMLINK", str(exc)) from exc
        try:
            await self._archive(partial)
        except Exception as exc:
            text = str(exc).strip() or type(exc).__name__
            raise PartialRefused("ERROR_WHILE_EXECUTING_WAL_ARCHIVE", text) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(partial.unlink)
        log.event(_logger, "partial WAL segment archived", wal=f"{segment}.partial")
