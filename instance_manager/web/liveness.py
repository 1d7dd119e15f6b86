"""Liveness: the daemon answers ``/healthz`` with 200 while its event loop serves requests.

CloudNativePG adds a primary isolation check to liveness: when the Kubernetes API is
unreachable, a primary pings every peer's ``/failsafe`` and declares itself dead if one does
not answer. This daemon has no Kubernetes API client, so that branch has no trigger here and
liveness is the answer itself (a wedged loop fails the probe by not answering in time).
"""

from __future__ import annotations

from collections.abc import Callable

from instance_manager.settings import Settings


class Liveness:
    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    async def check(self) -> tuple[int, str]:
        return 200, "OK"
