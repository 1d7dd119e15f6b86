"""Plugin backups: ``Backup.Backup`` on the CNPG-I plugin named in the backup definition.

As CNPG does: the plugin is looked up by its socket in the plugin directory (it need not be
enabled in ``spec.plugins``), must advertise the Backup service and its BACKUP RPC, and gets
``BackupRequest{cluster_definition, backup_definition, parameters}`` with the Cluster and
Backup resources as JSON. The call runs in the background; its outcome is kept here (name
-> record; the running backups and the latest finished, MAX_RECORDS in all).

A request that cannot start a backup raises ``InvalidBackup`` (malformed: an unknown method,
parameters that are not a mapping) or ``BackupConflict`` (nothing configured to take it, or
already running), as CNPG tells the two apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instance_manager import log
from instance_manager.plugins import selection
from instance_manager.settings import Settings

_logger = log.get("backup")
# A base backup of a large database through object storage can take many hours.
BACKUP_RPC_TIMEOUT = 24 * 3600.0
# Backups remembered: the running ones and the latest finished. Any local process may ask
# for a backup, so a request loop must not grow this without bound.
MAX_RECORDS = 100


class BackupRefused(Exception):
    """The request cannot start a backup."""


class InvalidBackup(BackupRefused):
    """The request or its Backup resource is malformed."""


class BackupConflict(BackupRefused):
    """No backup of that kind is configured, or it cannot start now (already running)."""


@dataclass
class BackupRecord:
    name: str
    plugin: str
    phase: str = "running"  # running | completed | failed
    error: str = ""
    started_at: float = field(default_factory=time.time)
    stopped_at: float | None = None
    result: dict[str, Any] = field(default_factory=dict)


def backup_definition(
    settings: Settings, name: str, given: dict[str, Any] | None, plugin: str
) -> dict[str, Any]:
    """The Backup resource: the one given, or one built from the request (standalone)."""
    meta = settings.cluster.metadata
    backup: dict[str, Any] = dict(given or {})
    for part in ("metadata", "spec"):
        if backup.get(part) is not None and not isinstance(backup[part], dict):
            raise InvalidBackup(f"the Backup's {part} must be an object")
    backup.setdefault("apiVersion", "postgresql.cnpg.io/v1")
    backup.setdefault("kind", "Backup")
    metadata = dict(backup.get("metadata") or {})
    metadata.setdefault("name", name)
    metadata.setdefault("namespace", meta.namespace)
    backup["metadata"] = metadata
    spec = dict(backup.get("spec") or {})
    spec.setdefault("cluster", {"name": meta.name})
    spec.setdefault("method", "plugin")
    if plugin and not spec.get("pluginConfiguration"):
        spec["pluginConfiguration"] = {"name": plugin}
    backup["spec"] = spec
    return backup


def plugin_of(backup: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(plugin name, parameters); BackupRefused as CNPG answers for other methods."""
    spec = backup.get("spec") or {}
    method = spec.get("method")
    if method == "barmanObjectStore":
        raise BackupConflict("Barman backup not configured in the cluster")
    if method != "plugin":
        raise InvalidBackup(f"Unknown backup method: {method}")
    configuration = spec.get("pluginConfiguration") or {}
    name = configuration.get("name") if isinstance(configuration, dict) else None
    if not isinstance(name, str) or not name:
        raise BackupConflict("Plugin backup not configured in the cluster")
    parameters = configuration.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise InvalidBackup("pluginConfiguration.parameters must be a mapping")
    return name, {str(k): str(v) for k, v in parameters.items()}


