"""Instance state: written by the lifecycle loop only, read by everyone else."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from instance_manager.conditions import ConditionStore


@dataclass
class InstanceState:
    """What the probes and the status endpoint report. One writer: the lifecycle."""

    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    postmaster_pid: int | None = None
    # True while a postmaster started by, or adopted by, this daemon runs
    # (CNPG's canCheckReadiness).
    postmaster_running: bool = False
    # An outage we caused on purpose (restart, shutdown): startup probe says Skipped.
    might_be_unavailable: bool = False
    stopping: bool = False
    pg_rewind_running: bool = False
    # Fenced: PostgreSQL stays down on purpose (a fencing command sets it; /pg/archive/partial
    # requires it).
    fenced: bool = False
    is_primary: bool | None = None
    written_config_hash: str = ""
    loaded_config_hash: str = ""
    pending_restart: tuple[str, ...] = ()
    # The last configuration reload, when it failed (retried with back-off until it works).
    reload_error: str = ""
    reload_failed_at: float | None = None
    reload_failures: int = 0  # consecutive failures; 0 once a reload works
    reload_failures_total: int = 0
    postmaster_starts: int = 0
    last_postmaster_exit: str = ""
    started_at: float = field(default_factory=time.time)
    wal_segment_size: int = 16 * 1024 * 1024  # read from pg_controldata at each start
    wal: WalState = field(default_factory=lambda: WalState())
    # Standalone cluster mode; written by the cluster reconciler.
    cluster: ClusterState = field(default_factory=lambda: ClusterState())
    # The local API's /cache/<key> values (cluster/cache.py fills them) and this instance's
    # Cluster conditions.
    cache: dict[str, Any] = field(default_factory=dict)
    conditions: ConditionStore = field(default_factory=lambda: ConditionStore())

    def reload_failed(self, error: str) -> None:
        self.reload_error = error
        self.reload_failed_at = time.time()
        self.reload_failures += 1
        self.reload_failures_total += 1

    def reload_succeeded(self) -> None:
        self.reload_error = ""
        self.reload_failed_at = None
        self.reload_failures = 0


@dataclass
class ClusterState:
    """This instance in its cluster: /pg/status shows it (empty outside cluster mode)."""

    enabled: bool = False
    role: str = "unknown"
    target_primary: str = ""
    current_primary: str = ""
    # pg_basebackup of a join: phase, doneKiB, totalKiB, percent, source.
    join: dict[str, Any] = field(default_factory=dict)
    # A primary's pg_stat_replication, a standby's WAL receiver.
    replication: list[dict[str, Any]] = field(default_factory=list)
    last_error: str = ""
    # Why this primary counts as isolated ("" when it is not): /healthz answers 500 with it.
    isolation: str = ""
    # Where this instance stands in a rolling restart ("" when nothing waits for one).
    rolling: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "targetPrimary": self.target_primary,
            "currentPrimary": self.current_primary,
            "join": self.join,
            "replication": self.replication,
            "lastError": self.last_error,
            "rollingRestart": self.rolling,
        }


@dataclass
class WalState:
    """Archiving and restore outcomes, for the status endpoint and metrics."""

    last_archived_wal: str = ""
    last_archived_time: float | None = None
    last_failed_wal: str = ""
    last_failed_time: float | None = None
    last_failed_error: str = ""
    ready_wal_files: int = 0  # the archive backlog: .ready files in pg_wal/archive_status
    archived_count: int = 0
    archived_ahead: int = 0  # of which look-ahead archived before PostgreSQL asked
    failed_count: int = 0
    last_restored_wal: str = ""
    restored_count: int = 0
    restored_from_spool: int = 0

    def archived(self, name: str, ahead: bool = False) -> None:
        self.last_archived_wal = name
        self.last_archived_time = time.time()
        self.archived_count += 1
        self.archived_ahead += int(ahead)

    def failed(self, name: str, error: str) -> None:
        self.last_failed_wal = name
        self.last_failed_time = time.time()
        self.last_failed_error = error
        self.failed_count += 1
