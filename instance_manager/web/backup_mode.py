"""``/pg/mode/backup``: a non-exclusive backup driven over HTTP (CNPG's backup mode).

Phases: starting -> started -> closing -> completed. POST opens a dedicated connection and
answers at once; in the background a *temporary* physical slot named after the backup is
created (it keeps the WAL from the backup's start until the session ends) and
``pg_backup_start`` runs. PUT stops it in the background; GET reports the phase, the LSNs
and, once completed, the backup label and tablespace map (base64).

One request (or background step) at a time: while one runs, every call answers 422
``ANOTHER_REQUEST_IN_PROGRESS`` (the operator retries). A janitor closes a session whose
connection died, and every session is closed before PostgreSQL stops.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from instance_manager import log
from instance_manager.postgres import sql as pgsql
from instance_manager.settings import Settings
from instance_manager.web.jsonapi import (
    RequestError,
    data_response,
    error_response,
    json_response,
    read_object,
)

if TYPE_CHECKING:
    import psycopg

_logger = log.get("backup")
BUSY = "ANOTHER_REQUEST_IN_PROGRESS"
# pg_backup_start waits for a checkpoint: a spread one lasts up to checkpoint_timeout x
# checkpoint_completion_target (4.5 min by default). pg_backup_stop with waitForArchive waits
# for the last segment to be archived. Generous bounds: these are not interactive calls.
START_TIMEOUT = 3600.0
STOP_TIMEOUT = 3600.0
CONNECT_TIMEOUT = 10.0
PING_TIMEOUT = 5.0
JANITOR_INTERVAL = 60.0  # CNPG's: how often a session's connection is checked
_SLOT_INVALID = re.compile(r"[^a-z0-9_]")

START_FIELDS: dict[str, type] = {
    "immediateCheckpoint": bool,
    "waitForArchive": bool,
    "backupName": str,
}
STOP_FIELDS: dict[str, type] = {"backupName": str}


def slot_name(backup_name: str) -> str:
    return _SLOT_INVALID.sub("_", backup_name)


@dataclass
class Session:
    """One backup: its connection, options, progress and first error."""

    conn: psycopg.AsyncConnection[Any]
    backup_name: str
    immediate_checkpoint: bool
    wait_for_archive: bool
    phase: str = "starting"
    begin_lsn: str = ""
    end_lsn: str = ""
    label_file: bytes = b""
    spcmap_file: bytes = b""
    error: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        """BackupResultData, with Go's omitempty and []byte as base64."""
        out: dict[str, Any] = {
            "beginLSN": self.begin_lsn,
            "endLSN": self.end_lsn,
            "labelFile": base64.b64encode(self.label_file).decode(),
            "spcmapFile": base64.b64encode(self.spcmap_file).decode(),
            "backupName": self.backup_name,
            "phase": self.phase,
        }
        return {k: v for k, v in out.items() if v}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.close()


