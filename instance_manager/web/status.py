"""``/pg/status``: CNPG's PostgresqlStatus of this instance, computed as CNPG computes it.

Concurrent requests share work: a request joins the next reading that *starts after it
arrived* (never an older one), so at most one statement runs at a time whatever the load,
on the lifecycle's session (closed by the lifecycle before a shutdown), and every caller
still gets a reading at least as fresh as its request. The JSON is encoded once per reading.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instance_manager import __version__
from instance_manager.postgres import controldata
from instance_manager.postgres.sql import Session
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.upgrade.build import instance_arch, running_hash
from instance_manager.web import status_sql

# Bound on the status statement: it reads catalog views only and answers in milliseconds.
STATUS_QUERY_TIMEOUT = 5.0
CONTROLDATA_TIMEOUT = 10.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str


def _has_standby_signal(pgdata: Path) -> bool:
    return (pgdata / "standby.signal").exists() or (pgdata / "recovery.conf").exists()


class StatusReader:
    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        session: Session,
        upgrading: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._state = state
        self._session = session
        self._upgrading = upgrading
        self._hash: str | None = None
        self._running: asyncio.Task[Reply] | None = None
        self._next: asyncio.Future[Reply] | None = None

    # -- sharing readings between concurrent requests --
    async def reply(self) -> Reply:
        loop = asyncio.get_running_loop()
        if self._running is None:
            future: asyncio.Future[Reply] = loop.create_future()
            self._launch(future)
        else:
            if self._next is None:
                self._next = loop.create_future()
            future = self._next
        return await asyncio.shield(future)

    def _launch(self, future: asyncio.Future[Reply]) -> None:
        task = asyncio.get_running_loop().create_task(self._compute())
        self._running = task

        def done(finished: asyncio.Task[Reply]) -> None:
            if finished.cancelled():
                future.cancel()
            elif (error := finished.exception()) is not None:
                future.set_exception(error)
                future.exception()  # retrieved: callers that left must not cause a warning
            else:
                future.set_result(finished.result())
            self._running = None
            if self._next is not None:
                waiting, self._next = self._next, None
                self._launch(waiting)

        task.add_done_callback(done)

    # -- one reading --
    async def _compute(self) -> Reply:
        values: dict[str, Any] = {}
        try:
            values = await self.read()
        except Exception as exc:
            if not self._state.might_be_unavailable:
                return Reply(500, (_first_line(exc) + "\n").encode(), "text/plain")
            # An outage we caused (restart, shutdown): report what we know, with the error.
            values = values or self._base()
            await self._identify(values)
            values["mightBeUnavailableMaskedError"] = _first_line(exc)
            values["isPrimary"] = not await asyncio.to_thread(
                _has_standby_signal, self._settings().pgdata
            )
        shaped = status_sql.shape(values)
        if self._state.cluster.enabled:  # standalone cluster mode: role, primaries, join
            shaped["cluster"] = self._state.cluster.as_dict()
        body = json.dumps(shaped, separators=(",", ":")).encode()
        return Reply(200, body, "application/json")

    def _base(self) -> dict[str, Any]:
        return {
            "pod": status_sql.pod(self._settings().instance.podName),
            "instanceManagerVersion": __version__,
            "mightBeUnavailable": self._state.might_be_unavailable,
            "configurationReloadError": self._state.reload_error,
            "configurationReloadFailures": self._state.reload_failures,
        }

    async def read(self) -> dict[str, Any]:
        """The status fields; raises when PostgreSQL cannot be asked."""
        settings = self._settings()
        values = self._base()
        if getattr(self._state, "pg_rewind_running", False):
            values["isPgRewindRunning"] = True
            return values
        row = await self._session.fetchone(status_sql.STATUS_QUERY, timeout=STATUS_QUERY_TIMEOUT)
        if row is None or not isinstance(row[0], dict):
            raise RuntimeError("the status query returned nothing")
        status_sql.fill(values, row[0], settings.cluster.metadata.name)
        if values["pendingRestart"]:
            await self._check_decrease(values, settings)
        await self._identify(values)
        values["isInstanceManagerUpgrading"] = self._upgrading()
        return values

    async def _identify(self, values: dict[str, Any]) -> None:
        """What identifies this daemon, known whether or not PostgreSQL answers."""
        values["instanceArch"] = instance_arch()
        values["executableHash"] = await self.executable_hash()
        values["sessionID"] = self._state.session_id

    async def _check_decrease(self, values: dict[str, Any], settings: Settings) -> None:
        row = await self._session.fetchone(status_sql.DECREASED_QUERY, timeout=STATUS_QUERY_TIMEOUT)
        found = row[0] if row is not None and isinstance(row[0], dict) else {}
        decreased = {str(k): int(v) for k, v in found.items()}
        if not decreased:
            return
        values["pendingRestartForDecrease"] = True
        if values["isPrimary"]:
            return
        # A standby must not restart with lower values before the primary's new ones reach
        # it through the WAL (pg_controldata shows them). The designated primary of a replica
        # cluster is in recovery too: it takes this path like any standby.
        parsed, _ = await controldata.read(settings, timeout=CONTROLDATA_TIMEOUT)
        values["pendingRestart"] = status_sql.all_decreases_applied(decreased, parsed)

    async def executable_hash(self) -> str:
        if self._hash is None:
            self._hash = await asyncio.to_thread(running_hash)
        return self._hash


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
