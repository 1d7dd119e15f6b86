"""cnpgi.wal.v1.WAL: ``archive-push`` and ``archive-get``.

Archive: the stanza is created on first use, ``check_empty_wal_archive`` is honoured, and
success means pgbackrest exited 0 (the segment is stored; with ``archive-async`` it is in
the repository too, pgBackRest's foreground process waits for that). Restore: a missing
file is NOT_FOUND, anything else another code; any instance may restore, standbys
included. In rewind mode exactly the asked file is fetched: no asynchronous prefetch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from instance_manager import log
from instance_manager.pgbackrest.options import ConfigError, decode_cluster
from instance_manager.pgbackrest.replies import fail
from instance_manager.pgbackrest.runner import WAL_TIMEOUT, CommandFailed
from instance_manager.pgbackrest.sidecar import Sidecar
from instance_manager.plugins._gen import wal_pb2, wal_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_logger = log.get("pgbackrest")
RPC = wal_pb2.WALCapability.RPC
# A segment, a timeline history file, a partial segment or a backup history file.
WAL_NAME = re.compile(r"^([0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")


class WalService(wal_pb2_grpc.WALServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def GetCapabilities(
        self, request: wal_pb2.WALCapabilitiesRequest, context: Context
    ) -> wal_pb2.WALCapabilitiesResult:
        kinds = (RPC.TYPE_ARCHIVE_WAL, RPC.TYPE_RESTORE_WAL)
        return wal_pb2.WALCapabilitiesResult(
            capabilities=[wal_pb2.WALCapability(rpc=RPC(type=kind)) for kind in kinds]
        )

    async def Archive(
        self, request: wal_pb2.WALArchiveRequest, context: Context
    ) -> wal_pb2.WALArchiveResult:
        source = Path(request.source_file_name)
        check_empty = (
            request.HasField("check_empty_wal_archive") and request.check_empty_wal_archive
        )
        try:
            await self._archive(request.cluster_definition, source, check_empty)
        except (ConfigError, CommandFailed, ValueError) as exc:
            self.sidecar.record_archive(ok=False)
            await fail(context, "Archive", exc, wal=source.name)
        self.sidecar.record_archive(ok=True)
        return wal_pb2.WALArchiveResult()

    async def _archive(self, cluster_json: bytes, source: Path, check_empty: bool) -> None:
        if not source.is_absolute() or not WAL_NAME.match(source.name):
            raise ValueError(f"source_file_name must be the absolute path of a WAL file: {source}")
        # pg1-path, when not configured, is the PGDATA this WAL comes from.
        config = self.sidecar.resolver.own(decode_cluster(cluster_json)).with_pgdata(
            source.parent.parent
        )
        await self.sidecar.ensure_stanza(config)
        if check_empty:
            await self.sidecar.check_empty(config, source.name)
        try:
            await self.sidecar.runner.run("archive-push", [str(source)], config, WAL_TIMEOUT)
        except CommandFailed:
            self.sidecar.forget(config)  # the stanza may be gone: look again next time
            raise

    async def Restore(
        self, request: wal_pb2.WALRestoreRequest, context: Context
    ) -> wal_pb2.WALRestoreResult:
        name, destination = request.source_wal_name, Path(request.destination_file_name)
        rewind = request.mode == wal_pb2.WALRestoreRequest.MODE_REWIND
        try:
            if not WAL_NAME.match(name):
                raise ValueError(f"source_wal_name is not a WAL file name: {name!r}")
            if not destination.is_absolute():
                raise ValueError(f"destination_file_name must be absolute: {destination}")
            config = self.sidecar.resolver.for_wal_restore(
                decode_cluster(request.cluster_definition)
            )
            args = [name, str(destination), *(["--no-archive-async"] if rewind else [])]
            await self.sidecar.runner.run("archive-get", args, config, WAL_TIMEOUT)
        except (ConfigError, CommandFailed, ValueError) as exc:
            await fail(context, "Restore", exc, wal=name)
        return wal_pb2.WALRestoreResult()

    async def Status(
        self, request: wal_pb2.WALStatusRequest, context: Context
    ) -> wal_pb2.WALStatusResult:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "WAL.Status is not implemented")

    async def SetFirstRequired(
        self, request: wal_pb2.SetFirstRequiredRequest, context: Context
    ) -> wal_pb2.SetFirstRequiredResult:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "WAL.SetFirstRequired is not implemented"
        )
