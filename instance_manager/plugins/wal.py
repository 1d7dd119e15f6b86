"""WAL archive and restore through CNPG-I plugins (the daemon's WalBackend).

Archive: every usable plugin advertising ARCHIVE_WAL, in name order; the first error
aborts. Restore: each plugin advertising RESTORE_WAL in order until one succeeds. Each
call to each plugin has the registry's deadline (``instance.pluginTimeout``): a stopped or
wedged plugin makes the request fail, and PostgreSQL tries again later.
``WAL.Status`` and ``WAL.SetFirstRequired`` are never called: real plugins leave them
unimplemented.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from instance_manager.errors import PluginError, WalNotFound
from instance_manager.plugins._gen import wal_pb2
from instance_manager.plugins.connection import describe
from instance_manager.plugins.registry import Registry

RPC = wal_pb2.WALCapability.RPC.Type
Mode = wal_pb2.WALRestoreRequest.Mode


class PluginWal:
    def __init__(
        self,
        registry: Registry,
        cluster_json: Callable[[], bytes],
        check_empty_archive: Callable[[], bool],
    ) -> None:
        self.registry = registry
        self.cluster_json = cluster_json
        self.check_empty_archive = check_empty_archive

    async def archive(self, source: Path) -> None:
        plugins = [
            p
            for p in await self.registry.usable()
            if p.handshake and RPC.TYPE_ARCHIVE_WAL in p.handshake.wal
        ]
        if not plugins:
            return  # no archiver configured: CloudNativePG reports success too
        request = wal_pb2.WALArchiveRequest(
            cluster_definition=self.cluster_json(),
            source_file_name=str(source),
            check_empty_wal_archive=self.check_empty_archive(),
        )
        what = f"WAL.Archive of {source.name}"
        for plugin in plugins:
            try:
                await plugin.call(
                    lambda ch: ch.wal.Archive, request, timeout=self.registry.timeout(), what=what
                )
            except grpc.aio.AioRpcError as exc:
                raise PluginError(
                    f"plugin {plugin.name} could not archive {source.name}: {describe(exc)}"
                ) from exc

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        plugins = [
            p
            for p in await self.registry.usable(restore=True)
            if p.handshake and RPC.TYPE_RESTORE_WAL in p.handshake.wal
        ]
        if not plugins:
            raise WalNotFound(f"{name}: no plugin can restore WAL")
        request = wal_pb2.WALRestoreRequest(
            cluster_definition=self.cluster_json(),
            source_wal_name=name,
            destination_file_name=str(destination),
            mode=Mode.MODE_REWIND if rewind else Mode.MODE_RECOVERY,
        )
        errors, missing = [], 0
        for plugin in plugins:
            try:
                await plugin.call(
                    lambda ch: ch.wal.Restore,
                    request,
                    timeout=self.registry.timeout(),
                    what=f"WAL.Restore of {name}",
                )
                return
            except grpc.aio.AioRpcError as exc:
                missing += exc.code() == grpc.StatusCode.NOT_FOUND
                errors.append(f"{plugin.name}: {describe(exc)}")
            except PluginError as exc:
                errors.append(str(exc))
        kind = WalNotFound if missing == len(plugins) else PluginError
        raise kind(f"{name} not restored: " + "; ".join(errors))
