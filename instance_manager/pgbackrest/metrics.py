"""cnpgi.metrics.v1.Metrics: gauges about the stanza, exported as named (no prefix added).

What the repository says (``info``, ``repo-ls``) is cached for a short while: CNPG calls
Define and Collect on every scrape. A failing repository leaves its gauges out of the
answer (and a warning in the log) instead of failing the whole collection.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from instance_manager import log
from instance_manager.pgbackrest import info
from instance_manager.pgbackrest.options import Config, ConfigError, decode_cluster
from instance_manager.pgbackrest.replies import fail
from instance_manager.pgbackrest.runner import INFO_TIMEOUT, CommandFailed
from instance_manager.pgbackrest.sidecar import Sidecar
from instance_manager.plugins._gen import metrics_pb2, metrics_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_logger = log.get("pgbackrest")
PREFIX = "cnpg_plugin_pgbackrest_"
# Scrapes come every 30 s or so; info costs ~10 ms, a recursive listing more.
INFO_TTL = 10.0
SIZE_TTL = 60.0
METRICS = {
    "first_recoverability_point": "Unix time of the oldest point a restore can reach "
    "(the end of the oldest backup); 0 without backups",
    "last_available_backup_timestamp": "Unix time at which the newest backup ended",
    "last_failed_backup_timestamp": "Unix time of the last failed backup of this sidecar",
    "backups": "Number of backups in the repositories",
    "repository_size_bytes": "Bytes in the repositories for this stanza (backups and WAL)",
    "archive_lag_seconds": "Age of the oldest WAL segment waiting to be archived (0: none)",
    "archive_ready_segments": "WAL segments waiting to be archived (.ready files)",
    "last_archive_timestamp": "Unix time of the last WAL segment archived by this sidecar",
    "last_failed_archive_timestamp": "Unix time of the last archive failure of this sidecar",
}


@dataclass
class _Cached:
    at: float
    value: Any


def archive_backlog(pgdata: Path | None, now: float) -> tuple[int, float]:
    """(.ready files, age in seconds of the oldest) in PGDATA/pg_wal/archive_status."""
    if pgdata is None:
        return 0, 0.0
    count, oldest = 0, now
    try:
        with os.scandir(pgdata / "pg_wal" / "archive_status") as entries:
            for entry in entries:
                if entry.name.endswith(".ready"):
                    count += 1
                    try:
                        oldest = min(oldest, entry.stat().st_mtime)
                    except FileNotFoundError:
                        continue  # archived meanwhile
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return 0, 0.0
    return count, max(0.0, now - oldest) if count else 0.0


def backup_gauges(stanza: info.StanzaInfo) -> dict[str, float]:
    backups = stanza.backups
    return {
        "first_recoverability_point": float(min((b.stopped_at for b in backups), default=0)),
        "last_available_backup_timestamp": float(max((b.stopped_at for b in backups), default=0)),
        "backups": float(len(backups)),
    }


def listing_size(text: str) -> int:
    """Total size of the files in a ``repo-ls --recurse --output=json`` listing."""
    entries = json.loads(text)
    if not isinstance(entries, dict):
        raise ValueError("repo-ls printed JSON that is not an object")
    return sum(
        int(e.get("size", 0))
        for e in entries.values()
        if isinstance(e, dict) and e.get("type") == "file"
    )


class MetricsService(metrics_pb2_grpc.MetricsServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._cache: dict[tuple[str, frozenset[tuple[str, str]]], _Cached] = {}

    async def GetCapabilities(
        self, request: metrics_pb2.MetricsCapabilitiesRequest, context: Context
    ) -> metrics_pb2.MetricsCapabilitiesResult:
        rpc = metrics_pb2.MetricsCapability.RPC
        return metrics_pb2.MetricsCapabilitiesResult(
            capabilities=[metrics_pb2.MetricsCapability(rpc=rpc(type=rpc.TYPE_METRICS))]
        )

    async def Define(
        self, request: metrics_pb2.DefineMetricsRequest, context: Context
    ) -> metrics_pb2.DefineMetricsResult:
        gauge = metrics_pb2.MetricType(type=metrics_pb2.MetricType.TYPE_GAUGE)
        return metrics_pb2.DefineMetricsResult(
            metrics=[
                metrics_pb2.Metric(fq_name=PREFIX + name, help=text, value_type=gauge)
                for name, text in METRICS.items()
            ]
        )

    async def Collect(
        self, request: metrics_pb2.CollectMetricsRequest, context: Context
    ) -> metrics_pb2.CollectMetricsResult:
        try:
            config = self.sidecar.resolver.own(decode_cluster(request.cluster_definition))
        except ConfigError as exc:
            await fail(context, "Collect", exc)
        values = self._local(config)
        try:
            values.update(backup_gauges(await self._cached("info", config, self._info)))
            values["repository_size_bytes"] = await self._cached("size", config, self._size)
        except (CommandFailed, ConfigError, ValueError) as exc:
            log.event(_logger, "repository metrics not collected", logging.WARNING, error=str(exc))
        return metrics_pb2.CollectMetricsResult(
            metrics=[
                metrics_pb2.CollectMetric(fq_name=PREFIX + name, value=value)
                for name, value in values.items()
            ]
        )

    def _local(self, config: Config) -> dict[str, float]:
        """What this sidecar knows without asking the repository."""
        now = time.time()
        ready, lag = archive_backlog(config.pgdata, now)
        outcomes = self.sidecar.outcomes
        return {
            "last_failed_backup_timestamp": outcomes.last_failed_backup,
            "archive_lag_seconds": lag,
            "archive_ready_segments": float(ready),
            "last_archive_timestamp": outcomes.last_archive,
            "last_failed_archive_timestamp": outcomes.last_failed_archive,
        }

    async def _cached(self, kind: str, config: Config, fetch: Any) -> Any:
        key = (kind, config.key())
        ttl = INFO_TTL if kind == "info" else SIZE_TTL
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.at < ttl:
            return hit.value
        value = await fetch(config)
        self._cache[key] = _Cached(time.monotonic(), value)
        return value

    async def _info(self, config: Config) -> info.StanzaInfo:
        return await self.sidecar.info(config)

    async def _size(self, config: Config) -> float:
        stanza = await self._cached("info", config, self._info)
        repos = sorted(stanza.repo_status) or [0]
        total = 0
        for repo in repos:
            for path in (f"archive/{config.stanza}", f"backup/{config.stanza}"):
                args = ["--recurse", "--output=json", *([f"--repo={repo}"] if repo else []), path]
                listed = await self.sidecar.runner.run("repo-ls", args, config, INFO_TIMEOUT)
                total += listing_size(listed.stdout)
        return float(total)
