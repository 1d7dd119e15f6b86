"""The exporter's bookkeeping: its own metrics (collections, errors, durations, up), the
query cache with its self metrics, and the names no query or plugin may take.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from instance_manager.cluster_model import Cluster
from instance_manager.metrics import archive, builtin
from instance_manager.metrics.exposition import Family, gauge
from instance_manager.metrics.versions import parse_go_duration
from instance_manager.state import InstanceState

P = builtin.P
DEFAULT_QUERIES_TTL = 30.0  # spec.monitoring.metricsQueriesTTL when unset (CNPG's default)
SELF_NAMES = (
    "collections_total",
    "last_collection_error",
    "collection_errors_total",
    "up",
    "collection_duration_seconds",
)
BUILTIN_NAMES = (
    "manual_switchover_required",
    "replica_mode",
    "nodes_used",
    "first_recoverability_point",
    "last_available_backup_timestamp",
    "last_failed_backup_timestamp",
    "fencing_on",
    "sync_replicas",
    "postgres_version",
    "pg_wal_archive_status",
    "pg_wal",
    "config_reload_failed",
    "config_reload_failures_total",
    *builtin.STAT_WAL,
    *builtin.STAT_WAL_IO,
)
QUERY_SELF = (
    "cnpg_errors_total",
    "cnpg_last_error",
    "cnpg_last_update_timestamp",
    "cnpg_cache_hits",
    "cnpg_cache_miss",
)
RESERVED = frozenset(
    {P + n for n in SELF_NAMES + BUILTIN_NAMES} | set(QUERY_SELF) | set(archive.NAMES)
)


@dataclass
class Stats:
    total: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    durations: dict[str, float] = field(default_factory=dict)
    last_error: bool = False
    up: float | None = None

    def families(self, cluster_name: str) -> list[Family]:
        total = Family(
            P + "collections_total",
            "Total number of times PostgreSQL was accessed for metrics.",
            "counter",
        )
        total.add((), float(self.total))
        errors = Family(
            P + "collection_errors_total",
            "Total errors occurred accessing PostgreSQL for metrics.",
            "counter",
        )
        for label, count in sorted(self.errors.items()):
            errors.add((("collector", label),), float(count))
        up = gauge(P + "up", "1 if PostgreSQL is up, 0 otherwise.")
        if self.up is not None:
            up.add((("cluster", cluster_name),), self.up)
        durations = gauge(P + "collection_duration_seconds", "Collection time duration in seconds")
        for label, seconds in sorted(self.durations.items()):
            durations.add((("collector", label),), seconds)
        last = gauge(
            P + "last_collection_error",
            "1 if the last collection ended with error, 0 otherwise.",
            float(self.last_error),
        )
        return [total, last, errors, up, durations]


def reload_families(state: InstanceState) -> list[Family]:
    """Whether the configuration reload is failing (it is retried), and how often it did."""
    failed = gauge(
        P + "config_reload_failed",
        "1 if the last configuration reload failed (it is being retried), 0 otherwise",
        float(state.reload_failures > 0),
    )
    total = Family(
        P + "config_reload_failures_total",
        "Total failed attempts to apply the configuration to PostgreSQL",
        "counter",
    )
    total.add((), float(state.reload_failures_total))
    return [failed, total]


@dataclass
class QueryCache:
    text: bytes
    names: frozenset[str]
    errors: list[str]
    key: tuple[int, bool]
    updated: float  # time.time()
    updated_mono: float
    hits: int = 0
    miss: bool = True

    def families(self) -> list[Family]:
        errors = Family(
            "cnpg_errors_total", "Total errors occurred performing user queries.", "counter"
        )
        for label, count in sorted(collections.Counter(self.errors).items()):
            errors.add((("errorUserQueries", label),), float(count))
        values = {
            "cnpg_last_error": float(bool(self.errors)),
            "cnpg_last_update_timestamp": float(int(self.updated)),
            "cnpg_cache_hits": float(self.hits),
            "cnpg_cache_miss": float(self.miss),
        }
        return [errors] + [gauge(n, _QUERY_SELF_HELP[n], v) for n, v in values.items()]


_QUERY_SELF_HELP = {
    "cnpg_last_error": "1 if the last update of the query metrics had an error, 0 otherwise.",
    "cnpg_last_update_timestamp": "Timestamp of the last update of the query metrics.",
    "cnpg_cache_hits": "Scrapes served from the current query cache.",
    "cnpg_cache_miss": "1 if the query metrics were recomputed for the last scrape, 0 if cached.",
}


def queries_ttl(cluster: Cluster) -> float:
    raw = cluster.spec.monitoring.metricsQueriesTTL
    if raw is None or raw == "":
        return DEFAULT_QUERIES_TTL
    try:
        return max(0.0, parse_go_duration(raw))
    except ValueError:
        return DEFAULT_QUERIES_TTL


def default_database(cluster: Cluster) -> str:
    """Where queries without target_databases run: the application database."""
    bootstrap = cluster.spec.bootstrap
    for method in (bootstrap.recovery, bootstrap.pg_basebackup):
        if method and method.get("database"):
            return str(method["database"])
    return bootstrap.initdb.database or "postgres"
