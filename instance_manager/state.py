"""Instance state: written by the lifecycle loop only, read by everyone else."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


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
    is_primary: bool | None = None
    written_config_hash: str = ""
    loaded_config_hash: str = ""
    pending_restart: tuple[str, ...] = ()
    postmaster_starts: int = 0
    last_postmaster_exit: str = ""
    started_at: float = field(default_factory=time.time)
