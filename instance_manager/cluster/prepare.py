"""What a cluster-mode instance does to its data directory before PostgreSQL starts.

The lifecycle calls ``Preparer.run`` before each start. It decides from the cluster view:

- a live postmaster serves PGDATA: nothing, the lifecycle adopts it (the reconciler then
  deals with its role);
- empty PGDATA: initdb when this instance is the target primary and nobody else is
  primary; otherwise join (clone the current primary) once that primary accepts
  connections;
- a standby's data directory: start as a standby (override.conf follows the view);
- a primary's data directory: start as primary only when this instance is the target and
  no other instance claims to be primary. When another one does, rejoin as its standby
  (archive the ready WAL, pg_rewind, or a re-clone). Otherwise wait: a former primary
  never starts as primary while the switchover it is part of is not finished.

In Kubernetes mode a start as primary (an initdb too) also waits until this instance
holds the primary Lease (kube/lease.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from instance_manager import log
from instance_manager.cluster import demote, join, reports, standby
from instance_manager.cluster.observe import Observed
from instance_manager.cluster.reports import Report
from instance_manager.cluster.view import ClusterView
from instance_manager.postgres import bootstrap, postmaster, roles
from instance_manager.postgres.lifecycle import Lifecycle
from instance_manager.settings import Peer, Settings

if TYPE_CHECKING:
    from instance_manager.cluster.source import ClusterSource

_logger = log.get()
WAIT_FIRST = 0.05
WAIT_MAX = 1.0
PRIMARY_CHECK_TIMEOUT = 5.0


class Action(enum.Enum):
    START = "start"  # as the data directory says (or initdb)
    JOIN = "join"
    DEMOTE = "demote"
    WAIT = "wait"


def decide(pgdata: Path, current: ClusterView) -> Action:
    if not bootstrap.is_initialised(pgdata):
        if current.i_am_target and not current.other_is_current:
            return Action.START
        return Action.JOIN if current.other_is_current else Action.WAIT
    if roles.is_standby(pgdata):
        return Action.START
    if current.other_is_current:
        return Action.DEMOTE
    return Action.START if current.i_am_target else Action.WAIT


class Claims:
    """This instance's claim to be the primary, kept across restarts in its own report."""

    def __init__(self, previous: Report | None, me: str) -> None:
        self.me = me
        claimed = previous is not None and previous.currentPrimary == me
        self.since = previous.currentPrimaryTimestamp if previous and claimed else None

    async def claim(self, new: bool = False) -> None:
        if new or self.since is None:
            self.since = reports.now_rfc3339()
            log.event(_logger, "claiming the primary role", since=self.since)

    def drop(self) -> None:
        self.since = None

    def report(self, observed: Observed) -> Report:
        return Report(
            name=self.me,
            role=observed.role,
            currentPrimary=self.me if self.since else None,
            currentPrimaryTimestamp=self.since,
            timeLineID=observed.timeline,
            systemID=observed.system_id,
            ready=observed.ready,
            receivedLsn=observed.received_lsn,
            replayLsn=observed.replay_lsn,
            currentLsn=observed.current_lsn,
            updated=reports.now_rfc3339(),
        )


async def primary_ready(settings: Settings, peer: Peer) -> bool:
    """``peer`` accepts our replication user's connections and is not in recovery."""
    import psycopg

    params = standby.conninfo_params(settings, peer)
    try:
        async with asyncio.timeout(PRIMARY_CHECK_TIMEOUT):
            conn = await psycopg.AsyncConnection.connect(
                standby.conninfo_string(params), autocommit=True
            )
            async with conn:
                cur = await conn.execute("SELECT NOT pg_catalog.pg_is_in_recovery()")
                row = await cur.fetchone()
    except (psycopg.Error, OSError, TimeoutError):
        return False
    return bool(row and row[0])


async def ensure_slot_quietly(settings: Settings, peer: Peer) -> None:
    try:
        await join.ensure_slot(settings, peer)
    except Exception as exc:
        log.event(_logger, "cannot ensure the slot on the primary", logging.WARNING, error=str(exc))


class Preparer:
    def __init__(
        self,
        lifecycle: Lifecycle,
        view: Callable[[], ClusterView],
        claims: Claims,
        archive: Callable[[Path], Awaitable[None]],
        source: ClusterSource,
    ) -> None:
        self.source = source
        self.lifecycle = lifecycle
        self.view = view
        self.claims = claims
        self.archive = archive
        self.changed = asyncio.Event()  # the view may have changed: look again

    async def run(self) -> None:
        s = self.lifecycle.settings
        # The cluster's TLS files, before the configuration that names them is written.
        await self.source.ensure_certificates(s)
        if await asyncio.to_thread(postmaster.adopt_or_clean, s) is not None:
            return
        delay, said = WAIT_FIRST, ""
        while True:
            self.changed.clear()
            current = self.view()
            action = decide(s.pgdata, current)
            if action is Action.START:
                if roles.is_standby(s.pgdata):
                    self.claims.drop()
                    return
                if await self.source.acquire_primary():  # a primary, or initdb
                    return
            # An outage on purpose: the startup probe skips, /pg/status shows the progress.
            self.lifecycle.state.might_be_unavailable = True
            if action in (Action.JOIN, Action.DEMOTE) and await self._try(action, current):
                return
            why = f"{action.value}: primary {current.current_primary or 'unknown'}"
            if action is Action.START:
                why = f"start as primary: {self.source.primary_lost() or 'no primary Lease'}"
            if why != said:
                said = why
                log.event(_logger, "waiting before starting PostgreSQL", reason=why)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.changed.wait()
            delay = min(delay * 2, WAIT_MAX)

    async def _try(self, action: Action, current: ClusterView) -> bool:
        """``_act``; a failure (the primary went away mid-copy, the archive is down) is
        logged and tried again after the back-off instead of ending the daemon."""
        try:
            return await self._act(action, current)
        except Exception as exc:
            error = " ".join(str(exc).split())[-500:] or type(exc).__name__
            self.lifecycle.state.cluster.last_error = error
            log.event(_logger, f"{action.value} failed; retrying", logging.WARNING, error=error)
            return False

    async def _act(self, action: Action, current: ClusterView) -> bool:
        """Join or demote when the current primary is ready; True once done."""
        s = self.lifecycle.settings
        primary = current.current_primary
        assert primary is not None
        peer = current.peer(primary)
        if not await primary_ready(s, peer):
            return False
        cluster_state = self.lifecycle.state.cluster
        if action is Action.JOIN:
            await join.clone(s, primary, peer, cluster_state)
            self.claims.drop()
            return True
        await demote.archive_ready(s.pgdata, self.archive)
        await ensure_slot_quietly(s, peer)
        outcome = await demote.rewind(s, peer, self.lifecycle.state)
        if outcome is demote.Outcome.UNREACHABLE:
            return False
        if outcome is demote.Outcome.IMPOSSIBLE:
            log.event(_logger, "pg_rewind cannot help: cloning again", logging.WARNING)
            await asyncio.to_thread(demote.move_data_aside, s)
            await join.clone(s, primary, peer, cluster_state)
        else:
            demote.finish(s.pgdata)
        self.claims.drop()
        return True
