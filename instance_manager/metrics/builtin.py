"""CloudNativePG's built-in ``cnpg_collector_*`` families (other than the self metrics).

Everything the server knows comes back from one statement per scrape (``Facts``): it
doubles as the "ping" behind ``cnpg_collector_up``. What the Cluster resource knows
(fencing, topology, backup times, phase) is read from the settings.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from instance_manager.cluster_model import Cluster, parse_quantity
from instance_manager.metrics.connections import Connection
from instance_manager.metrics.exposition import Family, gauge
from instance_manager.metrics.pipeline import Failed, Outcome, Prepared, Rows, Statement, run
from instance_manager.metrics.versions import Version, pg_version
from instance_manager.postgres import fencing

P = "cnpg_collector_"
FACTS_TIMEOUT = 3.0
FENCED_ANNOTATION = fencing.FENCED_ANNOTATION
WAITING_FOR_USER = "Waiting for user action"
_SYNC = re.compile(r"\b(?:ANY|FIRST)\s+(\d+)\s*\(", re.IGNORECASE)
_WAL_SETTINGS = (
    "wal_segment_size",
    "min_wal_size",
    "max_wal_size",
    "wal_keep_size",
    "wal_keep_segments",
    "max_slot_wal_keep_size",
)
STAT_WAL = ("wal_records", "wal_fpi", "wal_bytes", "wal_buffers_full")
STAT_WAL_IO = ("wal_write", "wal_sync", "wal_write_time", "wal_sync_time")  # PG 14-17
STAT_WAL_HELP = {
    "wal_records": "Total number of WAL records generated (PostgreSQL 14+)",
    "wal_fpi": "Total number of WAL full page images generated (PostgreSQL 14+)",
    "wal_bytes": "Total amount of WAL generated, in bytes (PostgreSQL 14+)",
    "wal_buffers_full": "Times WAL was written because the WAL buffers were full (14+)",
    "wal_write": "Times WAL buffers were written out by XLogWrite (PostgreSQL 14 to 17)",
    "wal_sync": "Times WAL files were synced to disk (PostgreSQL 14 to 17)",
    "wal_write_time": "Milliseconds spent writing WAL (track_wal_io_timing; 14 to 17)",
    "wal_sync_time": "Milliseconds spent syncing WAL (track_wal_io_timing; 14 to 17)",
}


# pg_wal as archive.scan sees it, read by the server (PostgreSQL 12+; pg_monitor may):
# segments, .ready, .done, bytes and oldest mtime (epoch) of the segments waiting.
WAL_DIRECTORY = b"""\
WITH w AS (SELECT name, size FROM pg_catalog.pg_ls_waldir()),
     s AS (SELECT name, modification FROM pg_catalog.pg_ls_archive_statusdir()),
     r AS (SELECT w.size, s.modification FROM s JOIN w ON s.name = w.name || '.ready')
