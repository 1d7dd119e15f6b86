"""Cluster status conditions set by this instance (``metav1.Condition``), and the
ContinuousArchiving condition CloudNativePG derives from WAL archiving results.

The local API's POST endpoint and the cluster reconciler write them; the instance's
report and ``/cache/cluster`` show them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

CONTINUOUS_ARCHIVING = "ContinuousArchiving"
ARCHIVING_WORKS = "Continuous archiving is working"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConditionStore:
    """As metav1.Condition: lastTransitionTime changes only when the status changes."""

    def __init__(self) -> None:
        self._conditions: dict[str, dict[str, str]] = {}
        self.updated_at = 0.0

    def set(self, kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        previous = self._conditions.get(kind)
        if previous is not None and previous["status"] == status:
            since = previous["lastTransitionTime"]
        else:
            since = _now()
        condition = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
        self._conditions[kind] = condition
        self.updated_at = time.time()
        return condition

    def get(self, kind: str) -> dict[str, str] | None:
        return self._conditions.get(kind)

    def all(self) -> list[dict[str, str]]:
        return [dict(c) for _, c in sorted(self._conditions.items())]

    def continuous_archiving(self, error: str) -> dict[str, str]:
        if error:
            return self.set(CONTINUOUS_ARCHIVING, "False", "ContinuousArchivingFailing", error)
        return self.set(CONTINUOUS_ARCHIVING, "True", "ContinuousArchivingSuccess", ARCHIVING_WORKS)
