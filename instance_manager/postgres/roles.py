"""Role changes of the running postmaster, run by the lifecycle on the reconciler's command.

- promotion: ``pg_promote(wait => true)``, then ``standby.signal`` must be gone;
- the switchover stop of a former primary: CHECKPOINT, a fast stop bounded by
  ``spec.switchoverDelay``, then immediate (CloudNativePG's "fast then immediate"), while
  PostgreSQL's archiver drains the ready WAL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from instance_manager import log
from instance_manager.postgres import shutdown
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.postmaster import Postmaster
from instance_manager.settings import Settings

_logger = log.get()
# pg_promote's own wait, and then how long standby.signal may take to go (CNPG: 60 s).
PROMOTE_WAIT = 60
SIGNAL_GONE_TIMEOUT = 60.0
SIGNAL_POLL = 0.02


class PromotionFailed(Exception):
    """PostgreSQL did not leave recovery."""


def is_standby(pgdata: Path) -> bool:
    return (pgdata / "standby.signal").exists() or (pgdata / "recovery.conf").exists()


async def promote(settings: Settings) -> None:
    """Promote the standby and wait until it runs as a primary."""
    started = time.monotonic()
    conn = await pgsql.connect(settings, timeout=10.0)
    async with conn:
        cur = await conn.execute("SELECT pg_catalog.pg_promote(true, %s)", [PROMOTE_WAIT])
        row = await cur.fetchone()
    if not row or row[0] is not True:
        raise PromotionFailed(f"pg_promote did not finish within {PROMOTE_WAIT} s")
    try:
        async with asyncio.timeout(SIGNAL_GONE_TIMEOUT):
            # PostgreSQL's startup process removes the file; nothing to wait on but the file.
            while await asyncio.to_thread(is_standby, settings.pgdata):  # noqa: ASYNC110
                await asyncio.sleep(SIGNAL_POLL)
    except TimeoutError:
        raise PromotionFailed("standby.signal still exists after the promotion") from None
    log.event(_logger, "promoted", seconds=round(time.monotonic() - started, 3))


def switchover_plan(switchover_delay: int) -> shutdown.Plan:
    """Fast for ``switchover_delay`` seconds, then immediate; no smart stage."""
    reserve = shutdown.IMMEDIATE_MIN
    return shutdown.Plan(budget=switchover_delay + reserve, smart=0.0, reserve=reserve)


async def switchover_stop(
    pm: Postmaster,
    settings: Settings,
    escalate: asyncio.Event,
    checkpoint: Callable[[], Awaitable[None]] | None,
    fencing: bool = False,
) -> shutdown.Stage | None:
    """Fast bounded by switchoverDelay, then immediate: a switchover's or a fence's stop."""
    start_msg = (
        "fencing: stopping PostgreSQL"
        if fencing
        else "stopping the former primary for a switchover"
    )
    log.event(_logger, start_msg, pid=pm.pid)
    plan = switchover_plan(settings.cluster.spec.switchoverDelay)
    stage = await shutdown.stop(pm, plan, escalate, checkpoint)
    done_msg = "fenced: PostgreSQL stopped" if fencing else "former primary stopped"
    log.event(_logger, done_msg, mode=stage.name.lower() if stage else None)
    return stage
