"""Kubernetes mode's start: wait until the Cluster can be read, before anything else.

As CloudNativePG's instance manager does, the daemon blocks until its Cluster exists and
the API server answers, retrying with back-off and saying why it waits. It also waits for
``status.targetPrimary``: the operator decides which instance bootstraps the cluster, and
an instance that guessed could initdb a second primary.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from instance_manager import log
from instance_manager.kube import model
from instance_manager.kube.client import ApiError, Kube, KubeError, Target
from instance_manager.settings import Settings

_logger = log.get()
WAIT_FIRST = 0.5
WAIT_MAX = 10.0


def target_of(settings: Settings) -> Target:
    meta = settings.cluster.metadata
    return Target(namespace=meta.namespace, name=meta.name)


def why_not_ready(obj: Mapping[str, Any]) -> str:
    if not (obj.get("status") or {}).get("targetPrimary"):
        return "status.targetPrimary is not set yet"
    return ""


@dataclasses.dataclass(frozen=True)
class Found:
    """What the daemon starts with in Kubernetes mode."""

    configuration: Any  # kubernetes_asyncio.client.Configuration
    target: Target
    obj: dict[str, Any]


async def wait_for_cluster(settings: Settings, env: Mapping[str, str]) -> Found:
    """The Cluster object, once it exists and names a target primary."""
    target = target_of(settings)
    kube = await Kube.connect(target, env, settings.instance.kubeconfig)
    delay, said = WAIT_FIRST, ""
    try:
        while True:
            try:
                obj = await kube.get_cluster()
                why = why_not_ready(obj)
                if not why:
                    return Found(kube.configuration, target, obj)
            except ApiError as exc:
                why = f"cannot read Cluster {target.namespace}/{target.name}: {exc}"
            except KubeError as exc:
                why = f"API server unreachable: {exc}"
            if why != said:
                said = why
                log.event(_logger, "waiting for the Cluster", logging.WARNING, reason=why)
            await asyncio.sleep(delay)  # back-off between attempts
            delay = min(delay * 2, WAIT_MAX)
    finally:
        await kube.close()


def fetch(settings: Settings, env: Mapping[str, str]) -> tuple[Settings, Found]:
    """``settings`` with the API server's Cluster, and what was found (SettingsError when a
    field the daemon uses is invalid)."""
    found = asyncio.run(wait_for_cluster(settings, env))
    cluster = model.cluster_from(found.obj)
    return dataclasses.replace(settings, cluster=cluster), found
