"""The instance reconciler of standalone cluster mode.

Fed by a cluster source (cluster/source.py): the shared Cluster document with the report
files beside it, or the Kubernetes API server. It delivers each new version of the Cluster
and the reports of the other instances (a peer's promotion is seen within ~100 ms). Each
pass builds the cluster view, takes at most one step toward it, and writes this instance's
report:

- document changed: the configuration is applied (the lifecycle's reload);
- a running primary that is no longer the target (or sees a newer primary): switchover
  stop, fast then immediate; the lifecycle then starts it again through prepare_data,
  which rejoins it as a standby;
- a standby that is the target: promotion;
- a standby whose primary_conninfo does not name the current primary: rewrite
  override.conf and reload (PostgreSQL 15 re-reads primary_conninfo without a restart);
- otherwise, parameters waiting for a restart: this instance's turn in the rolling restart
  (rolling.py). Then the local API's cache and the conditions are refreshed (cache.py).

Fencing comes first in every pass: the Cluster's ``cnpg.io/fencedInstances`` annotation
naming this instance (or "*") fences it, its removal lifts it. The annotation is also read
before the first start, so a fenced instance never starts PostgreSQL. The isolation check
(cluster/isolation.py) runs beside the passes and may fence a primary itself.

Before each start of PostgreSQL the lifecycle runs ``prepare_data`` (cluster/prepare.py):
join, rewind, or the standby files. The lifecycle stays the only owner of the postmaster:
this component only sends it commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from instance_manager import log
from instance_manager.cluster import cache, prepare, promote, rolling, standby, sync, view
from instance_manager.cluster.isolation import Isolation
from instance_manager.cluster.observe import Observed, observe
from instance_manager.cluster.replication import Replication
from instance_manager.cluster.view import ClusterView
from instance_manager.errors import SettingsError
from instance_manager.postgres import fencing, roles, shutdown
from instance_manager.postgres.lifecycle import Lifecycle
from instance_manager.settings import Settings

if TYPE_CHECKING:
    from instance_manager.cluster.source import ClusterSource

_logger = log.get()
# A pass runs at least this often: the report's LSNs and readiness stay fresh.
REPORT_INTERVAL = 1.0
# The last report, written on the way out, gets this long.
LAST_REPORT_TIMEOUT = 5.0


class Reconciler:
    def __init__(
        self,
        lifecycle: Lifecycle,
        source: ClusterSource,
        reload_settings: Callable[[], Settings],
        archive: Callable[[Path], Awaitable[None]],
    ) -> None:
        self.lifecycle = lifecycle
        self.state = lifecycle.state
        self.source = source
        self._reload_settings = reload_settings
        self.cluster = lifecycle.settings.cluster
        self._document_changed = False
        self._wake = asyncio.Event()
        self._written: tuple[tuple[object, ...], float] = ((), 0.0)  # decisive fields, when
        self._certificates_at = time.monotonic()  # the preparer wrote them before the start
        self._lease_wait = ""  # why a promotion waits for the primary Lease, as last logged
        me = lifecycle.settings.instance.podName
        self.claims = prepare.Claims(source.reports([me]).get(me), me)
        self.preparer = prepare.Preparer(lifecycle, self.current_view, self.claims, archive, source)
        self.replication = Replication(lifecycle, self.current_view)
        lifecycle.prepare_data = self.preparer.run
        lifecycle.recovery_settings = self.recovery_settings
        lifecycle.managed_parameters = self.replication.managed_parameters
        self._managed = self.replication.managed_parameters()
        self.roll = rolling.Roller(lifecycle, source)
        self.isolation = Isolation(lifecycle, source)
        self.state.cluster.enabled = True
        if fencing.annotated(self.cluster, lifecycle.settings.instance.podName):
            lifecycle.fence.add(fencing.ANNOTATION)  # before the first start

    # -- sources --
    def document_changed(self) -> None:
        """The source's watch (a new Cluster) and SIGHUP call this."""
        self._document_changed = True
        self._wake.set()
        self.preparer.changed.set()

    def reports_changed(self) -> None:
        self._wake.set()
        self.preparer.changed.set()

    def current_view(self) -> ClusterView:
        s = self.lifecycle.settings
        peers = self.source.peers(s)
        found = self.source.reports(sorted(peers))
        return view.build(self.cluster, s.instance.podName, peers, found)

    def recovery_settings(self) -> Mapping[str, str]:
        s = self.lifecycle.settings
        if not roles.is_standby(s.pgdata):
            return {}
        return standby.recovery_settings(s, self.current_view())

    # -- the loop --
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        watch = loop.create_task(self._watch())
        mirror = loop.create_task(self.replication.mirror.run())
        isolation = loop.create_task(self.isolation.run())
        for task in (watch, mirror, isolation):
            task.add_done_callback(_log_failure)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REPORT_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                await self.reconcile()
        finally:
            for task in (watch, mirror, isolation):
                task.cancel()
            await self._last_report()

    async def _last_report(self) -> None:
        """On the way out: not running, not ready (the claim stays for the next start)."""
        report = dataclasses.replace(self.claims.report(Observed()), fenced=self.state.fenced)
        try:
            async with asyncio.timeout(LAST_REPORT_TIMEOUT):
                await self.source.write_report(report)
        except (OSError, TimeoutError) as exc:
            log.event(_logger, "cannot write the report", logging.WARNING, error=str(exc))

    async def reconcile(self) -> None:
        """One pass: a step at most, then the report. A failed step is retried next pass."""
        try:
            if self._document_changed:
                self._document_changed = False
                self._apply_document()
            await self._certificates()
            current = self.current_view()
            self._show(current)
            await self._fence()
            await self._step(current)
            cache.refresh(self.state, self.cluster, current)
        except Exception as exc:
            error = " ".join(str(exc).split()) or type(exc).__name__
            log.event(_logger, "reconcile step failed", logging.WARNING, error=error)
            if error != self.state.cluster.last_error:  # one Event per new failure
                await self._event("ReconcileFailed", error)
            self.state.cluster.last_error = error
        await self.write_report()

    async def _event(self, reason: str, message: str) -> None:
        try:
            async with asyncio.timeout(LAST_REPORT_TIMEOUT):
                await self.source.event(reason, message, warning=True)
        except TimeoutError:
            log.event(_logger, "cannot emit an Event in time", logging.WARNING, reason=reason)

    def _apply_document(self) -> None:
        try:
            new = self._reload_settings()
        except SettingsError as exc:
            log.event(
                _logger,
                "new settings refused; keeping the running ones",
                logging.ERROR,
                error=str(exc),
            )
            return
        changed_spec = (
            new.cluster.spec != self.cluster.spec or new.cluster.metadata != self.cluster.metadata
        )
        self.cluster = new.cluster
        self.preparer.changed.set()
        if changed_spec:
            self.lifecycle.request_reload(new)
            self.replication.configure(new.cluster.spec.replicationSlots)
        else:  # the status only (operator's fingerprint, architectures, certificates...)
            self.lifecycle.use_cluster(new.cluster)

    async def _certificates(self) -> None:
        """Sources whose TLS material changes under us (Kubernetes Secrets) are asked
        again every ``certificate_interval`` s; new files reload PostgreSQL (the status
        and metrics ports reload theirs from the directory by themselves)."""
        interval = self.source.certificate_interval
        if interval is None or time.monotonic() - self._certificates_at < interval:
            return
        self._certificates_at = time.monotonic()
        if await self.source.ensure_certificates(self.lifecycle.settings):
            log.event(_logger, "certificates changed: reloading PostgreSQL")
            self._reapply()

    async def _fence(self) -> None:
        """Follow the document's fencing annotation."""
        wanted = fencing.annotated(self.cluster, self.lifecycle.settings.instance.podName)
        if wanted and fencing.ANNOTATION not in self.lifecycle.fence.reasons:
            await self.lifecycle.fence_on(fencing.ANNOTATION)
        elif not wanted:
            self.lifecycle.fence_off(fencing.ANNOTATION)

    def _show(self, current: ClusterView) -> None:
        self.state.cluster.target_primary = current.target_primary
        self.state.cluster.current_primary = current.current_primary or ""

    async def _step(self, current: ClusterView) -> None:
        if not self.state.postmaster_running or self.state.stopping:
            return
        s = self.lifecycle.settings
        if self.state.is_primary:
            if not current.i_am_target or current.other_is_current:
                log.event(
                    _logger,
                    "no longer the target primary: switchover",
                    target=current.target_primary,
                )
                await self.lifecycle.switchover_stop()
                await self.source.release_primary()
                return
            if await self._lease_lost():
                await self.lifecycle.switchover_stop()  # it comes back through prepare_data
                return
            await self.claims.claim()
            await self.replication.primary_step(current)
            self._apply_managed()
            await self._publish_quorum()
            await self.roll.step(current, self.cluster.spec)
            return
        if current.i_am_target:
            if not await self._lease_for_promotion():
                return
            failover = current.current_primary != current.me
            timeout = float(s.cluster.spec.switchoverDelay) + shutdown.IMMEDIATE_MIN
            await promote.promote(self.lifecycle, failover, timeout, self._claim_now)
            return
        await self.source.release_primary()  # taken for a promotion no longer wanted
        wanted = standby.recovery_settings(s, current)
        if wanted and not standby.following(s.pgdata, wanted):
            log.event(_logger, "following the new primary", primary=current.current_primary)
            primary = current.current_primary
            assert primary is not None
            await prepare.ensure_slot_quietly(s, current.peer(primary))
            self._reapply()
            return
        await self.roll.step(current, self.cluster.spec)

    async def _lease_lost(self) -> bool:
        """Running as primary: the primary Lease (Kubernetes mode) is another instance's,
        or could not be renewed in time. A daemon restarted under a running primary takes
        it here; an API server that does not answer is no proof of a loss."""
        if await self.source.acquire_primary():
            return False
        why = self.source.primary_lost()
        if why:
            log.event(
                _logger,
                "primary Lease lost: no longer accepting writes",
                logging.WARNING,
                reason=why,
            )
        return bool(why)

    async def _lease_for_promotion(self) -> bool:
        """The target standby holds the primary Lease; else it waits (next pass)."""
        if await self.source.acquire_primary():
            self._lease_wait = ""
            return True
        why = self.source.primary_lost() or "the primary Lease cannot be taken yet"
        if why != self._lease_wait:
            self._lease_wait = why
            log.event(_logger, "not promoting yet: waiting for the primary Lease", reason=why)
        return False

    async def _publish_quorum(self) -> None:
        """``failoverQuorum``: the synchronous standby set in force, to the source."""
        synchronous = self.cluster.spec.postgresql.synchronous
        if synchronous is None or not synchronous.failoverQuorum:
            return
        row = await self.lifecycle.session.fetchone(sync.METADATA_QUERY)
        await self.source.publish_quorum(str(row[0]) if row and row[0] else None)

    def _apply_managed(self) -> None:
        """Reload when synchronous_standby_names should change (standbys came or went)."""
        managed = self.replication.managed_parameters()
        if managed != self._managed:
            self._managed = managed
            log.event(_logger, "synchronous standbys changed", parameters=managed)
            self._reapply()

    def _reapply(self) -> None:
        """Write and reload the configuration of the Cluster in hand (no file re-read)."""
        current = self.lifecycle.settings
        self.lifecycle.request_reload(dataclasses.replace(current, cluster=self.cluster))

    async def _claim_now(self) -> None:
        await self.claims.claim(new=True)
        await self.write_report()
        if self.claims.since is not None:
            await self.source.promoted(self.claims.me, self.claims.since)

    async def write_report(self) -> None:
        s = self.lifecycle.settings
        observed = await observe(self.lifecycle)
        self.state.cluster.role = observed.role
        self.state.cluster.replication = observed.replication
        report = dataclasses.replace(self.claims.report(observed), fenced=self.state.fenced)
        report = self.roll.report(report, observed)
        # What the others decide on is written at once; LSNs and "updated" once a
        # REPORT_INTERVAL: every write wakes the other instances, which write in turn.
        decisive = report.decisive()
        due = time.monotonic() - self._written[1] >= REPORT_INTERVAL
        if decisive == self._written[0] and not due:
            return
        try:
            await self.source.write_report(report)
            self._written = (decisive, time.monotonic())
        except OSError as exc:
            log.event(
                _logger,
                "cannot write the report",
                logging.WARNING,
                error=str(exc),
                pod=s.instance.podName,
            )

    async def _watch(self) -> None:
        me = self.lifecycle.settings.instance.podName

        def cluster_changed() -> None:
            log.event(_logger, self.source.changed_message, source=self.source.description)
            self.document_changed()

        await self.source.watch(me, cluster_changed, self.reports_changed)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A helper task that died: the passes go on once a REPORT_INTERVAL without it."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.event(_logger, "cluster watch failed", logging.ERROR, error=str(exc) or repr(exc))
