"""Connections of the exporter: one per database, as ``cnpg_metrics_exporter``.

By default over the Unix socket (pg_ident maps the daemon's OS user to the role with peer
authentication). The connector is injectable: tests connect over TCP. Connections to the
built-in/default databases stay open between scrapes; the others are closed after each
collection so that a ``DROP DATABASE`` is never blocked by the exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from instance_manager.metrics.pipeline import Prepared
from instance_manager.settings import Settings

if TYPE_CHECKING:
    import psycopg

    Connection = psycopg.AsyncConnection[tuple[Any, ...]]
else:
    Connection = Any

Connector = Callable[[str], Awaitable["Connection"]]
Lane = tuple[str, int]  # database name, connection number

EXPORTER_USER = "cnpg_metrics_exporter"
APPLICATION_NAME = "cnpg_metrics_exporter"
CONNECT_TIMEOUT = 3.0  # a local socket answers in milliseconds; longer means trouble
CLOSE_TIMEOUT = 1.0
# Server-side bound on one statement, so that an abandoned query stops on its own.
STATEMENT_TIMEOUT_MS = 10_000


def unix_connector(settings: Callable[[], Settings]) -> Connector:
    async def connect(dbname: str) -> Connection:
        import psycopg

        s = settings()
        return await psycopg.AsyncConnection.connect(
            host=str(s.run_dir),
            port=s.instance.port,
            user=EXPORTER_USER,
            dbname=dbname,
            application_name=APPLICATION_NAME,
            sslmode="disable",
            autocommit=True,
            connect_timeout=max(1, int(CONNECT_TIMEOUT)),
        )

    return connect


class Connections:
    """Open connections by lane (database, number). Used by one collection at a time."""

    def __init__(self, connector: Connector, session: bytes = b"SELECT 1") -> None:
        self.connector = connector
        self.session = session  # statements setting up each new session
        self._open: dict[Lane, Connection] = {}
        # Whether a connection's session is known to be as ``session`` left it.
        self.clean: dict[Lane, bool] = {}
        # Names of the statements prepared by the pipeline on each connection.
        self.prepared: dict[Lane, Prepared] = {}
        self.paused = False  # during a planned outage: no new connection

    async def get(self, lane: Lane) -> Connection:
        if self.paused:
            raise ConnectionRefusedError("PostgreSQL is being stopped or restarted")
        conn = self._open.get(lane)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._open.pop(lane, None)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            conn = await self.connector(lane[0])
            try:
                await conn.set_autocommit(True)
                await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}".encode())
                await conn.execute(self.session)
            except BaseException:
                await _close(conn)
                raise
        self._open[lane] = conn
        self.clean[lane] = True
        self.prepared[lane] = Prepared()
        return conn

    def current(self, lane: Lane) -> Connection | None:
        return self._open.get(lane)

    async def drop(self, lane: Lane) -> None:
        """Forget a connection whose state is unknown (timeout, error): close it."""
        conn = self._open.pop(lane, None)
        self.clean.pop(lane, None)
        self.prepared.pop(lane, None)
        if conn is not None:
            await _close(conn)

    async def keep_only(self, databases: set[str]) -> None:
        """Close the connections to every other database."""
        for lane in [lane for lane in self._open if lane[0] not in databases]:
            await self.drop(lane)

    async def close(self) -> None:
        await self.keep_only(set())


async def _close(conn: Connection) -> None:
    """Close; a statement still running is cancelled first, so that it does not go on
    in the server (or hold up a smart shutdown) after we gave up on it."""
    import psycopg

    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                await conn.cancel_safe(timeout=CLOSE_TIMEOUT)
            await conn.close()
