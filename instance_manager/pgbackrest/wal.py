"""cnpgi.wal.v1.WAL: ``archive-push`` and ``archive-get``.

Archive: the stanza is created on first use, ``check_empty_wal_archive`` is honoured, and
success means pgBackRest reports the segment stored: ``archive-push`` exited 0, or, with
``archive-async`` on and the segment ``.ready`` in pg_wal, the asynchronous push that
carries every ready segment wrote its ``.ok`` status (batch.py). Restore: a missing
file is NOT_FOUND, anything else another code; any instance may restore, standbys
included. In rewind mode exactly the asked file is fetched: no asynchronous prefetch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from instance_manager import log
from instance_manager.pgbackrest import spool
from instance_manager.pgbackrest.batch import Pusher
from instance_manager.pgbackrest.options import (
    Config,
    ConfigError,
    decode_cluster,
    env_name,
    flag,
)
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
SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")  # what goes in batches
ARCHIVE_TIMEOUT = 60.0  # pgBackRest's archive-timeout default: the wait for an .ok status


def archive_async(config: Config) -> bool:
    value = config.env.get(env_name("archive-async"), "n")
    try:
        return flag("archive-async", value)
    except ConfigError:
        return False


def archive_timeout(config: Config) -> float:
    try:
        return float(config.env.get(env_name("archive-timeout"), ARCHIVE_TIMEOUT))
    except ValueError:
        return ARCHIVE_TIMEOUT


class WalService(wal_pb2_grpc.WALServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._pushers: dict[tuple[frozenset[tuple[str, str]], Path], Pusher] = {}

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
        pusher = None if check_empty else self._pusher(config, source)
        try:
            if pusher is not None:
                await pusher.push(source.name, archive_timeout(config))
            else:
                args = [str(source), *(["--no-archive-async"] if archive_async(config) else [])]
                await self.sidecar.runner.run("archive-push", args, config, WAL_TIMEOUT)
        except CommandFailed:
            self.sidecar.forget(config)  # the stanza may be gone: look again next time
            raise

    def _pusher(self, config: Config, source: Path) -> Pusher | None:
        """The batch path for ``source`` (None: push it on its own): archive-async is on,
        the file is a segment and PostgreSQL marked it ``.ready``, so the asynchronous push
        will see it (history, backup history and partial files go alone)."""
        out = spool.out_dir(config)
        if out is None or not archive_async(config) or not SEGMENT_NAME.match(source.name):
            return None
        if not (source.parent / "archive_status" / f"{source.name}.ready").exists():
            return None
        key = (config.key(), source.parent)
        pusher = self._pushers.get(key)
        if pusher is None:
            pusher = self._pushers[key] = Pusher(self.sidecar.runner, config, source.parent, out)
        return pusher

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