SELECT (SELECT count(*) FROM w WHERE name ~ '^[0-9A-F]{24}$'),
       (SELECT count(*) FROM s WHERE name LIKE '%.ready'),
       (SELECT count(*) FROM s WHERE name LIKE '%.done'),
       (SELECT COALESCE(sum(size), 0) FROM r),
       (SELECT extract(epoch FROM min(modification)) FROM r)"""
WAL_DIRECTORY_FROM = 120000


@dataclass
class Facts:
    version_num: int
    in_recovery: bool
    sync_names: str
    wal_settings: dict[str, float] = field(default_factory=dict)
    databases: list[str] | None = None  # those the exporter may connect to
    stat_wal: dict[str, float] = field(default_factory=dict)
    stats_reset: str = ""
    wal_directory: tuple[Any, ...] | None = None  # the row of WAL_DIRECTORY, if it ran

    @property
    def version(self) -> Version:
        return pg_version(self.version_num)


def facts_sql(version_num: int) -> bytes:
    names = ", ".join(f"'{n}'" for n in _WAL_SETTINGS)
    columns = [
        "pg_catalog.pg_is_in_recovery()",
        "pg_catalog.current_setting('synchronous_standby_names')",
        "(SELECT pg_catalog.json_object_agg(name, setting) FROM pg_catalog.pg_settings"
        f" WHERE name IN ({names}))",
        "(SELECT pg_catalog.array_agg(datname ORDER BY datname) FROM pg_catalog.pg_database"
        " WHERE datallowconn AND NOT datistemplate"
        " AND pg_catalog.has_database_privilege(datname, 'CONNECT'))",
    ]
    source = ""
    if version_num >= 140000:
        stat = STAT_WAL + (STAT_WAL_IO if version_num < 180000 else ())
        columns += [f"w.{c}" for c in stat] + ["COALESCE(w.stats_reset::text, '')"]
        source = " FROM pg_catalog.pg_stat_wal w"
    return ("SELECT " + ", ".join(columns) + source).encode()


async def fetch(conn: Connection, prepared: Prepared) -> Facts:
    """The facts; with them, on 12+, pg_wal as the server lists it (the statement is
    separate: its failure leaves the facts, and the caller scans the directory)."""
    version_num = conn.info.server_version
    statements = [Statement(facts_sql(version_num))]
    if version_num >= WAL_DIRECTORY_FROM:
        statements.append(Statement(WAL_DIRECTORY))
    done: list[Outcome] = []
    async with asyncio.timeout(FACTS_TIMEOUT):
        await run(conn, statements, prepared, done)
    outcome = done[0]
    if isinstance(outcome, Failed):
        raise outcome.error
    if not outcome.rows:
        raise RuntimeError("no row from the built-in metrics query")
    row = outcome.rows[0]
    settings = {k: float(v) for k, v in (row[2] or {}).items() if v is not None}
    databases = [str(d) for d in row[3] or ()]
    facts = Facts(version_num, bool(row[0]), str(row[1] or ""), settings, databases)
    if len(row) > 4:
        names = STAT_WAL + (STAT_WAL_IO if version_num < 180000 else ())
        facts.stat_wal = {n: float(v or 0) for n, v in zip(names, row[4:-1], strict=True)}
        facts.stats_reset = str(row[-1])
    wal = done[-1] if len(done) > 1 else None
    if isinstance(wal, Rows) and wal.rows:
        facts.wal_directory = wal.rows[0]
    return facts


def requested_sync_standbys(names: str) -> int:
    """From synchronous_standby_names: 0 when empty; ValueError unless ANY/FIRST n (...)."""
    if not names.strip():
        return 0
    match = _SYNC.search(names)
    if not match:
        raise ValueError(f"not matching synchronous standby names regex: {names}")
    return int(match.group(1))


def server_families(
    facts: Facts, cluster: Cluster, is_primary: bool, errors: list[str]
) -> list[Family]:
    sync = Family(
        P + "sync_replicas",
        "Number of requested synchronous replicas (synchronous_standby_names)",
        "gauge",
    )
    spec = cluster.spec
    sync.add((("value", "min"),), float(spec.minSyncReplicas or 0))
    sync.add((("value", "max"),), float(spec.maxSyncReplicas or 0))
    if is_primary:
        try:
            observed = float(requested_sync_standbys(facts.sync_names))
        except ValueError:
            errors.append("Collect.SynchronousStandbys")
            observed = -1.0
        sync.add((("value", "observed"),), observed)
    major, _, minor = facts.version
    full = f"{major}.{minor}"
    version = gauge(
        P + "postgres_version",
        "Postgres version",
        float(full),
        full=full,
        cluster=cluster.metadata.name,
    )
    out = [sync, version]
    if facts.version_num >= 140000 and facts.stat_wal:
        for name, value in facts.stat_wal.items():
            out.append(gauge(P + name, STAT_WAL_HELP[name], value, stats_reset=facts.stats_reset))
    return out


def wal_settings_values(settings: dict[str, float], cluster: Cluster) -> dict[str, float]:
    """min/max/keep/slots_max in segments, volume_size in bytes and volume_max in segments."""
    segment = settings.get("wal_segment_size") or 16 * 1024 * 1024
    mb = 1024.0 * 1024.0
    keep = settings.get("wal_keep_size")
    keep_segments = (
        keep * mb / segment if keep is not None else settings.get("wal_keep_segments", 0.0)
    )
    slots = settings.get("max_slot_wal_keep_size", -1.0)
    values = {
        "min": settings.get("min_wal_size", 0.0) * mb / segment,
        "max": settings.get("max_wal_size", 0.0) * mb / segment,
        "keep": keep_segments,
        "slots_max": math.nan if slots == -1 else slots * mb / segment,
    }
    volume = wal_volume_bytes(cluster)
    values["volume_size"] = math.nan if volume is None else float(volume)
    values["volume_max"] = math.nan if volume is None else volume / segment
    return values


def wal_volume_bytes(cluster: Cluster) -> int | None:
    storage = cluster.spec.walStorage
    if not storage or storage.get("size") in (None, ""):
        return None
    try:
        return parse_quantity(storage["size"])
    except ValueError:
        return None


def fenced(cluster: Cluster, pod: str) -> bool:
    return fencing.annotated(cluster, pod)


def _timestamp(status: dict[str, Any], key: str) -> tuple[float, bool]:
    text = status.get(key)
    if not text:
        return 0.0, True
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp(), True
    except ValueError:
        return 0.0, False


_BACKUP_TIMES = {
    "first_recoverability_point": (
        "firstRecoverabilityPoint",
        "FirstRecoverabilityPoint",
        "The first point of recoverability for the cluster as a unix timestamp (Deprecated)",
    ),
    "last_available_backup_timestamp": (
        "lastSuccessfulBackup",
        "LastAvailableBackupTimestamp",
        "The last available backup as a unix timestamp (Deprecated)",
    ),
    "last_failed_backup_timestamp": (
        "lastFailedBackup",
        "LastFailedBackupTimestamp",
        "The last failed backup as a unix timestamp (Deprecated)",
    ),
}


def cluster_families(cluster: Cluster, is_primary: bool, errors: list[str]) -> list[Family]:
    status = cluster.status or {}
    topology = status.get("topology") or {}
    nodes = float(topology.get("nodesUsed", -1)) if topology.get("successfullyExtracted") else -1.0
    switchover = is_primary and status.get("phase") == WAITING_FOR_USER
    out = [
        gauge(
            P + "manual_switchover_required",
            "1 if a manual switchover is required, 0 otherwise",
            float(switchover),
        ),
        gauge(P + "replica_mode", "1 if the cluster is in replica mode, 0 otherwise", 0.0),
        gauge(
            P + "nodes_used",
            "Distinct nodes hosting the cluster's instances (-1: not known)",
            nodes,
        ),
    ]
    for name, (key, label, help_text) in _BACKUP_TIMES.items():
        value, ok = _timestamp(status, key) if is_primary else (0.0, True)
        if not ok:
            errors.append(f"Collect.{label}")
        out.append(gauge(P + name, help_text, value))
    return out
