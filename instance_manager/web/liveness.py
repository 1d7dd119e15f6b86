"""Liveness with CloudNativePG's primary isolation check.

Decision table (every branch says why):
1. role cannot be determined                         -> alive
2. standby                                           -> alive
3. no Kubernetes API configured (standalone)         -> alive
4. primary, API reachable                            -> alive
5. primary, API unreachable, isolation check off,
   or a single-instance cluster                      -> alive
6. primary, API unreachable: ping every peer's /failsafe; any peer unreachable means
   this primary is isolated                          -> dead (the kubelet restarts it)
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from instance_manager import log
from instance_manager.settings import Settings
from instance_manager.web import routes

_logger = log.get()


def is_standby(pgdata: Path) -> bool:
    return (pgdata / "standby.signal").exists() or (pgdata / "recovery.conf").exists()


class Liveness:
    def __init__(
        self,
        settings: Callable[[], Settings],
        api_reachable: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._settings = settings
        self._api_reachable = api_reachable

    async def check(self) -> tuple[int, str]:
        s = self._settings()
        try:
            standby = is_standby(s.pgdata)
        except OSError as exc:
            log.event(
                _logger, "liveness: cannot determine the role; assuming alive", error=str(exc)
            )
            return 200, "OK"
        if standby or self._api_reachable is None:
            return 200, "OK"
        if await self._api_reachable():
            return 200, "OK"
        iso = s.cluster.spec.probes.liveness.isolationCheck
        if not iso.enabled or s.cluster.spec.instances == 1:
            return 200, "OK"
        error = await self.ping_peers(s)
        if error:
            log.event(_logger, "liveness: primary is isolated", error=error)
            return 500, f"liveness check failed: {error}"
        return 200, "OK"

    async def ping_peers(self, s: Settings) -> str:
        """'' when every peer answers /failsafe (any status), else the first failure."""
        iso = s.cluster.spec.probes.liveness.isolationCheck
        timeout = aiohttp.ClientTimeout(
            total=iso.requestTimeout / 1000, sock_connect=iso.connectionTimeout / 1000
        )
        ca = s.instance.scratchDir / "certificates" / "server-ca.crt"
        context = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None
        scheme = "https" if context else "http"
        peers = s.cluster.status.get("instancesReportedState") or {}
        async with aiohttp.ClientSession(timeout=timeout) as client:
            for pod, report in sorted(peers.items()):
                ip = report.get("ip") if isinstance(report, dict) else None
                if not ip:
                    continue
                url = f"{scheme}://{ip}:{s.instance.statusPort}{routes.FAILSAFE}"
                try:
                    async with client.get(url, ssl=context or False) as resp:
                        await resp.read()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    return (
                        f"instance connectivity error for instance [{pod}] with ip [{ip}] "
                        f"(requestTimeout:{iso.requestTimeout} "
                        f"connectionTimeout:{iso.connectionTimeout}): {exc!r}"
                    )
        return ""
