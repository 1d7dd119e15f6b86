"""Which plugins the Cluster enables: no gRPC here, so callers can ask cheaply."""

from __future__ import annotations

from instance_manager.cluster_model import Cluster


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
