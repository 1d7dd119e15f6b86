"""The fake CNPG-I plugin (tests/fake_plugin.py) plus a Backup service, for the local API tests."""

from __future__ import annotations

import json
from typing import Any

import grpc

from instance_manager.plugins._gen import backup_pb2, backup_pb2_grpc, identity_pb2, wal_pb2_grpc
from instance_manager.plugins.serve import listen_unix
from tests.fake_plugin import FakePlugin, _health_handler, _IdentityServicer, _WALServicer

BACKUP_SERVICE = identity_pb2.PluginCapability.Service.TYPE_BACKUP_SERVICE
BACKUP_RPC = backup_pb2.BackupCapability.RPC.TYPE_BACKUP


class _BackupServicer(backup_pb2_grpc.BackupServicer):
    def __init__(self, plugin: FakeBackupPlugin) -> None:
        self._plugin = plugin

    async def GetCapabilities(self, request: Any, context: Any) -> Any:
        rpc = backup_pb2.BackupCapability.RPC
        return backup_pb2.BackupCapabilitiesResult(
            capabilities=[backup_pb2.BackupCapability(rpc=rpc(type=t)) for t in self._plugin.rpcs]
        )

    async def Backup(self, request: backup_pb2.BackupRequest, context: Any) -> Any:
        self._plugin.backups.append(
            {
                "cluster": json.loads(request.cluster_definition),
                "backup": json.loads(request.backup_definition),
                "parameters": dict(request.parameters),
            }
        )
        if self._plugin.fail_backup:
            await context.abort(grpc.StatusCode.INTERNAL, self._plugin.fail_backup)
        return backup_pb2.BackupResult(
            backup_id="20260101T000000",
            backup_name="fake-backup",
            started_at=1700000000,
            stopped_at=1700000100,
            begin_wal="000000010000000000000002",
            end_wal="000000010000000000000003",
            begin_lsn="0/2000028",
            end_lsn="0/3000100",
            backup_label_file=b"START WAL LOCATION: 0/2000028\n",
            instance_id="test-1",
            online=True,
            metadata={"store": "fake"},
        )


class FakeBackupPlugin(FakePlugin):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("services", (BACKUP_SERVICE,))
        super().__init__(*args, **kwargs)
        self.rpcs = [BACKUP_RPC]
        self.backups: list[dict[str, Any]] = []
        self.fail_backup: str | None = None

    async def __aenter__(self) -> FakeBackupPlugin:
        await self.up()
        return self

    async def up(self) -> None:
        if self._server is not None:
            return
        self._prepare_dirs()
        server = grpc.aio.server()
        from instance_manager.plugins._gen import identity_pb2_grpc

        identity_pb2_grpc.add_IdentityServicer_to_server(_IdentityServicer(self), server)
        wal_pb2_grpc.add_WALServicer_to_server(_WALServicer(self), server)
        backup_pb2_grpc.add_BackupServicer_to_server(_BackupServicer(self), server)
        server.add_generic_rpc_handlers((_health_handler(self),))
        await listen_unix(server, self.socket_path, 0o777)
        self._server = server
