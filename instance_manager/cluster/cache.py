"""The local API's cache and this instance's conditions, refreshed at every pass.

- ``ContinuousArchiving``: False (``ContinuousArchivingFailing``, the plugin's error) when
  the newest archiving outcome of this daemon is a failure, True once a segment is archived
  after it; nothing before the first outcome (a standby does not archive);
- ``/cache/cluster``: the effective Cluster: the document with its status as the operator
  would write it from the instances' reports (``currentPrimary``, ``targetPrimary``,
  ``instanceNames``, ``readyInstances``, ``instancesReportedState``) and the current
  primary's conditions (this instance's own outside cluster mode);
- ``/cache/wal-archive``, ``/cache/wal-restore``: CloudNativePG keeps there the
  ``KEY=VALUE`` environment (object-store credentials) its WAL commands need. The plugins
  hold their credentials here, so the entries are empty lists, present when a WAL archiver
  plugin (``wal-archive``) or any plugin that may restore (``wal-restore``) is enabled,
  absent (404) otherwise.
"""

from __future__ import annotations

from typing import Any

from instance_manager.cluster.view import ClusterView
from instance_manager.cluster_model import Cluster
from instance_manager.plugins import selection
from instance_manager.state import InstanceState, WalState

CLUSTER = "cluster"
WAL_ARCHIVE = "wal-archive"
WAL_RESTORE = "wal-restore"


def archiving_error(wal: WalState) -> str | None:
    """ "" when archiving works, the error when it fails, None before any outcome."""
    failed, archived = wal.last_failed_time, wal.last_archived_time
    if failed is not None and (archived is None or failed >= archived):
        return wal.last_failed_error or f"cannot archive {wal.last_failed_wal}"
    return "" if archived is not None else None


def refresh(state: InstanceState, cluster: Cluster, current: ClusterView | None) -> None:
    """Conditions from the archiving outcomes, then every cache entry."""
    error = archiving_error(state.wal)
    if error is not None:
        state.conditions.continuous_archiving(error)
    cache = state.cache
    cache[CLUSTER] = effective_cluster(state, cluster, current)
    _present(cache, WAL_ARCHIVE, selection.wal_archiver(cluster) is not None)
    _present(cache, WAL_RESTORE, bool(selection.enabled(cluster, restore=True)))


def _present(cache: dict[str, Any], key: str, wanted: bool) -> None:
    if wanted:
        cache[key] = []
    else:
        cache.pop(key, None)


def effective_cluster(
    state: InstanceState, cluster: Cluster, current: ClusterView | None
) -> dict[str, Any]:
    document = cluster.to_json_dict()
    status: dict[str, Any] = dict(document.get("status") or {})
    conditions = state.conditions.all()
    if current is not None:
        found = current.reports
        status["currentPrimary"] = current.current_primary or ""
        status["targetPrimary"] = current.target_primary
        status["instanceNames"] = sorted(current.peers)
        status["readyInstances"] = sum(1 for r in found.values() if r.ready)
        status["instancesReportedState"] = {
            name: {"isPrimary": r.role == "primary", "timeLineID": r.timeLineID or 0}
            for name, r in sorted(found.items())
        }
        primary = found.get(current.current_primary or "")
        if current.current_primary != current.me and primary is not None:
            conditions = [dict(c) for c in primary.conditions if isinstance(c, dict)]
    if conditions:
        status["conditions"] = conditions
    else:
        status.pop("conditions", None)
    document["status"] = status
    return document
