"""How the lifecycle stops a postmaster, or stops watching one.

Every stop first closes the sessions that would hold a smart stop back (other components'
first, a backup's say, then the lifecycle's own), each bounded by BEFORE_STOP_TIMEOUT. Then:

- ``shutdown``: the staged stop of SIGTERM (shutdown.py), CHECKPOINT first on a primary;
- ``role_stop``: fast then immediate, for a switchover or a fence (roles.py);
- ``detach``: an online upgrade leaves PostgreSQL running and only stops watching it.

A postmaster left running by a daemon that died is found again through the pidfile
(``postmaster_to_stop``) and stopped before a fenced instance goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from instance_manager import log
from instance_manager.postgres import postmaster, roles, shutdown
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.postmaster import Postmaster
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

_logger = log.get()
# A component closing its sessions before a stop gets this long.
BEFORE_STOP_TIMEOUT = 5.0


def postmaster_to_stop(pm: Postmaster | None, settings: Settings) -> Postmaster | None:
    """``pm`` if it still runs. Without one (the first start did not get that far): a live
    postmaster serving PGDATA, which that start (failing early, writing the configuration,
    say) would have adopted."""
    if pm is not None:
        return pm if pm.running else None
    try:
        pid = postmaster.adopt_or_clean(settings)
    except OSError:
        return None
    return None if pid is None else Postmaster(pid, None)


class Stopper:
    """The stop sequences of the lifecycle. ``before_stop`` is the lifecycle's list of
    other components' session closers, shared, not copied: they may register later."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        session: pgsql.Session,
        escalate: asyncio.Event,
        before_stop: list[Callable[[], Awaitable[None]]],
    ) -> None:
        self._settings = settings
        self._state = state
        self._session = session
        self._escalate = escalate
        self._before_stop = before_stop

    async def shutdown(self, pm: Postmaster, started: float) -> shutdown.Stage | None:
        """The explicit stop sequence: not ready, close our sessions, staged stop. The
        stage that stopped it is returned; stopDelay counts from ``started``."""
        self._state.stopping = True
        self._state.might_be_unavailable = True
        await self.close_sessions()
        spec = self._settings().cluster.spec
        stop_plan = shutdown.plan(spec.smartShutdownTimeout, spec.stopDelay)
        stopped_by = await shutdown.stop(pm, stop_plan, self._escalate, self._checkpoint(), started)
        self._state.postmaster_running = False
        log.event(
            _logger,
            "PostgreSQL stopped",
            mode=stopped_by.name.lower() if stopped_by else None,
        )
        return stopped_by

    async def role_stop(self, pm: Postmaster, fence: bool) -> None:
        """A switchover's or a fence's stop: fast bounded by switchoverDelay, then immediate.
        Our session is reopened afterwards, for the PostgreSQL that starts next."""
        self._state.might_be_unavailable = True
        checkpoint = self._checkpoint()
        await self.close_sessions()
        try:
            await roles.switchover_stop(pm, self._settings(), self._escalate, checkpoint, fence)
        finally:
            self._session.reopen()
        self._state.postmaster_running = pm.running

    async def stop_left_running(self, pm: Postmaster) -> None:
        """A postmaster no session of ours knows (left by a daemon that died), fenced."""
        await roles.switchover_stop(pm, self._settings(), self._escalate, None, True)

    async def detach(self, pm: Postmaster) -> None:
        """Online upgrade: close our sessions and stop watching; PostgreSQL keeps running."""
        self._state.might_be_unavailable = True
        await self.close_sessions()
        for task in pm.tasks:
            task.cancel()
        log.event(_logger, "detached from the running postmaster", pid=pm.pid)

    async def close_sessions(self) -> None:
        """Ours and other components' (a backup): a smart stop waits for every session.
        Each gets BEFORE_STOP_TIMEOUT; a failure is logged and the stop goes on."""
        for close in [*self._before_stop, self._session.close]:
            try:
                async with asyncio.timeout(BEFORE_STOP_TIMEOUT):
                    await close()
            except Exception as exc:
                log.event(_logger, "closing a session failed", logging.WARNING, error=str(exc))

    def _checkpoint(self) -> Callable[[], Awaitable[None]] | None:
        """Only a primary's stop starts with a CHECKPOINT."""
        return self._run_checkpoint if self._state.is_primary else None

    async def _run_checkpoint(self) -> None:
        conn = await pgsql.connect(self._settings())
        async with conn:
            await conn.execute("CHECKPOINT")
