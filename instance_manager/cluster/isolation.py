"""The primary isolation check of standalone cluster mode, and self-fencing.

CloudNativePG's liveness probe fails a primary that reaches neither the Kubernetes API nor
its peers' ``/failsafe``. Here the cluster source is the shared document and the peers'
reports beside it: the source counts as reachable when the document is readable and the
required peers' reports were rewritten within ``FRESH_SECONDS`` (a daemon rewrites its
report about once a second). When it is not, every other peer's ``/failsafe`` is asked,
bounded by ``spec.probes.liveness.isolationCheck`` (connectionTimeout, requestTimeout);
any HTTP answer counts. Peers that never wrote a report do not count (a cluster whose
other instances were never started is not an isolated one).
``isolationCheck.peersRequired`` sets the threshold: ``any`` (one peer is enough, CNPG's
documentation) or ``all`` (every peer, CNPG's code).

The outcome goes into ``InstanceState.cluster.isolation``, which ``/healthz`` answers with.
In Kubernetes mode the source is the API server (a GET of the Cluster) and the kubelet
restarts a pod whose liveness fails. Nobody restarts a standalone daemon on a failed
liveness: once the check has failed for
``spec.livenessProbeTimeout`` seconds the primary fences itself (PostgreSQL stopped). When
the check passes again the fence is lifted and the lifecycle's ``prepare_data`` decides
how PostgreSQL comes back: as a standby (pg_rewind) when another instance was promoted
meanwhile, else as the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING

from instance_manager import log
from instance_manager.cluster.certs import SERVER_CA
from instance_manager.cluster_model import IsolationCheck
from instance_manager.postgres import fencing, roles
from instance_manager.postgres.lifecycle import Lifecycle
from instance_manager.settings import Peer, Settings

if TYPE_CHECKING:
    from instance_manager.cluster.source import ClusterSource

_logger = log.get()
CHECK_PERIOD = 1.0
FRESH_SECONDS = 5.0
DEFAULT_LIVENESS_TIMEOUT = 30  # seconds (CloudNativePG's livenessProbeTimeout)


async def failsafe(
    peer: Peer, connect_timeout: float, request_timeout: float, tls: ssl.SSLContext | None = None
) -> str:
    """Ask ``peer``'s ``/failsafe`` (over ``tls`` when given): "" when anything answered,
    else why not."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(peer.host, peer.statusPort, ssl=tls)
    except TimeoutError:
        return f"connection timed out after {connect_timeout:g} s"
    except (OSError, ssl.SSLError) as exc:
        return f"cannot connect: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(request_timeout):
            request = f"GET /failsafe HTTP/1.1\r\nHost: {peer.host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            answer = await reader.read(64)
        return "" if answer else "connection closed without an answer"
    except TimeoutError:
        return f"no answer within {request_timeout:g} s"
    except OSError as exc:
        return f"request failed: {exc.strerror or exc}"
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(request_timeout):
                await writer.wait_closed()


def client_tls(settings: Settings) -> ssl.SSLContext | None:
    """The peers' status ports use TLS when ours does: verified against server-ca.crt."""
    if not settings.instance.statusPortTLS:
        return None
    context = ssl.create_default_context(cafile=str(settings.certificates_dir / SERVER_CA))
    context.check_hostname = False  # peers are named by address in the document
    return context


class Isolation:
    """Runs the check once a CHECK_PERIOD while this instance runs as a primary (or is
    fenced because of it), and fences or unfences it."""

    def __init__(self, lifecycle: Lifecycle, source: ClusterSource) -> None:
        self.lifecycle = lifecycle
        self.state = lifecycle.state
        self.source = source
        self.failing_since: float | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:
                log.event(_logger, "isolation check failed", logging.WARNING, error=str(exc))
            await asyncio.sleep(CHECK_PERIOD)  # the period of the check, not a wait on state

    def config(self) -> IsolationCheck | None:
        """The check's settings when it applies now, else None."""
        s = self.lifecycle.settings
        spec = s.cluster.spec
        check = spec.probes.liveness.isolationCheck
        if not check.enabled or spec.instances <= 1 or len(self.source.peers(s)) <= 1:
            return None
        if fencing.ISOLATION in self.lifecycle.fence.reasons:
            return check
        running_primary = self.state.postmaster_running and self.state.is_primary
        return check if running_primary and not roles.is_standby(s.pgdata) else None

    async def check(self) -> None:
        check = self.config()
        error = "" if check is None else await self.probe(check)
        self.state.cluster.isolation = error
        await self.fence(error)

    async def probe(self, check: IsolationCheck) -> str:
        """ "" when the cluster source or enough peers are reachable, else the failure."""
        s = self.lifecycle.settings
        peers = self.source.peers(s)
        names = sorted(n for n in peers if n != s.instance.podName)
        ages = await asyncio.to_thread(self.source.report_ages, names, time.time())
        # Peers that never reported (a cluster still forming) are not asked for, as CNPG
        # skips the check before it ever fetched the Cluster.
        others = sorted(ages)
        if not others:
            return ""
        needed = len(others) if check.peersRequired == "all" else 1
        fresh = [n for n in others if ages[n] <= FRESH_SECONDS]
        connect, request = check.connectionTimeout / 1000, check.requestTimeout / 1000
        reachable = await self.source.reachable(connect + request)
        if reachable and len(fresh) >= needed:
            return ""
        tls = await asyncio.to_thread(client_tls, s)
        asks = (failsafe(peers[n], connect, request, tls) for n in others)
        answers = await asyncio.gather(*asks)
        failed = {n: why for n, why in zip(others, answers, strict=True) if why}
        if len(others) - len(failed) >= needed:
            return ""
        return "liveness check failed: " + "; ".join(
            f"instance connectivity error for instance [{n}] at "
            f"{peers[n].host}:{peers[n].statusPort} (requestTimeout:{check.requestTimeout}ms "
            f"connectionTimeout:{check.connectionTimeout}ms): {why}"
            for n, why in sorted(failed.items())
        )

    async def fence(self, error: str) -> None:
        """Fence once the check has failed for livenessProbeTimeout; lift it once it passes."""
        fenced = fencing.ISOLATION in self.lifecycle.fence.reasons
        if not error:
            if self.failing_since is not None or fenced:
                log.event(_logger, "the primary reaches its cluster again")
            self.failing_since = None
            if fenced:
                self.lifecycle.fence_off(fencing.ISOLATION)
            return
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            log.event(
                _logger, "the primary is isolated: liveness fails", logging.WARNING, error=error
            )
        if self.lifecycle.settings.kubernetes:
            return  # the kubelet restarts a pod whose liveness fails: no self-fencing
        timeout = self.lifecycle.settings.cluster.spec.livenessProbeTimeout
        window = DEFAULT_LIVENESS_TIMEOUT if timeout is None else timeout
        if not fenced and now - self.failing_since >= window:
            log.event(
                _logger,
                "isolated for longer than livenessProbeTimeout: fencing this primary",
                logging.ERROR,
                seconds=window,
            )
            await self.lifecycle.fence_on(fencing.ISOLATION)
