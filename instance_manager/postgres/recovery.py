"""A recovery bootstrap through a CNPG-I plugin (``bootstrap.recovery`` whose ``source`` is an
external cluster with a ``plugin``), as CloudNativePG's full-recovery job does it, before the
instance starts for good:

1. the plugin restores a backup into PGDATA and answers the settings that stop recovery at
   the target (``restore_config``; the RPC is plugins/recovery.py's, passed in as ``restore``);
2. those settings go to ``postgresql.auto.conf`` (read after every other file) between two
   marker lines, with ``recovery.signal``;
3. PostgreSQL runs, replays WAL through the daemon's ``restore_command`` (so the WAL server
   must already serve) and promotes itself at the target;
4. it is stopped, and the settings are removed: a standby cloned from this instance must not
   inherit a recovery target.

A marker file beside PGDATA records the step reached, so a restart after a crash resumes
(an interrupted restore is done again, an interrupted recovery goes on) instead of
starting a half-restored PGDATA as if it were complete.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from instance_manager import log
from instance_manager.errors import InstanceManagerError, PluginError
from instance_manager.plugins.selection import recovery_source
from instance_manager.postgres import config, postmaster, shutdown, waldir
from instance_manager.postgres import sql as pgsql
from instance_manager.settings import Settings

_logger = log.get("recovery")
MARKER = ".instance-manager-recovery"  # beside PGDATA: a restore replaces PGDATA's content
RESTORING, RECOVERING = "restoring", "recovering"
BEGIN = "# BEGIN recovery target from plugin {name}: removed once PostgreSQL has promoted"
END = "# END recovery target"
POLL_INTERVAL = 0.1
MAX_POLL_INTERVAL = 1.0
SQL_TIMEOUT = 5.0
LAST_LINES = 20

# Restores a backup of the named plugin into PGDATA; answers the plugin's restore_config.
RestoreCall = Callable[[Settings, str], Awaitable[str]]


class RecoveryError(InstanceManagerError):
    """The recovery bootstrap did not reach a promoted instance."""


def marker_path(settings: Settings) -> Path:
    return settings.pgdata.parent / MARKER


def _step(settings: Settings) -> str:
    try:
        return marker_path(settings).read_text().strip()
    except FileNotFoundError:
        return ""


def restore_needed(settings: Settings) -> bool:
    """A plugin recovery is configured and PGDATA is empty, or an earlier one did not end."""
    if recovery_source(settings.cluster) is None:
        return False
    pgdata = settings.pgdata
    return bool(_step(settings)) or not pgdata.exists() or not any(pgdata.iterdir())


async def restore_from_plugin(settings: Settings, restore: RestoreCall) -> None:
    """Restore, recover to the target, promote, stop; a no-op unless :func:`restore_needed`."""
    name = recovery_source(settings.cluster)
    if name is None or not restore_needed(settings):
        return
    marker = marker_path(settings)
    started = time.monotonic()
    if _step(settings) != RECOVERING:
        config.write_atomic(marker, RESTORING + "\n", 0o600)
        restore_config = await restore(settings, name)
        write_recovery_settings(settings.pgdata, name, restore_config)
        config.write_atomic(marker, RECOVERING + "\n", 0o600)
    # A restore brings pg_wal back as a directory: recovery replays on the WAL volume.
    await asyncio.to_thread(waldir.place, settings)
    await recover(settings)
    clear_recovery_settings(settings.pgdata)
    marker.unlink()
    log.event(_logger, "recovery bootstrap complete", seconds=round(time.monotonic() - started, 3))


# -- 2. the recovery settings -------------------------------------------------------------


def write_recovery_settings(pgdata: Path, name: str, settings_text: str) -> None:
    """Append the plugin's settings to postgresql.auto.conf; create recovery.signal."""
    if "\0" in settings_text:
        raise PluginError(f"plugin {name}: restore_config contains a NUL byte")
    lines = [line for line in settings_text.splitlines() if line.strip()]
    if any(line.startswith("# BEGIN recovery target") or line == END for line in lines):
        raise PluginError(f"plugin {name}: restore_config contains our marker lines")
    auto = pgdata / "postgresql.auto.conf"
    text = _without_block(auto.read_text() if auto.exists() else "")
    block = [BEGIN.format(name=name), *lines, END]
    mode = auto.stat().st_mode & 0o777 if auto.exists() else 0o600
    config.write_atomic(auto, text + "\n".join(block) + "\n", mode)
    (pgdata / "recovery.signal").touch(mode=0o600)
    log.event(_logger, "recovery settings written", settings=lines)


def _without_block(text: str) -> str:
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("# BEGIN recovery target from plugin"):
            inside = True
        elif inside and line.rstrip("\n") == END:
            inside = False
        elif not inside:
            kept.append(line)
    result = "".join(kept)
    return result if not result or result.endswith("\n") else result + "\n"


def clear_recovery_settings(pgdata: Path) -> bool:
    """Remove our block from postgresql.auto.conf; True if there was one."""
    auto = pgdata / "postgresql.auto.conf"
    try:
        text = auto.read_text()
    except FileNotFoundError:
        return False
    kept = _without_block(text)
    if kept == text:
        return False
    config.write_atomic(auto, kept, auto.stat().st_mode & 0o777)
    return True


# -- 3, 4. recovery until promotion -------------------------------------------------------


async def recover(settings: Settings) -> None:
    """Run PostgreSQL until it has promoted at the target, then stop it."""
    config.write_all(settings)
    lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
    pm = await postmaster.start(settings, lines.append)
    log.event(_logger, "PostgreSQL replaying WAL towards the recovery target", pid=pm.pid)
    try:
        await wait_promoted(settings, pm, lines)
        log.event(_logger, "PostgreSQL promoted at the recovery target")
    finally:
        if pm.running:
            spec = settings.cluster.spec
            # Fast, not smart: nobody but us is connected, and a smart stop would wait.
            plan = shutdown.plan(0, spec.stopDelay)
            await shutdown.stop(pm, plan, asyncio.Event(), None)


async def wait_promoted(
    settings: Settings, pm: postmaster.Postmaster, lines: collections.deque[str]
) -> None:
    """Until ``pg_is_in_recovery()`` is false: the end-of-recovery checkpoint is written, so
    a stop now cannot lead to a crash recovery that replays WAL past the target (PostgreSQL
    removes recovery.signal earlier than that). RecoveryError if PostgreSQL stops first."""
    delay = POLL_INTERVAL
    while pm.running:
        if not await _in_recovery(settings):
            return
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, MAX_POLL_INTERVAL)  # a long recovery: ask once a second
    status = await pm.wait()
    raise RecoveryError(
        f"PostgreSQL stopped before promoting at the recovery target ({status}); "
        f"last lines: {' | '.join(lines) or 'none'}"
    )


async def _in_recovery(settings: Settings) -> bool:
    """True while recovering, or while PostgreSQL does not accept connections yet."""
    import psycopg

    try:
        conn = await pgsql.connect(settings, timeout=SQL_TIMEOUT)
        async with conn:
            async with asyncio.timeout(SQL_TIMEOUT):
                row = await (await conn.execute("SELECT pg_catalog.pg_is_in_recovery()")).fetchone()
    except (psycopg.OperationalError, TimeoutError):
        return True  # starting up, or not consistent yet
    return bool(row is None or row[0])
