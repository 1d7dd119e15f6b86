"""Which plugins the Cluster enables: no gRPC here, so callers can ask cheaply."""

from __future__ import annotations

from instance_manager.cluster_model import Cluster

# CNPG's annotation: "enabled" tells the plugins not to check that the WAL archive is empty.
SKIP_EMPTY_CHECK_ANNOTATION = "cnpg.io/skipEmptyWalArchiveCheck"


def enabled(cluster: Cluster, restore: bool = False) -> list[str]:
    """Enabled plugin names, sorted. For WAL restore CNPG also uses the plugins of
    ``spec.externalClusters[].plugin`` (a replica cluster or a recovery source)."""
    names = {p.name for p in cluster.spec.plugins if p.enabled}
    if restore:
        names |= set(external_plugins(cluster))
    return sorted(names)


def external_plugins(cluster: Cluster) -> list[str]:
    found = []
    for source in cluster.spec.externalClusters or []:
        plugin = source.get("plugin") if isinstance(source, dict) else None
        if isinstance(plugin, dict) and plugin.get("name") and plugin.get("enabled", True):
            found.append(str(plugin["name"]))
    return found


def wal_archiver(cluster: Cluster) -> str | None:
    for plugin in cluster.spec.plugins:
        if plugin.enabled and plugin.isWALArchiver:
            return plugin.name
    return None


def recovery_source(cluster: Cluster) -> str | None:
    """The plugin serving the external cluster that ``bootstrap.recovery.source`` names."""
    recovery = cluster.spec.bootstrap.recovery or {}
    source = recovery.get("source")
    for entry in cluster.spec.externalClusters or []:
        plugin = entry.get("plugin")
        if entry.get("name") != source or not isinstance(plugin, dict):
            continue
        if plugin.get("name") and plugin.get("enabled", True) is not False:
            return str(plugin["name"])
    return None


def check_empty_archive(cluster: Cluster) -> bool:
    """Whether a plugin must refuse to archive into, or restore with, a non-empty archive."""
    return cluster.metadata.annotations.get(SKIP_EMPTY_CHECK_ANNOTATION) != "enabled"
