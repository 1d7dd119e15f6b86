"""``synchronous_standby_names`` for the primary, computed as CloudNativePG does.

Two sources, the explicit one winning:

- ``spec.postgresql.synchronous`` (method any/first, number, maxStandbyNamesFromCluster,
  standbyNamesPre/Post, dataDurability). With ``required`` the list names every instance
  (healthy standbys, then the others, then the primary, each group sorted), so commits wait
  even when no standby is up; a list left empty gets ``<cluster>-placeholder``. With
  ``preferred`` only healthy standbys are named and the number is capped to them; none
  means no synchronous replication at all.
- the legacy ``spec.minSyncReplicas``/``maxSyncReplicas``: ``ANY n`` over the healthy
  standbys, n lowered to what the healthy standbys can give.

The setting is written with ``cnpg.synchronous_standby_names_metadata``, the same data as
JSON, so the value can be read back without parsing the setting.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from instance_manager.cluster_model import Spec, SynchronousReplicas

SYNC_PARAMETER = "synchronous_standby_names"
METADATA_PARAMETER = "cnpg.synchronous_standby_names_metadata"
METADATA_QUERY = f"SELECT current_setting('{METADATA_PARAMETER}', true)"
PLACEHOLDER_SUFFIX = "-placeholder"  # a name no standby has: the list is never empty

# Go's encoding/json escapes these inside strings; the metadata matches it byte for byte.
_GO_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


@dataclass(frozen=True)
class SyncStandbys:
    """CloudNativePG's ``SynchronousStandbyNamesConfig``; no names = no synchronous replication."""

    method: str = ""  # "ANY" or "FIRST"
    number: int = 0
    standby_names: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.standby_names)

    def setting(self) -> str:
        """The value of ``synchronous_standby_names``: ``ANY 1 ("a","b")``, or ""."""
        if not self.enabled:
            return ""
        names = ",".join(quote_name(name) for name in self.standby_names)
        return f"{self.method} {self.number} ({names})"

    def metadata(self) -> str:
        """The value of ``cnpg.synchronous_standby_names_metadata`` (compact JSON)."""
        document = {
            "method": self.method,
            "number": self.number,
            "standbyNames": list(self.standby_names),
        }
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        return "".join(_GO_JSON_ESCAPES.get(char, char) for char in text)

    def parameters(self) -> dict[str, str]:
        """The parameters to render on the primary; none when synchronous replication is off."""
        if not self.enabled:
            return {}
        return {SYNC_PARAMETER: self.setting(), METADATA_PARAMETER: self.metadata()}


def quote_name(name: str) -> str:
    """A standby name as a double-quoted identifier, ``"`` doubled."""
    return '"' + name.replace('"', '""') + '"'


def sync_standbys(
    cluster_name: str,
    instances: Iterable[str],
    primary: str,
    healthy: Collection[str],
    spec: Spec,
) -> SyncStandbys:
    """What the primary ``primary`` must wait for.

    ``instances``: every instance name of the cluster (the primary included); ``healthy``:
    the instances that are up and ready (the primary usually among them).
    """
    explicit = spec.postgresql.synchronous
    if explicit is None:
        return _legacy(primary, healthy, spec.minSyncReplicas or 0, spec.maxSyncReplicas or 0)
    if explicit.dataDurability == "preferred":
        return _preferred(explicit, primary, healthy)
    return _required(explicit, cluster_name, instances, primary, healthy)


def synchronous_standby_names(
    cluster_name: str,
    instances: Iterable[str],
    primary: str,
    healthy: Collection[str],
    spec: Spec,
) -> str:
    """The value of ``synchronous_standby_names`` ("" when nothing applies)."""
    return sync_standbys(cluster_name, instances, primary, healthy, spec).setting()


def sync_parameters(
    cluster_name: str,
    instances: Iterable[str],
    primary: str,
    healthy: Collection[str],
    spec: Spec,
) -> dict[str, str]:
    """``synchronous_standby_names`` and its metadata, for ``config.render_custom_conf``."""
    return sync_standbys(cluster_name, instances, primary, healthy, spec).parameters()


def _healthy_standbys(primary: str, healthy: Collection[str]) -> list[str]:
    return sorted({name for name in healthy if name != primary})


def _sorted_instances(
    instances: Iterable[str], primary: str, healthy: Collection[str]
) -> list[str]:
    """Healthy standbys, then the other standbys, then the primary: the order that makes
    sense for ``FIRST`` and for capping with maxStandbyNamesFromCluster."""
    ready = _healthy_standbys(primary, healthy)
    known = set(instances)
    others = sorted(known - set(ready) - {primary})
    tail = [primary] if primary and (primary in known or primary in healthy) else []
    return ready + others + tail


def _cap(names: list[str], limit: int | None) -> list[str]:
    return names if limit is None else names[:limit]


def _required(
    config: SynchronousReplicas,
    cluster_name: str,
    instances: Iterable[str],
    primary: str,
    healthy: Collection[str],
) -> SyncStandbys:
    from_cluster = _cap(
        _sorted_instances(instances, primary, healthy), config.maxStandbyNamesFromCluster
    )
    names = [*config.standbyNamesPre, *from_cluster, *config.standbyNamesPost]
    if not names:
        # An empty list is a syntax error for PostgreSQL; this name never connects.
        names = [cluster_name + PLACEHOLDER_SUFFIX]
    return SyncStandbys(config.method.upper(), config.number, tuple(names))


def _preferred(config: SynchronousReplicas, primary: str, healthy: Collection[str]) -> SyncStandbys:
    names = _cap(_healthy_standbys(primary, healthy), config.maxStandbyNamesFromCluster)
    if not names:
        return SyncStandbys()
    return SyncStandbys(config.method.upper(), min(config.number, len(names)), tuple(names))


def _legacy(primary: str, healthy: Collection[str], minimum: int, maximum: int) -> SyncStandbys:
    electable = _healthy_standbys(primary, healthy)
    ready = len(electable)
    number = maximum
    if ready < number:
        number = minimum
    if ready < minimum:
        number = ready  # self-healing: never wait for standbys that are not there
    if number <= 0:
        return SyncStandbys()
    return SyncStandbys("ANY", number, tuple(electable))
