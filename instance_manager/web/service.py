"""The web stack as one component for the supervisor: ``await WebServices(...).run()``.

It serves the status port (probes, ``/pg/status``, the operator API; TLS with certificate
reloading when ``instance.statusPortTLS``) and the local API on 127.0.0.1. A failure of the
status server ends ``run()`` (the supervisor then stops the instance: probes are vital); the
local API only logs and binds again later, since PostgreSQL does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from instance_manager import log
from instance_manager.backup.plugin import PluginBackups
from instance_manager.errors import ListenError, describe
from instance_manager.postgres.sql import Session
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.upgrade.install import ReexecRequest
from instance_manager.wal.partial import ArchiveFile
from instance_manager.web import routes
from instance_manager.web.liveness import Liveness
from instance_manager.web.local_api import LocalApi
from instance_manager.web.operator import OperatorApi
from instance_manager.web.probes import Checker
from instance_manager.web.server import build_app, build_local_app, serve
from instance_manager.web.tls import ServerTLS

_logger = log.get("web")
LOCAL_RETRY_SECONDS = 5.0


class WebServices:
    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        session: Session,
        *,
        archive: ArchiveFile | None = None,
        request_reexec: ReexecRequest | None = None,
        argv: list[str] | None = None,
        status_socket: socket.socket | None = None,
    ) -> None:
        self._settings = settings
        # Bound before PostgreSQL's launch; the start-up probes (early.py) answer on it.
        self._status_socket = status_socket
        self.checker = Checker(settings, state, session)
        self.liveness = Liveness(settings, state)
        self.operator = OperatorApi(
            settings,
            state,
            session,
            archive=archive,
            request_reexec=request_reexec,
            argv=argv,
        )
        self.backups = PluginBackups(settings)
        self.local = LocalApi(settings, self.backups, state.conditions, state.cache)
        self.tls: ServerTLS | None = None
        self.ready = asyncio.Event()  # the status port is listening

    async def run(self) -> None:
        """Serve until cancelled (or until the status server fails)."""
        inst = self._settings().instance
        context: ssl.SSLContext | None = None
        if inst.statusPortTLS:
            certs = self._settings().certificates_dir
            self.tls = ServerTLS(certs / "server.crt", certs / "server.key")
            context = await self.tls.start()
        status_app = build_app(self.checker, self.liveness, self.operator)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.operator.run())
                if inst.localPort:
                    tg.create_task(self._local(inst.localPort))
                if self.tls is not None:
                    tg.create_task(self.tls.watch())
                await serve(
                    status_app,
                    inst.statusHost,
                    inst.statusPort,
                    context,
                    started=self.ready,
                    sock=self._status_socket,
                )
        finally:
            await self.close()
            await self.backups.close()

    async def _local(self, port: int) -> None:
        while True:
            try:
                app = build_local_app(self.local)  # an application serves one runner only
                await serve(app, routes.LOCAL_HOST, port, name="local API")
            except (ListenError, OSError) as exc:
                log.event(
                    _logger,
                    "local API cannot listen; retrying",
                    logging.ERROR,
                    port=port,
                    error=describe(exc),
                    seconds=LOCAL_RETRY_SECONDS,
                )
                await asyncio.sleep(LOCAL_RETRY_SECONDS)

    async def close(self) -> None:
        """Call before PostgreSQL stops: closes the backup session's connection."""
        await self.operator.close()
