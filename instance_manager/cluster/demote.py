"""Demotion: a former primary rejoins as a standby of the new primary.

First every WAL segment still marked ``.ready`` goes to the archive through the plugins
(CloudNativePG 1.25): nothing the former primary wrote is lost to the archive. Then
pg_rewind brings the data directory to the new primary's timeline: ``pg_control`` is kept
as ``pg_control.old`` during the attempt (and put back if pg_rewind leaves it empty), WAL
the rewind needs comes from the archive through ``wal-restore --rewind``. When pg_rewind
cannot help (another system, WAL gone), the old data directory is moved aside and the
instance joins afresh.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from instance_manager import log
from instance_manager.cluster import join, standby
from instance_manager.postgres import bootstrap, config
from instance_manager.process import spawn
from instance_manager.settings import Peer, Settings
from instance_manager.state import InstanceState

_logger = log.get()
_rewind_logger = log.get("pg_rewind")
REWIND_TIMEOUT = 3600.0
# pg_rewind's words for a source it could not reach: try again later, do not re-clone.
_TRANSIENT = ("could not connect", "connection to server", "must not be in recovery")

ArchiveFile = Callable[[Path], Awaitable[None]]


class Outcome(enum.Enum):
    REWOUND = "rewound"
    UNREACHABLE = "unreachable"  # the source did not answer: try again
    IMPOSSIBLE = "impossible"  # pg_rewind cannot help: re-clone


async def archive_ready(pgdata: Path, archive: ArchiveFile) -> int:
    """Archive every segment marked ready, oldest first, marking each done."""
    status = pgdata / "pg_wal" / "archive_status"
    names = sorted(p.name[: -len(".ready")] for p in status.glob("*.ready"))
    for name in names:
        await archive(pgdata / "pg_wal" / name)
        (status / f"{name}.ready").rename(status / f"{name}.done")
    if names:
        log.event(_logger, "ready WAL archived before the rewind", count=len(names))
    return len(names)


def _protect_control(pgdata: Path) -> None:
    control, saved = pgdata / "global" / "pg_control", pgdata / "global" / "pg_control.old"
    if control.exists() and control.stat().st_size == 0 and saved.exists():
        shutil.copy2(saved, control)  # a previous attempt left it empty
    shutil.copy2(control, saved)


async def rewind(settings: Settings, primary: Peer, state: InstanceState) -> Outcome:
    pgdata = settings.pgdata
    rewind_restore = {"restore_command": config.restore_command(settings, rewind=True)}
    config.write_all(settings, recovery=rewind_restore)
    auto_conf = pgdata / "postgresql.auto.conf"
    if auto_conf.exists():
        auto_conf.chmod(0o600)  # pg_rewind replaces it with the source's
    await asyncio.to_thread(_protect_control, pgdata)
    argv = [
        settings.bin("pg_rewind"),
        "-P",
        "--source-server",
        standby.primary_conninfo(settings, primary),
        "--target-pgdata",
        str(pgdata),
        "--restore-target-wal",
    ]
    started = time.monotonic()
    state.pg_rewind_running = True
    try:
        code, out = await spawn.run(
            argv, env=spawn.base_env({"LC_ALL": "C"}), timeout=REWIND_TIMEOUT, check=False
        )
    finally:
        state.pg_rewind_running = False
    for line in out.splitlines():
        if line.strip():
            log.event(_rewind_logger, line.strip())
    seconds = round(time.monotonic() - started, 3)
    if code == 0:
        (pgdata / "global" / "pg_control.old").unlink(missing_ok=True)
        log.event(_logger, "pg_rewind done", seconds=seconds)
        return Outcome.REWOUND
    transient = any(word in out for word in _TRANSIENT)
    log.event(_logger, "pg_rewind failed", logging.WARNING, seconds=seconds, retry=transient)
    return Outcome.UNREACHABLE if transient else Outcome.IMPOSSIBLE


def finish(pgdata: Path) -> None:
    """The rewound directory becomes a standby's."""
    for marker in (bootstrap.PENDING_MARKER, bootstrap.CHECK_EMPTY_WAL_ARCHIVE):
        (pgdata / marker).unlink(missing_ok=True)
    standby.write_signal(pgdata)


def move_data_aside(settings: Settings) -> None:
    """Before a re-clone: PGDATA (and a separate WAL directory) out of the way."""
    join.move_aside(settings.pgdata)
    if settings.wal_dir is not None and settings.wal_dir.exists():
        join.move_aside(settings.wal_dir)
