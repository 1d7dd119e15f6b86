"""Promotion of this standby when the view names it the target primary (CNPG's handlePromotion).

On a failover or a switchover (``currentPrimary`` is another instance) the standby first
waits until its WAL receiver has stopped: the former primary is down and everything it
sent has arrived. Then the lifecycle promotes PostgreSQL (``pg_promote``, standby.signal
gone), a CHECKPOINT follows (a later pg_rewind of the former primary needs it), the caller
reports the claim, and the other client sessions are ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from instance_manager import log
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.lifecycle import Lifecycle

_logger = log.get()
RECEIVER_POLL = 0.05
RECEIVER_QUERY = "SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver"
TERMINATE_QUERY = """
SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid()
"""
CHECKPOINT_TIMEOUT = 600.0


class ReceiverStillRunning(Exception):
    """The WAL receiver did not stop in time: the former primary may still be up."""


async def wait_receiver_stopped(lifecycle: Lifecycle, timeout: float) -> None:
    started = time.monotonic()
    conn = await pgsql.connect(lifecycle.settings)
    async with conn:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    row = await (await conn.execute(RECEIVER_QUERY)).fetchone()
                    if row is not None and row[0] == 0:
                        break
                    await asyncio.sleep(RECEIVER_POLL)
        except TimeoutError:
            raise ReceiverStillRunning(f"the WAL receiver still runs after {timeout:g} s") from None
    waited = round(time.monotonic() - started, 3)
    log.event(_logger, "WAL receiver stopped", seconds=waited)


async def promote(
    lifecycle: Lifecycle,
    failover: bool,
    receiver_timeout: float,
    claim: Callable[[], Awaitable[None]],
) -> None:
    """Promote this standby; ``claim`` reports currentPrimary before sessions are ended."""
    started = time.monotonic()
    log.event(_logger, "promoting this instance", failover=failover)
    if failover:
        await wait_receiver_stopped(lifecycle, receiver_timeout)
    await lifecycle.promote()
    try:
        conn = await pgsql.connect(lifecycle.settings)
        async with conn:
            async with asyncio.timeout(CHECKPOINT_TIMEOUT):
                await conn.execute("CHECKPOINT")
            await claim()
            row = await (await conn.execute(TERMINATE_QUERY)).fetchone()
    except Exception as exc:
        await claim()  # PostgreSQL runs as a primary now, whatever failed after
        log.event(_logger, "after-promotion steps failed", logging.WARNING, error=str(exc))
        row = None
    log.event(
        _logger,
        "this instance is the primary",
        seconds=round(time.monotonic() - started, 3),
        sessions_ended=row[0] if row else None,
    )
