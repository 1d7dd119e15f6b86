"""Liveness: ``/healthz`` answers 200 while the event loop serves requests and this
instance is not an isolated primary.

A wedged loop fails the probe by not answering in time. The isolation check itself runs
in the cluster reconciler (cluster/isolation.py, standalone cluster mode): a primary that
reaches neither its cluster source nor enough peers' ``/failsafe`` answers 500 with the
reason, as CloudNativePG's liveness probe does.
"""

from __future__ import annotations

from collections.abc import Callable

from instance_manager.settings import Settings
from instance_manager.state import InstanceState


class Liveness:
    def __init__(
        self, settings: Callable[[], Settings], state: InstanceState | None = None
    ) -> None:
        self._settings = settings
        self._state = state

    async def check(self) -> tuple[int, str]:
        isolation = self._state.cluster.isolation if self._state is not None else ""
        if isolation:
            return 500, isolation
        return 200, "OK"
