"""A single instance (no peers): its pending restarts and its cache, without a reconciler.

Once a second: the local API's cache and the ContinuousArchiving condition are refreshed
(cache.py), and a parameter waiting for a restart is applied by restarting PostgreSQL in
place (fast, then immediate, as the switchover stop; the lifecycle starts it again at once).
``primaryUpdateStrategy: supervised`` leaves the restart to a person (restart the instance
manager, or ``pg_ctl restart``); /pg/status shows ``pendingRestart`` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from instance_manager import log
from instance_manager.cluster import cache
from instance_manager.postgres.lifecycle import Lifecycle

_logger = log.get()
INTERVAL = 1.0
QUERY_TIMEOUT = 2.0
PENDING_QUERY = (
    "SELECT coalesce(string_agg(name, ',' ORDER BY name), '') "
    "FROM pg_catalog.pg_settings WHERE pending_restart"
)


class InPlace:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self._said = ""

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:  # the next pass tries again
                log.event(_logger, "in-place restart step failed", logging.WARNING, error=str(exc))
            await asyncio.sleep(INTERVAL)  # a period, not a wait for an event

    async def step(self) -> None:
        state = self.lifecycle.state
        cache.refresh(state, self.lifecycle.settings.cluster, None)
        if not state.postmaster_running or state.stopping or state.fenced:
            return
        row = None
        with contextlib.suppress(Exception):
            row = await self.lifecycle.session.fetchone(PENDING_QUERY, timeout=QUERY_TIMEOUT)
        pending = str(row[0]) if row and row[0] else ""
        if not pending:
            self._said = ""
            return
        if self.lifecycle.settings.cluster.spec.primaryUpdateStrategy == "supervised":
            if self._said != pending:
                self._said = pending
                log.event(
                    _logger,
                    "parameters wait for a restart: supervised, waiting for user action",
                    pending_restart=pending,
                )
            return
        log.event(_logger, "restarting in place to apply parameters", pending_restart=pending)
        await self.lifecycle.switchover_stop()