class PluginBackups:
    def __init__(
        self, settings: Callable[[], Settings], rpc_timeout: float = BACKUP_RPC_TIMEOUT
    ) -> None:
        self._settings = settings
        self.rpc_timeout = rpc_timeout
        self.records: dict[str, BackupRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, name: str, backup: dict[str, Any]) -> BackupRecord:
        plugin, parameters = plugin_of(backup)
        running = self.records.get(name)
        if running is not None and running.phase == "running":
            raise BackupConflict(f"backup {name} is already running")
        self.records.pop(name, None)  # a finished one: its name goes to the newest record
        self._make_room()
        record = BackupRecord(name, plugin)
        self.records[name] = record
        task = asyncio.get_running_loop().create_task(self._run(record, backup, parameters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    def _make_room(self) -> None:
        """Forget the oldest finished records so that one more fits; BackupConflict if all are
        running."""
        excess = len(self.records) + 1 - MAX_RECORDS
        finished = [name for name, r in self.records.items() if r.phase != "running"]
        for name in finished[: max(excess, 0)]:
            del self.records[name]
        if len(self.records) >= MAX_RECORDS:
            raise BackupConflict(f"{len(self.records)} backups are already running")

    async def wait(self) -> None:
        """Until the running backups are done (tests, shutdown)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.wait()

    async def _run(
        self, record: BackupRecord, backup: dict[str, Any], parameters: dict[str, str]
    ) -> None:
        log.event(_logger, "plugin backup started", backup=record.name, plugin=record.plugin)
        try:
            result = await self._call(record.plugin, backup, parameters)
        except asyncio.CancelledError:
            record.phase, record.error = "failed", "cancelled"
            raise
        except Exception as exc:
            record.phase, record.error = "failed", str(exc).strip() or type(exc).__name__
            # A plugin the cluster does not enable is the caller's mistake, not ours.
            known = record.plugin in selection.enabled(self._settings().cluster)
            log.event(
                _logger,
                "plugin backup failed",
                logging.ERROR if known else logging.WARNING,
                backup=record.name,
                error=record.error,
            )
        else:
            record.phase, record.result = "completed", result
            log.event(
                _logger,
                "plugin backup completed",
                backup=record.name,
                backup_id=result.get("backupID"),
            )
        finally:
            record.stopped_at = time.time()

    async def _call(
        self, plugin_name: str, backup: dict[str, Any], parameters: dict[str, str]
    ) -> dict[str, Any]:
        # gRPC is imported only when a backup is asked for.
        from instance_manager.plugins._gen import backup_pb2, identity_pb2
        from instance_manager.plugins.connection import Plugin, describe
        from instance_manager.plugins.registry import sockets

        s = self._settings()
        directory = s.instance.pluginSocketDir
        if plugin_name not in await asyncio.to_thread(sockets, directory):
            raise RuntimeError(f"requested plugin is not available: {plugin_name}")
        plugin = Plugin(plugin_name, directory / plugin_name, pool_size=1)
        request = backup_pb2.BackupRequest(
            cluster_definition=json.dumps(s.cluster.to_json_dict()).encode(),
            backup_definition=json.dumps(backup).encode(),
            parameters=parameters,
        )
        try:
            async with plugin.channel() as ch:
                assert ch.handshake is not None
                if identity_pb2.PluginCapability.Service.TYPE_BACKUP_SERVICE not in (
                    ch.handshake.services
                ):
                    raise RuntimeError(f"plugin {plugin_name} does not provide the Backup service")
                if backup_pb2.BackupCapability.RPC.TYPE_BACKUP not in ch.handshake.backup:
                    raise RuntimeError(f"plugin {plugin_name} does not implement Backup")
                async with asyncio.timeout(self.rpc_timeout):
                    response = await ch.backup.Backup(request, timeout=self.rpc_timeout)
        except Exception as exc:
            if type(exc).__name__ == "AioRpcError":
                raise RuntimeError(f"plugin {plugin_name}: {describe(exc)}") from exc
            raise
        finally:
            await plugin.close()
        return _result(response)


def _result(response: Any) -> dict[str, Any]:
    """The BackupResult in the shape of the Backup status fields it fills."""
    return {
        "backupID": response.backup_id,
        "backupName": response.backup_name,
        "startedAt": response.started_at,
        "stoppedAt": response.stopped_at,
        "beginWal": response.begin_wal,
        "endWal": response.end_wal,
        "beginLSN": response.begin_lsn,
        "endLSN": response.end_lsn,
        "backupLabelFile": response.backup_label_file,
        "tablespaceMapFile": response.tablespace_map_file,
        "instanceID": response.instance_id,
        "online": response.online,
        "pluginMetadata": dict(response.metadata),
    }
