"""The effective view of a standalone cluster: the shared document plus every report.

``currentPrimary`` is the claim with the newest ``currentPrimaryTimestamp`` among the
reports, else the document's ``status.currentPrimary``. ``targetPrimary`` comes from the
document (written only by the operator: people, through switchover/failover); when neither
is set, the first peer in sorted order is the target of a new cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from instance_manager.cluster import reports
from instance_manager.cluster.reports import Report
from instance_manager.cluster_model import Cluster
from instance_manager.settings import Peer, Settings


@dataclass(frozen=True)
class ClusterView:
    me: str
    peers: Mapping[str, Peer]
    target_primary: str
    current_primary: str | None
    reports: Mapping[str, Report]

    @property
    def i_am_target(self) -> bool:
        return self.target_primary == self.me

    @property
    def other_is_current(self) -> bool:
        """Another instance is (or claims to be) the primary."""
        return self.current_primary not in (None, self.me)

    def peer(self, name: str) -> Peer:
        return self.peers[name]


def current_primary(status: Mapping[str, object], found: Mapping[str, Report]) -> str | None:
    """The newest claim among the reports, else the document's ``status.currentPrimary``."""
    claims = [
        (r.currentPrimaryTimestamp or "", r.currentPrimary)
        for r in found.values()
        if r.currentPrimary and r.currentPrimary == r.name
    ]
    if claims:
        return max(claims)[1]
    value = status.get("currentPrimary")
    return value if isinstance(value, str) and value else None


def build(
    cluster: Cluster, me: str, peers: Mapping[str, Peer], found: Mapping[str, Report]
) -> ClusterView:
    current = current_primary(cluster.status, found)
    target = cluster.status.get("targetPrimary")
    if not isinstance(target, str) or not target:
        target = current or sorted(peers)[0]
    return ClusterView(me, peers, target, current, found)


def load(settings: Settings, document: Path) -> ClusterView:
    """The view for ``settings`` (a cluster-mode instance) from the files on disk."""
    peers = settings.instance.peers or {}
    found = reports.read_all(reports.reports_dir(document), sorted(peers))
    return build(settings.cluster, settings.instance.podName, peers, found)
