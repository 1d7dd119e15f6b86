"""HA slots and synchronous standbys, driven by the reconciler (cluster/slots.py, sync.py).

- On the primary: ``synchronous_standby_names`` (and its metadata) from the spec and the
  standbys that report themselves ready, applied through the lifecycle's reload when the
  set changes; one HA slot per other instance, checked at least every SLOTS_INTERVAL.
- On a standby: the slot mirror (cluster/slots.py SlotMirror) copies and advances the
  primary's slots every ``spec.replicationSlots.updateInterval``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from instance_manager.cluster import slots, standby, sync
from instance_manager.cluster.view import ClusterView
from instance_manager.cluster_model import ReplicationSlots
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.lifecycle import Lifecycle

# The primary's HA slots are checked this often even when nothing seems to change.
SLOTS_INTERVAL = 10.0


class Replication:
    def __init__(self, lifecycle: Lifecycle, view: Callable[[], ClusterView]) -> None:
        self.lifecycle = lifecycle
        self.view = view
        self._slots_checked: tuple[float, frozenset[str]] = (0.0, frozenset())
        s = lifecycle.settings
        self.mirror = slots.SlotMirror(
            s.instance.podName,
            s.cluster.spec.replicationSlots,
            self._connect_local,
            self._connect_primary,
            is_fenced=self._not_a_running_standby,
        )

    def managed_parameters(self) -> dict[str, str]:
        """custom.conf's synchronous_standby_names, as this instance needs it as the primary.

        A standby carries it too (PostgreSQL ignores it there, as on CloudNativePG's
        instances): at its promotion the synchronous standbys are in force from the first
        commit, instead of after the reload that follows, when commits acknowledged in
        between would not have waited for any standby."""
        s = self.lifecycle.settings
        current = self.view()
        healthy = {n for n, r in current.reports.items() if r.role == "replica" and r.ready}
        healthy.add(current.me)
        return sync.sync_parameters(
            s.cluster.metadata.name, sorted(current.peers), current.me, healthy, s.cluster.spec
        )

    async def primary_step(self, current: ClusterView) -> None:
        """HA slots of the other instances on this primary."""
        spec = self.lifecycle.settings.cluster.spec.replicationSlots
        others = frozenset(current.peers) - {current.me}
        at, checked = self._slots_checked
        if checked == others and time.monotonic() - at < SLOTS_INTERVAL:
            return
        conn = await pgsql.connect(self.lifecycle.settings)
        async with conn:
            ha = spec.highAvailability
            prefix = ha.slotPrefix or standby.SLOT_PREFIX
            await slots.reconcile_primary_slots(conn, others, prefix, enabled=ha.enabled)
        self._slots_checked = (time.monotonic(), others)

    def configure(self, config: ReplicationSlots) -> None:
        """A new Cluster: the mirror takes its replicationSlots settings."""
        self.mirror.update(config)

    def _not_a_running_standby(self) -> bool:
        state = self.lifecycle.state
        return not state.postmaster_running or bool(state.is_primary)

    async def _connect_local(self) -> Any:
        return await pgsql.connect(self.lifecycle.settings)

    async def _connect_primary(self) -> Any:
        import psycopg

        current = self.view()
        primary = current.current_primary
        if primary is None or primary == current.me:
            raise OSError("no other primary to mirror slots from")
        params = standby.conninfo_params(self.lifecycle.settings, current.peer(primary))
        return await psycopg.AsyncConnection.connect(
            standby.conninfo_string(params), autocommit=True
        )
