"""The FailoverQuorum object (CloudNativePG 1.28, ``spec.postgresql.synchronous.failoverQuorum``).

The primary publishes the synchronous standby set PostgreSQL runs with, read back from
``cnpg.synchronous_standby_names_metadata`` (so a configuration not yet loaded is never
announced), in the status of the FailoverQuorum named after the Cluster: ``method``,
``standbyNames``, ``standbyNumber`` and ``primary``. A failover may then promote only a
standby the quorum rule (R + W > N) vouches for. The object is created when missing (there
is no operator to do it here); its status is patched when it differs from what PostgreSQL
runs with, and read again every RECHECK seconds, since the operator resets it to ask for a
fresh copy.
"""

from __future__ import annotations

import json
import time
from typing import Any

from instance_manager.kube.client import GROUP, VERSION, ApiError, Kube

RECHECK = 30.0


def quorum_status(metadata: str | None, primary: str) -> dict[str, Any]:
    """The FailoverQuorum status for PostgreSQL's synchronous standby metadata."""
    try:
        data = json.loads(metadata) if metadata else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {
        "method": str(data.get("method") or ""),
        "standbyNames": [str(n) for n in data.get("standbyNames") or []],
        "standbyNumber": int(data.get("number") or 0),
        "primary": primary,
    }


def _same(found: Any, wanted: dict[str, Any]) -> bool:
    """``found`` (a status from the server, omitempty fields absent) says ``wanted``."""
    found = found if isinstance(found, dict) else {}
    return all((found.get(k) or type(v)()) == v for k, v in wanted.items())


class Quorum:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._published: tuple[dict[str, Any], float] | None = None

    async def publish(self, status: dict[str, Any]) -> bool:
        """Make the object's status ``status``; True when it was patched (KubeError when
        the API server fails)."""
        if self._published is not None:
            last, at = self._published
            if last == status and time.monotonic() - at < RECHECK:
                return False
        try:
            found = await self.kube.get_quorum()
        except ApiError as exc:
            if exc.status != 404:
                raise
            target = self.kube.target
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "FailoverQuorum",
                "metadata": {"name": target.name, "namespace": target.namespace},
            }
            found = await self.kube.create_quorum(body)
        patched = False
        if not _same(found.get("status"), status):
            await self.kube.patch_quorum_status({"status": status})
            patched = True
        self._published = (status, time.monotonic())
        return patched
