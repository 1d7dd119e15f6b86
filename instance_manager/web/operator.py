"""The operator's endpoints on the status port.

``/pg/status`` is open (the Kubernetes API server proxies it for ``kubectl cnpg status``);
``/pg/controldata``, ``/pg/mode/backup``, ``/pg/archive/partial`` and ``/update`` require
the operator's pinned client certificate (web/auth.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from instance_manager.backup.mode import BackupMode
from instance_manager.postgres import controldata
from instance_manager.postgres.sql import Session
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.upgrade.install import ReexecRequest, Upgrader
from instance_manager.wal.partial import ArchiveFile, PartialArchiver
from instance_manager.web import routes
from instance_manager.web.auth import OperatorAuth
from instance_manager.web.backup_mode import BackupModeApi
from instance_manager.web.jsonapi import data_response, json_response, plain_error
from instance_manager.web.partial import ArchivePartial
from instance_manager.web.status import StatusReader
from instance_manager.web.update import UpdateApi

CONTROLDATA_TIMEOUT = 10.0


class OperatorApi:
    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        session: Session,
        *,
        archive: ArchiveFile | None = None,
        request_reexec: ReexecRequest | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self._settings = settings
        self.auth = OperatorAuth(settings)
        self.updater = Upgrader(settings, request_reexec, argv)
        self.update_api = UpdateApi(self.updater)
        self.status = StatusReader(settings, state, session, lambda: self.updater.upgrading)
        self.backup = BackupMode(settings)
        self.backup_api = BackupModeApi(self.backup)
        self.partial = ArchivePartial(PartialArchiver(settings, state, archive))

    def add_routes(self, app: web.Application) -> None:
        protect = self.auth.protect
        # Read-only: GET and HEAD, 405 with an Allow header otherwise.
        app.router.add_get(routes.PG_STATUS, self.pg_status)
        app.router.add_get(routes.PG_CONTROLDATA, protect(self.pg_controldata))
        app.router.add_route("*", routes.PG_MODE_BACKUP, protect(self.backup_api.handle))
        app.router.add_route("*", routes.PG_ARCHIVE_PARTIAL, protect(self.partial.handle))
        app.router.add_route("*", routes.UPDATE, protect(self.update_api.handle))

    async def pg_status(self, _request: web.Request) -> web.Response:
        reply = await self.status.reply()
        return web.Response(
            status=reply.status, body=reply.body, content_type=reply.content_type, charset="utf-8"
        )

    async def pg_controldata(self, _request: web.Request) -> web.Response:
        try:
            _, output = await controldata.read(self._settings(), timeout=CONTROLDATA_TIMEOUT)
        except Exception as exc:
            return plain_error(500, str(exc).strip() or type(exc).__name__)
        # Go's `json:"data,omitempty"`: no output, no field.
        return data_response(output) if output else json_response(200, {})

    async def run(self) -> None:
        """Background duties until cancelled: the backup session janitor."""
        await self.backup.janitor()

    async def close(self) -> None:
        """Before PostgreSQL stops: end the backup session (its connection would hold a
        smart shutdown back)."""
        await asyncio.shield(self.backup.close())
