"""SQL access to the local instance over its Unix socket."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from instance_manager.process import preload
from instance_manager.settings import Settings

if TYPE_CHECKING:
    import psycopg

# psycopg is imported on first use, not at start-up: while PostgreSQL starts, a worker
# thread imports it (process/preload.py), which the loop's thread waits for first.

APPLICATION_NAME = "cnpg-instance-manager"


def conninfo(settings: Settings, dbname: str = "postgres", user: str = "postgres") -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        host=str(settings.run_dir),
        port=settings.instance.port,
        user=user,
        dbname=dbname,
        application_name=APPLICATION_NAME,
        sslmode="disable",
    )


async def connect(
    settings: Settings, dbname: str = "postgres", timeout: float = 5.0
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    await preload.wait()
    import psycopg

    async with asyncio.timeout(timeout):
        return await psycopg.AsyncConnection.connect(
            conninfo(settings, dbname), autocommit=True, connect_timeout=max(1, int(timeout))
        )


class Session:
    """One long-lived connection, re-opened on demand, closed before a shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._lock = asyncio.Lock()
        self.closed = False

    async def fetchone(self, query: str, timeout: float = 5.0) -> tuple[object, ...] | None:
        """Run ``query`` and return its first row; re-connects once if needed."""
        await preload.wait()
        import psycopg
        from psycopg import sql

        async with self._lock, asyncio.timeout(timeout):
            if self.closed:
                raise psycopg.OperationalError("the instance manager is shutting down")
            if self._conn is None or self._conn.closed:
                self._conn = await connect(self.settings, timeout=timeout)
            try:
                cur = await self._conn.execute(sql.SQL(query))  # type: ignore[arg-type,unused-ignore]
                return await cur.fetchone()
            except psycopg.OperationalError:
                await self._drop()
                raise

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def close(self) -> None:
        """Close for good (no reconnect): a smart shutdown waits for every session."""
        self.closed = True
        async with self._lock:
            await self._drop()

    def reopen(self) -> None:
        self.closed = False
