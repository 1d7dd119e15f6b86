"""Fencing: PostgreSQL stays down on purpose while the daemon keeps serving.

An instance is fenced while at least one reason holds (the document's
``cnpg.io/fencedInstances`` annotation, or the isolation check's self-fencing). The
lifecycle stops a running postmaster when the first reason arrives (fast bounded by
``switchoverDelay``, then immediate) and starts none while any reason remains. The flag
and "might be unavailable" go into ``InstanceState``: ``/readyz`` fails, ``/startupz``
answers Skipped, ``/pg/archive/partial`` is allowed.
"""

from __future__ import annotations

import asyncio
import json

from instance_manager import log
from instance_manager.cluster_model import Cluster
from instance_manager.state import InstanceState

_logger = log.get()
FENCED_ANNOTATION = "cnpg.io/fencedInstances"
ANNOTATION = "annotation"
ISOLATION = "isolation"


def annotated(cluster: Cluster, pod: str) -> bool:
    """The document fences ``pod``: a JSON list naming it or "*" (invalid JSON: not fenced)."""
    raw = cluster.metadata.annotations.get(FENCED_ANNOTATION)
    if not raw:
        return False
    try:
        names = json.loads(raw)
    except ValueError:
        return False
    return isinstance(names, list) and ("*" in names or pod in names)


class Fence:
    """The reasons this instance is fenced; ``lifted`` is set when there are none."""

    def __init__(self, state: InstanceState) -> None:
        self._state = state
        self.reasons: set[str] = set()
        self.lifted = asyncio.Event()
        self.lifted.set()

    def add(self, reason: str) -> bool:
        """True when this reason is new."""
        if reason in self.reasons:
            return False
        self.reasons.add(reason)
        self.lifted.clear()
        self._state.fenced = True
        self._state.might_be_unavailable = True
        log.event(_logger, "instance fenced", reason=reason, reasons=sorted(self.reasons))
        return True

    def remove(self, reason: str) -> bool:
        """True when this reason was there."""
        if reason not in self.reasons:
            return False
        self.reasons.discard(reason)
        log.event(_logger, "fencing reason lifted", reason=reason, reasons=sorted(self.reasons))
        if not self.reasons:
            self._state.fenced = False
            self.lifted.set()
        return True

    async def wait_lifted(self) -> None:
        if not self.lifted.is_set():
            log.event(_logger, "fenced: PostgreSQL stays down", reasons=sorted(self.reasons))
        await self.lifted.wait()
