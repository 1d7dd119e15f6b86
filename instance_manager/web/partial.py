"""``/pg/archive/partial``: archive the current REDO segment as ``<segment>.partial``.

Used when a primary cluster is demoted to a replica cluster: the fenced former primary
hands its last, incomplete segment to the archive so the new primary's history can follow
it. Order of checks and error codes as CNPG (400 with the envelope unless noted):

NOT_FENCED -> NOT_EXPECTED_PRIMARY (targetPrimary and currentPrimary must both be this pod)
-> pg_controldata fails: 500 plain text -> COULD_NOT_PARSE_REDOWAL_FILE
-> ERROR_WHILE_CREATING_SYMLINK (a hard link, in fact) -> ERROR_WHILE_EXECUTING_WAL_ARCHIVE
-> 200 {"data": "<segment>"}. The link is always removed.

Fenced means ``InstanceState.fenced``. This daemon has no fencing command that sets it, so
every call answers NOT_FENCED.

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

from aiohttp import web

from instance_manager import log
from instance_manager.postgres import config, controldata
from instance_manager.process import spawn
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.web.jsonapi import data_response, error_response, plain_error

REDO_WAL_KEY = "Latest checkpoint's REDO WAL file"
# One segment through the plugins: an upload to object storage, normally seconds.
ARCHIVE_TIMEOUT = 300.0
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_logger = log.get("wal-archive")

ArchiveFile = Callable[[Path], Awaitable[None]]


def thin_client_archiver(settings: Callable[[], Settings]) -> ArchiveFile:
    """Archive a file the way archive_command does: the thin client and the WAL socket."""

    async def archive(path: Path) -> None:
        s = settings()
        argv = [str(config.manager_path(s)), "wal-archive", str(path)]
        await spawn.run(argv, env=spawn.base_env(), timeout=ARCHIVE_TIMEOUT)

    return archive


class ArchivePartial:
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

    async def handle(self, _request: web.Request) -> web.Response:
        if not self._state.fenced:
            return error_response(400, "NOT_FENCED")
        s = self._settings()
        pod = s.instance.podName
        status = s.cluster.status
        if status.get("targetPrimary") != pod or status.get("currentPrimary") != pod:
            return error_response(400, "NOT_EXPECTED_PRIMARY")
        try:
            values, _ = await controldata.read(s)
        except Exception as exc:
            return plain_error(500, str(exc).strip() or type(exc).__name__)
        segment = values.get(REDO_WAL_KEY, "")
        if not _SEGMENT.match(segment):
            return error_response(400, "COULD_NOT_PARSE_REDOWAL_FILE")
        async with self._lock:  # two concurrent calls would fight over one link
            return await self._archive_partial(s.pgdata / "pg_wal", segment)

    async def _archive_partial(self, pg_wal: Path, segment: str) -> web.Response:
        source, partial = pg_wal / segment, pg_wal / f"{segment}.partial"
        try:
            await asyncio.to_thread(os.link, source, partial)
        except OSError as exc:
            return error_response(400, "ERROR_WHILE_CREATING_SYMLINK", str(exc))
        try:
            await self._archive(partial)
        except Exception as exc:
            text = str(exc).strip() or type(exc).__name__
            return error_response(400, "ERROR_WHILE_EXECUTING_WAL_ARCHIVE", text)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(partial.unlink)
        log.event(_logger, "partial WAL segment archived", wal=f"{segment}.partial")
        return data_response(segment)
