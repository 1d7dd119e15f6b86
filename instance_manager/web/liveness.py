"""Liveness: the daemon answers ``/healthz`` with 200 while its event loop serves requests.

Liveness is the answer itself: a wedged loop fails the probe by not answering in time.
CloudNativePG also runs a primary isolation check here (when the Kubernetes API is
unreachable, a primary pings every peer's ``/failsafe`` and declares itself dead if one does
not answer); that check needs a Kubernetes API client, and this module has none.
"""

from __future__ import annotations

from collections.abc import Callable

from instance_manager.settings import Settings


class Liveness:
    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    async def check(self) -> tuple[int, str]:
        return 200, "OK"
