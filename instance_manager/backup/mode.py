"""CNPG's backup mode: a non-exclusive backup that an external tool copies while it is open.

Phases: starting -> started -> closing -> completed. ``start`` opens a dedicated connection
and returns at once; in the background a *temporary* physical slot named after the backup
is created (it keeps the WAL from the backup's start until the session ends) and
``pg_backup_start`` runs. ``stop`` runs ``pg_backup_stop`` in the background; once completed
the session holds the LSNs, the backup label and the tablespace map.

One request (or background step) at a time: ``exclusive`` runs a request's work holding the
session, and refuses with ``ANOTHER_REQUEST_IN_PROGRESS`` while another holds it (the
operator retries). A janitor closes a session whose connection died, and every session is
closed before PostgreSQL stops. Refusals carry CNPG's error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from instance_manager import log
from instance_manager.postgres import sql as pgsql
from instance_manager.settings import Settings

if TYPE_CHECKING:
    import psycopg

_logger = log.get("backup")
T = TypeVar("T")
BUSY = "ANOTHER_REQUEST_IN_PROGRESS"
NO_ONGOING_BACKUP = "NO_ONGOING_BACKUP"
# pg_backup_start waits for a checkpoint: a spread one lasts up to checkpoint_timeout x
# checkpoint_completion_target (4.5 min by default). pg_backup_stop with waitForArchive waits
# for the last segment to be archived. Generous bounds: these are not interactive calls.
START_TIMEOUT = 3600.0
STOP_TIMEOUT = 3600.0
CONNECT_TIMEOUT = 10.0
PING_TIMEOUT = 5.0
JANITOR_INTERVAL = 60.0  # CNPG's: how often a session's connection is checked
_SLOT_INVALID = re.compile(r"[^a-z0-9_]")


class Refused(Exception):
    """A request the backup session cannot serve: CNPG's error ``code`` and a message."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


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
        self._handed_over = False

    async def exclusive(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run one request's ``work`` holding the session; Refused(BUSY) while it is held.
        A background step that ``work`` starts keeps holding it until the step ends."""
        if self.busy:
            raise Refused(BUSY)
        self.busy = True
        self._handed_over = False
        try:
            return await work()
        finally:
            if not self._handed_over:
                self.busy = False

    async def start(
        self, backup_name: str, immediate_checkpoint: bool, wait_for_archive: bool
    ) -> Session:
        """Close any previous session, open a new one; the backup starts in the background."""
        if self.current is not None:
            log.event(
                _logger, "closing the previous backup session", backup=self.current.backup_name
            )
            await self.current.close()
            self.current = None
        try:
            conn = await pgsql.connect(self._settings(), timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            raise Refused("CANNOT_INITIALIZE_CONNECTION", str(exc).strip()) from exc
        session = Session(conn, backup_name, immediate_checkpoint, wait_for_archive)
        self.current = session
        log.event(_logger, "backup session opened", backup=session.backup_name)
        self._background(self._run_start(session))
        return session

    async def stop(self, backup_name: str) -> Session:
        """Stop the started backup ``backup_name`` in the background (already closing: no-op)."""
        session = self.current
        if session is None:
            raise Refused(NO_ONGOING_BACKUP)
        if session.backup_name != backup_name:
            raise Refused("NOT_CURRENT_RUNNING_BACKUP", f"Phase is: {session.phase}")
        if session.error:
            await session.close()
            raise Refused("BACKUP_FAILED", session.error)
        if session.phase == "closing":
            return session
        if session.phase != "started":
            raise Refused("CANNOT_CLOSE_NOT_STARTED", f"Phase is: {session.phase}")
        session.phase = "closing"
        self._background(self._run_stop(session))
        return session

    # -- background steps (each holds the session until it ends) --
    def _background(self, step: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                await step
            finally:
                self.busy = False

        self._handed_over = True
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
            await session.close()  # its temporary slot goes with the session
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
