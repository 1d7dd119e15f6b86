"""Kubernetes Events about the Cluster: role changes and failures, as ``kubectl describe``
shows them. An Event that cannot be created is logged and dropped: it never fails the
step that emitted it."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

from instance_manager import log
from instance_manager.cluster import reports
from instance_manager.kube.client import Kube, KubeError

_logger = log.get()
COMPONENT = "instance-manager"


def event_body(
    cluster: Mapping[str, Any], reason: str, message: str, warning: bool, pod: str
) -> dict[str, Any]:
    metadata = cluster.get("metadata") or {}
    name = str(metadata.get("name") or "cluster")
    now = reports.now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{name}.{secrets.token_hex(8)}",
            "namespace": metadata.get("namespace") or "default",
        },
        "involvedObject": {
            "apiVersion": cluster.get("apiVersion") or "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "name": name,
            "namespace": metadata.get("namespace") or "default",
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, "host": pod},
        "reportingComponent": COMPONENT,
        "reportingInstance": pod,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class Events:
    def __init__(self, kube: Kube, cluster: Mapping[str, Any]) -> None:
        self.kube = kube
        self.cluster = cluster
        self.pod = os.environ.get("POD_NAME", "")

    async def emit(self, reason: str, message: str, warning: bool = False) -> None:
        body = event_body(self.cluster, reason, message, warning, self.pod)
        try:
            await self.kube.create_event(body)
        except KubeError as exc:
            log.event(
                _logger, "cannot create an Event", logging.WARNING, reason=reason, error=str(exc)
            )
        else:
            log.event(_logger, "event", reason=reason, message=message)
