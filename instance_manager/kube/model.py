"""A Cluster resource read from the API server, as the reconciler's ``Cluster``.

Objects written for CloudNativePG's own CRD carry many fields this daemon does not use
(``spec.affinity``, ``spec.monitoring``, ``metadata.managedFields``...). They are kept in
the object on the server and ignored here: every field the model does not declare is
dropped before validation, where a settings file would be refused for it. Values of the
fields we do use are still validated.
"""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi

from instance_manager import settings
from instance_manager.cluster_model import Cluster

# Server-side bookkeeping that changes with every status patch: leaving it out keeps the
# reconciler from seeing a new Cluster when only a report changed.
VOLATILE_METADATA = ("resourceVersion", "managedFields")


def prune(data: Any, kind: mi.Type) -> Any:
    """``data`` without the fields ``kind`` does not declare, at every depth."""
    if isinstance(kind, mi.StructType) and isinstance(data, dict):
        known = {f.encode_name: f.type for f in kind.fields}
        return {k: prune(v, known[k]) for k, v in data.items() if k in known}
    if isinstance(kind, mi.UnionType):
        for member in kind.types:
            if isinstance(member, mi.StructType) and isinstance(data, dict):
                return prune(data, member)
            if isinstance(member, mi.DictType | mi.ListType):
                return prune(data, member)
        return data
    if isinstance(kind, mi.DictType) and isinstance(data, dict):
        return {k: prune(v, kind.value_type) for k, v in data.items()}
    if isinstance(kind, mi.ListType) and isinstance(data, list):
        return [prune(v, kind.item_type) for v in data]
    return data


CLUSTER_TYPE = mi.type_info(Cluster)


def cluster_from(obj: dict[str, Any]) -> Cluster:
    """The Cluster of an API object; SettingsError when a field we use is invalid."""
    pruned = prune(obj, CLUSTER_TYPE)
    metadata = pruned.get("metadata") or {}
    for key in VOLATILE_METADATA:
        metadata.pop(key, None)
    status = obj.get("status")
    pruned["status"] = dict(status) if isinstance(status, dict) else {}
    return settings.cluster_from(pruned)
