"""Startup, readiness and liveness checks with CloudNativePG's semantics.

Strategies (``spec.probes.<startup|readiness>.type``):
- ``pg_isready``: is the server answering? Like ``pg_isready``, "rejecting connections"
  (starting up, shutting down) is a distinct answer that the startup probe accepts.
  Instead of spawning pg_isready per probe we keep one connection open and ping it.
- ``query``: a query on that connection must succeed.
- ``streaming``: a primary passes; a standby passes when it streams with a lag no
  greater than ``maximumLag`` (or has no primary_conninfo: log shipping only).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from instance_manager.cluster_model import ProbeWithStrategy
from instance_manager.postgres.sql import Session
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

_REJECTING = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "the database system is in recovery mode",
)

STREAMING_QUERY = """
SELECT pg_catalog.pg_is_in_recovery(),
       coalesce(current_setting('primary_conninfo', true), '') = '',
       (SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver),
       (SELECT (latest_end_lsn - pg_catalog.pg_last_wal_replay_lsn())::bigint
          FROM pg_catalog.pg_stat_wal_receiver LIMIT 1),
       (SELECT latest_end_time::text FROM pg_catalog.pg_stat_wal_receiver LIMIT 1)
"""


class Ping(enum.Enum):
    OK = 0
    REJECT = 1  # pg_isready exit code 1
    NO_RESPONSE = 2  # pg_isready exit code 2


@dataclass(frozen=True)
class Result:
    ok: bool
    message: str


class ProbeError(Exception):
    """A strategy's reason for failing."""


def classify(exc: psycopg.Error) -> Ping:
    if getattr(exc, "sqlstate", None) == "57P03":
        return Ping.REJECT
    text = str(exc)
    return Ping.REJECT if any(r in text for r in _REJECTING) else Ping.NO_RESPONSE


class Checker:
    """Runs the configured strategy; callers give the probe kind."""

    def __init__(
        self, settings: Callable[[], Settings], state: InstanceState, session: Session
    ) -> None:
        self._settings = settings
        self.state = state
        self.session = session

    async def ping(self, timeout: float) -> Ping:
        try:
            await self.session.fetchone("SELECT 1", timeout=timeout)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if isinstance(exc, psycopg.Error):
                return classify(exc)
            return Ping.NO_RESPONSE
        return Ping.OK

    async def streaming(self, probe: ProbeWithStrategy, timeout: float) -> None:
        row = await self.session.fetchone(STREAMING_QUERY, timeout=timeout)
        assert row is not None
        in_recovery, no_conninfo, receivers, lag, end_time = row
        if not in_recovery or no_conninfo:
            return
        limit = probe.maximum_lag_bytes
        if not receivers:
            raise ProbeError("replica not connected via streaming replication")
        if limit is not None and lag is not None and int(str(lag)) > limit:
            raise ProbeError(
                f"streaming replica lagging; detectedLag={lag} configuredLag={limit} "
                f"latestEndTime={end_time}"
            )

    async def check(self, probe: ProbeWithStrategy, *, startup: bool) -> Result:
        timeout = float(probe.timeoutSeconds)
        try:
            async with asyncio.timeout(timeout):
                if probe.type == "streaming":
                    await self.streaming(probe, timeout)
                    return Result(True, "OK")
                ping = await self.ping(timeout)
        except (ProbeError, psycopg.Error, OSError) as exc:
            return Result(False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except TimeoutError:
            return Result(False, f"no answer within {timeout:g} s")
        if ping is Ping.OK or (ping is Ping.REJECT and startup and probe.type == "pg_isready"):
            return Result(True, "OK")
        if ping is Ping.REJECT:
            return Result(False, "rejecting connections")
        return Result(False, "no response")

    async def startup(self) -> tuple[int, str]:
        if self.state.might_be_unavailable:
            return 200, "Skipped"
        result = await self.check(self._settings().cluster.spec.probes.startup, startup=True)
        return (200, "OK") if result.ok else (500, f"startup check failed: {result.message}")

    async def readiness(self) -> tuple[int, str]:
        if not self.state.postmaster_running or self.state.stopping:
            return 500, "instance is not ready yet"
        result = await self.check(self._settings().cluster.spec.probes.readiness, startup=False)
        return (200, "OK") if result.ok else (500, f"readiness check failed: {result.message}")
