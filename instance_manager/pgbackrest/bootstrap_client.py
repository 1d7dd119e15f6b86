"""The daemon's side of a recovery bootstrap through a CNPG-I plugin (``bootstrap.recovery``
whose ``source`` is an external cluster with a ``plugin``), as CloudNativePG's full-recovery
job does it, before the instance starts for good:

1. ``RestoreJobHooks.Restore`` on the plugin: it restores a backup into PGDATA and answers
   the settings that stop recovery at the target (``restore_config``);
2. those settings go to ``postgresql.auto.conf`` (read after every other file) between two
   marker lines, with ``recovery.signal``;
3. PostgreSQL runs, replays WAL through the daemon's ``restore_command`` (so the WAL server
   must already serve) and promotes itself at the target;
4. it is stopped, and the settings are removed: a standby cloned from this instance later
   must not inherit a recovery target.

A marker file beside PGDATA records the step reached, so a restart after a crash resumes
(an interrupted restore is done again, an interrupted recovery goes on) instead of
starting a half-restored PGDATA as if it were complete.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from pathlib import Path
from typing import Any

import grpc

from instance_manager import log
from instance_manager.cluster_model import Cluster
from instance_manager.errors import InstanceManagerError, PluginError
from instance_manager.plugins._gen import identity_pb2, restore_job_pb2, restore_job_pb2_grpc
from instance_manager.plugins.connection import LOAD_TIMEOUT, Plugin, describe
from instance_manager.postgres import config, postmaster, shutdown, waldir
from instance_manager.postgres import sql as pgsql
from instance_manager.settings import Settings
from instance_manager.wal.backend import SKIP_EMPTY_CHECK_ANNOTATION

_logger = log.get("recovery")
MARKER = ".instance-manager-recovery"  # beside PGDATA: a restore replaces PGDATA's content
RESTORING, RECOVERING = "restoring", "recovering"
BEGIN = "# BEGIN recovery target from plugin {name}: removed once PostgreSQL has promoted"
END = "# END recovery target"
# How long to wait for the plugin's socket: in a pod the sidecar starts first; standalone
# they may start together.
SOCKET_WAIT = 60.0
POLL_INTERVAL = 0.1
MAX_POLL_INTERVAL = 1.0
SQL_TIMEOUT = 5.0
# Restoring a base backup of a large database from object storage can take many hours.
RESTORE_RPC_TIMEOUT = 24 * 3600.0
LAST_LINES = 20
KIND_RESTORE = restore_job_pb2.RestoreJobHooksCapability.KIND_RESTORE


class RecoveryError(InstanceManagerError):
    """The recovery bootstrap did not reach a promoted instance."""


def plugin_source(cluster: Cluster) -> str | None:
    """The plugin serving the external cluster that ``bootstrap.recovery.source`` names."""
    recovery = cluster.spec.bootstrap.recovery or {}
    source = recovery.get("source")
    for entry in cluster.spec.externalClusters or []:
        plugin = entry.get("plugin")
        if entry.get("name") != source or not isinstance(plugin, dict):
            continue
        if plugin.get("name") and plugin.get("enabled", True) is not False:
            return str(plugin["name"])
    return None


def marker_path(settings: Settings) -> Path:
    return settings.pgdata.parent / MARKER


def _step(settings: Settings) -> str:
    try:
        return marker_path(settings).read_text().strip()
    except FileNotFoundError:
        return ""


def restore_needed(settings: Settings) -> bool:
    """A plugin recovery is configured and PGDATA is empty, or an earlier one did not end."""
    if plugin_source(settings.cluster) is None:
        return False
    pgdata = settings.pgdata
    return bool(_step(settings)) or not pgdata.exists() or not any(pgdata.iterdir())


async def restore_from_plugin(settings: Settings) -> None:
    """Restore, recover to the target, promote, stop; a no-op unless :func:`restore_needed`."""
    name = plugin_source(settings.cluster)
    if name is None or not restore_needed(settings):
        return
    marker = marker_path(settings)
    started = time.monotonic()
    if _step(settings) != RECOVERING:
        config.write_atomic(marker, RESTORING + "\n", 0o600)
        restore_config = await call_restore(settings, name)
        write_recovery_settings(settings.pgdata, name, restore_config)
        config.write_atomic(marker, RECOVERING + "\n", 0o600)
    # A restore brings pg_wal back as a directory: recovery replays on the WAL volume.
    await asyncio.to_thread(waldir.place, settings)
    await recover(settings)
    clear_recovery_settings(settings.pgdata)
    marker.unlink()
    log.event(_logger, "recovery bootstrap complete", seconds=round(time.monotonic() - started, 3))


# -- 1. the plugin ------------------------------------------------------------------------


async def wait_for_socket(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _exists(path):
        if time.monotonic() > deadline:
            raise PluginError(f"recovery plugin socket {path} did not appear in {timeout:g} s")
        await asyncio.sleep(POLL_INTERVAL)


def check_empty_archive(cluster: Cluster) -> bool:
    return cluster.metadata.annotations.get(SKIP_EMPTY_CHECK_ANNOTATION) != "enabled"


async def call_restore(settings: Settings, name: str) -> str:
    """``RestoreJobHooks.Restore`` on the plugin, within RESTORE_RPC_TIMEOUT."""
    socket = settings.instance.pluginSocketDir / name
    await wait_for_socket(socket, SOCKET_WAIT)
    plugin = Plugin(name, socket, pool_size=1)
    request = restore_job_pb2.RestoreRequest(
        cluster_definition=json.dumps(settings.cluster.to_json_dict()).encode(),
        check_empty_wal_archive=check_empty_archive(settings.cluster),
    )
    try:
        async with plugin.channel() as ch:
            services = ch.handshake.services if ch.handshake else frozenset()
            if identity_pb2.PluginCapability.Service.TYPE_RESTORE_JOB not in services:
                raise PluginError(f"plugin {name} does not offer the restore job service")
            stub: Any = restore_job_pb2_grpc.RestoreJobHooksStub(ch.channel)
            async with asyncio.timeout(LOAD_TIMEOUT):
                caps = await stub.GetCapabilities(
                    restore_job_pb2.RestoreJobHooksCapabilitiesRequest(), timeout=LOAD_TIMEOUT
                )
            if KIND_RESTORE not in {c.kind for c in caps.capabilities}:
                raise PluginError(f"plugin {name} cannot restore a backup (no KIND_RESTORE)")
            log.event(_logger, "restoring a backup through the plugin", plugin=name)
            response = await stub.Restore(request, timeout=RESTORE_RPC_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise PluginError(f"plugin {name} could not restore a backup: {describe(exc)}") from exc
    finally:
        await plugin.close()
    if response.envs:
        log.event(
            _logger,
            "the plugin's environment for recovery is not applied",
            logging.WARNING,
            envs=[env.split("=", 1)[0] for env in response.envs],
        )
    return str(response.restore_config)


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


def _exists(path: Path) -> bool:
    return path.exists()