class BackupMode:
    def __init__(
        self,
        settings: Callable[[], Settings],
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self._settings = settings
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.current: Session | None = None
        # A request or a background step (start, stop) holds the backup session.
        self.busy = False

    # -- HTTP --
    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "POST", "PUT"):
            return error_response(405, "METHOD_NOT_ALLOWED", f"{request.method} not allowed")
        if self.busy:
            return error_response(422, BUSY)
        self.busy = True
        handed_over = False
        try:
            if request.method == "GET":
                return self._status()
            body = await read_object(
                request, START_FIELDS if request.method == "POST" else STOP_FIELDS
            )
            if request.method == "POST":
                response, step = await self._start(body)
            else:
                response, step = await self._stop(body)
            if step is not None:
                self._background(step)  # keeps the lock until the step is done
                handed_over = True
            return response
        except RequestError as exc:
            return exc.response()
        finally:
            if not handed_over:
                self.busy = False

    def _status(self) -> web.Response:
        session = self.current
        if session is None:
            return data_response({})
        body: dict[str, Any] = {"data": session.data()}
        if session.error:
            body["error"] = {"code": "BACKUP_STATUS_CONTAINS_ERROR", "message": session.error}
        return json_response(200, body)

    async def _start(
        self, body: dict[str, Any]
    ) -> tuple[web.Response, Coroutine[Any, Any, None] | None]:
        if self.current is not None:
            log.event(
                _logger, "closing the previous backup session", backup=self.current.backup_name
            )
            await self.current.close()
            self.current = None
        try:
            conn = await pgsql.connect(self._settings(), timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            return error_response(422, "CANNOT_INITIALIZE_CONNECTION", str(exc).strip()), None
        session = Session(
            conn,
            body.get("backupName", ""),
            body.get("immediateCheckpoint", False),
            body.get("waitForArchive", False),
        )
        self.current = session
        log.event(_logger, "backup session opened", backup=session.backup_name)
        # CNPG answers with the data wrapped twice ({"data": {"data": ...}}): kept as is.
        return data_response({"data": session.data()}), self._run_start(session)

    async def _stop(
        self, body: dict[str, Any]
    ) -> tuple[web.Response, Coroutine[Any, Any, None] | None]:
        session = self.current
        if session is None:
            return error_response(400, "NO_ONGOING_BACKUP"), None
        if session.backup_name != body.get("backupName", ""):
            return error_response(
                422, "NOT_CURRENT_RUNNING_BACKUP", f"Phase is: {session.phase}"
            ), None
        if session.error:
            await session.close()
            return error_response(422, "BACKUP_FAILED", session.error), None
        if session.phase == "closing":
            return data_response({"data": session.data()}), None
        if session.phase != "started":
            return error_response(
                422, "CANNOT_CLOSE_NOT_STARTED", f"Phase is: {session.phase}"
            ), None
        session.phase = "closing"
        return data_response({"data": session.data()}), self._run_stop(session)

    # -- background steps (each holds the request lock until it ends) --
    def _background(self, step: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await step
            finally:
                self.busy = False

        task = asyncio.get_running_loop().create_task(run())
        if self.current is not None:
            self.current.tasks.append(task)

    async def _run_start(self, session: Session) -> None:
        try:
            async with asyncio.timeout(self.start_timeout):
                await session.conn.execute(
                    "SELECT pg_catalog.pg_create_physical_replication_slot("
                    "slot_name => %s, immediately_reserve => true, temporary => true)",
                    (slot_name(session.backup_name),),
                )
                params = (session.backup_name, session.immediate_checkpoint)
                cursor = await session.conn.execute(_start_query(session), params)
                row = await cursor.fetchone()
            session.begin_lsn = str(row[0]) if row else ""
            session.phase = "started"
            log.event(_logger, "backup started", backup=session.backup_name, lsn=session.begin_lsn)
        except Exception as exc:
            await self._fail(session, "while starting the backup", exc)

    async def _run_stop(self, session: Session) -> None:
        try:
            async with asyncio.timeout(self.stop_timeout):
                row = await (
                    await session.conn.execute(_stop_query(session), (session.wait_for_archive,))
                ).fetchone()
            if row is None:
                raise RuntimeError("pg_backup_stop returned no row")
            session.end_lsn = str(row[0])
            session.label_file = _as_bytes(row[1])
            session.spcmap_file = _as_bytes(row[2])
            session.phase = "completed"
            log.event(_logger, "backup stopped", backup=session.backup_name, lsn=session.end_lsn)
        except Exception as exc:
            await self._fail(session, "while stopping the backup", exc)
        finally:
            await session.close()

    @staticmethod
    async def _fail(session: Session, what: str, exc: BaseException) -> None:
        text = str(exc).strip() or type(exc).__name__
        session.error = f"{what}: {text}"
        log.event(_logger, "backup failed", logging.ERROR, backup=session.backup_name, error=text)
        await session.close()

    # -- housekeeping --
    async def janitor(self, interval: float = JANITOR_INTERVAL) -> None:
        """Until cancelled: close a session whose connection is gone or that failed."""
        while True:
            await asyncio.sleep(interval)
            await self.check_session()

    async def check_session(self) -> None:
        session = self.current
        if session is None or session.phase == "completed" or self.busy:
            return
        if not session.error:
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await session.conn.execute("SELECT 1")
                return
            except Exception as exc:
                session.error = f"error while pinging: {str(exc).strip() or type(exc).__name__}"
        log.event(
            _logger, "closing a stale backup session", logging.WARNING, backup=session.backup_name
        )
        await session.close()
        session.phase = "completed"

    async def close(self) -> None:
        """Before PostgreSQL stops: a smart shutdown would wait for this connection."""
        session = self.current
        if session is None:
            return
        for task in session.tasks:
            task.cancel()
        await asyncio.gather(*session.tasks, return_exceptions=True)
        await session.close()


def _start_query(session: Session) -> Any:
    if session.conn.info.server_version < 150000:
        return "SELECT pg_catalog.pg_start_backup(%s, %s, false)::text"
    return "SELECT pg_catalog.pg_backup_start(label => %s, fast => %s)::text"


def _stop_query(session: Session) -> Any:
    if session.conn.info.server_version < 150000:
        return "SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_stop_backup(false, %s)"
    return (
        "SELECT lsn::text, labelfile, spcmapfile "
        "FROM pg_catalog.pg_backup_stop(wait_for_archive => %s)"
    )


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]
