"""Join: clone the current primary into an empty PGDATA with pg_basebackup (CNPG's join).

The HA slot of this instance is made to exist on the primary first, and pg_basebackup
streams its WAL through it (``-X stream -S``), so the primary keeps what the new standby
needs from the first byte copied. Progress (``-P``) goes to the instance state
(``/pg/status``) and to the logs. Once the copy is complete the data directory gets
``standby.signal``; the lifecycle then writes override.conf (primary_conninfo, slot,
restore_command) and starts the standby.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

from instance_manager import log
from instance_manager.cluster import standby
from instance_manager.errors import CommandError
from instance_manager.postgres import bootstrap
from instance_manager.process import spawn
from instance_manager.settings import Peer, Settings
from instance_manager.state import ClusterState

_logger = log.get()
_pg_basebackup_logger = log.get("pg_basebackup")
# A copy of a large database takes hours; this only bounds a wedged pg_basebackup.
BASEBACKUP_TIMEOUT = 24 * 3600.0
PROGRESS_LOG_INTERVAL = 1.0
SLOT_TIMEOUT = 10.0
_PROGRESS = re.compile(r"(\d+)/(\d+) kB \((\d+)%\)")
# Files of the primary's own life that a standby must not inherit.
_PRIMARY_MARKERS = (bootstrap.PENDING_MARKER, bootstrap.CHECK_EMPTY_WAL_ARCHIVE)


async def ensure_slot(settings: Settings, primary: Peer) -> None:
    """This instance's HA slot on ``primary``, created when missing (idempotent)."""
    import psycopg

    slot = standby.slot_name(settings)
    if slot is None:
        return
    params = standby.conninfo_params(settings, primary)
    async with asyncio.timeout(SLOT_TIMEOUT):
        conn = await psycopg.AsyncConnection.connect(
            standby.conninfo_string(params), autocommit=True
        )
        async with conn:
            cur = await conn.execute(
                "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", [slot]
            )
            if await cur.fetchone():
                return
            try:
                await conn.execute(
                    "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", [slot]
                )
            except psycopg.errors.DuplicateObject:
                return  # created meanwhile (the primary's slot reconciler)
    log.event(_logger, "replication slot created on the primary", slot=slot)


def basebackup_argv(settings: Settings, primary: Peer) -> list[str]:
    argv = [
        settings.bin("pg_basebackup"),
        "-D",
        str(settings.pgdata),
        "-d",
        standby.primary_conninfo(settings, primary),
        "-X",
        "stream",
        # A spread checkpoint after heavy writes holds a join for minutes.
        "--checkpoint=fast",
        "-P",
        "-v",
        "--no-password",
    ]
    slot = standby.slot_name(settings)
    if slot is not None:
        argv += ["-S", slot]
    if settings.wal_dir is not None:
        argv.append(f"--waldir={settings.wal_dir}")
    return argv


async def clone(settings: Settings, primary_name: str, primary: Peer, state: ClusterState) -> None:
    """pg_basebackup from ``primary`` into the empty PGDATA, then standby.signal."""
    started = time.monotonic()
    state.join = {"phase": "cloning", "source": primary_name, "percent": 0}
    await ensure_slot(settings, primary)
    argv = basebackup_argv(settings, primary)
    log.event(_logger, "cloning the primary", source=primary_name, argv=argv)
    lines: list[str] = []
    async with spawn.child(argv, env=spawn.base_env({"LC_ALL": "C"})) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(BASEBACKUP_TIMEOUT):
            await _follow(proc.stdout, state, lines)
            code = await proc.wait()
    if code != 0:
        state.join = {"phase": "failed", "source": primary_name}
        raise CommandError(argv, code, "\n".join(lines[-20:]))
    for marker in _PRIMARY_MARKERS:
        (settings.pgdata / marker).unlink(missing_ok=True)
    standby.write_signal(settings.pgdata)
    seconds = round(time.monotonic() - started, 3)
    state.join = {**state.join, "phase": "done", "percent": 100, "seconds": seconds}
    log.event(_logger, "clone complete", source=primary_name, seconds=seconds)


async def _follow(stream: asyncio.StreamReader, state: ClusterState, lines: list[str]) -> None:
    """pg_basebackup's output: progress into the state, other lines into the logs."""
    logged_at = 0.0
    pending = b""
    while chunk := await stream.read(4096):
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]", pending)
        for raw in complete:
            text = raw.decode(errors="replace").strip()
            if not text:
                continue
            match = _PROGRESS.search(text)
            if match is None:
                lines.append(text)
                log.event(_pg_basebackup_logger, text)
                continue
            done, total, percent = (int(g) for g in match.groups())
            state.join.update(doneKiB=done, totalKiB=total, percent=percent)
            if time.monotonic() - logged_at >= PROGRESS_LOG_INTERVAL:
                logged_at = time.monotonic()
                log.event(_logger, "clone progress", doneKiB=done, totalKiB=total, percent=percent)


def move_aside(path: Path) -> Path:
    """Rename a data (or WAL) directory that cannot be used, keeping it for inspection."""
    target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(target)
    log.event(_logger, "moved a directory aside", logging.WARNING, path=str(path), to=str(target))
    return target
