"""cnpgi.wal.v1.RestoreJobHooks: a new PGDATA from a backup of the recovery source.

The backup set is chosen here (the one named by ``backupID``, else the newest that ended
before the target) and restored with ``pgbackrest restore --type=preserve``: pgBackRest then
writes no recovery settings and leaves postgresql.auto.conf out (any other type rewrites
that file, which fails when it was backed up read-only, as the instance manager keeps it
unless ALTER SYSTEM is enabled; settings made with ALTER SYSTEM are therefore not
restored). The settings that stop recovery at the target and promote there come back as
``restore_config``; the instance manager writes them with recovery.signal, and its own
``restore_command`` asks this plugin's WAL.Restore (the source's stanza while
recovery.signal is in PGDATA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from instance_manager import log
from instance_manager.pgbackrest import targets
from instance_manager.pgbackrest.options import (
    Config,
    ConfigError,
    decode_cluster,
    plugin_parameters,
)
from instance_manager.pgbackrest.replies import fail
from instance_manager.pgbackrest.runner import LONG_TIMEOUT, CommandFailed
from instance_manager.pgbackrest.sidecar import ArchiveNotEmpty, Sidecar
from instance_manager.plugins._gen import restore_job_pb2, restore_job_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_logger = log.get("pgbackrest")
Capability = restore_job_pb2.RestoreJobHooksCapability


def _recovery(cluster: dict[str, Any]) -> dict[str, Any]:
    """spec.bootstrap.recovery ({} when absent)."""
    value: Any = cluster
    for key in ("spec", "bootstrap", "recovery"):
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


class RestoreService(restore_job_pb2_grpc.RestoreJobHooksServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def GetCapabilities(
        self, request: restore_job_pb2.RestoreJobHooksCapabilitiesRequest, context: Context
    ) -> restore_job_pb2.RestoreJobHooksCapabilitiesResult:
        return restore_job_pb2.RestoreJobHooksCapabilitiesResult(
            capabilities=[Capability(kind=Capability.KIND_RESTORE)]
        )

    async def Restore(
        self, request: restore_job_pb2.RestoreRequest, context: Context
    ) -> restore_job_pb2.RestoreResponse:
        check_empty = (
            request.HasField("check_empty_wal_archive") and request.check_empty_wal_archive
        )
        try:
            return await self._restore(decode_cluster(request.cluster_definition), check_empty)
        except (ConfigError, CommandFailed, ValueError) as exc:
            await fail(context, "Restore (recovery bootstrap)", exc)

    async def _restore(
        self, cluster: dict[str, Any], check_empty: bool
    ) -> restore_job_pb2.RestoreResponse:
        source = self.sidecar.resolver.source(cluster)
        if source is None:
            raise ConfigError(
                "spec.bootstrap.recovery.source does not name an external cluster whose "
                f"plugin is {self.sidecar.name}"
            )
        pgdata = source.pgdata
        if pgdata is None:
            raise ConfigError("PGDATA is unknown: set PGDATA or the pg1-path parameter")
        target = targets.parse_target(_recovery(cluster))
        if check_empty:
            await self._check_own_archive(cluster, source)
        backup = targets.choose_backup((await self.sidecar.info(source)).backups, target)
        pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        args = ["--type=preserve", f"--set={backup.label}"]
        if backup.repo_key:
            args.append(f"--repo={backup.repo_key}")
        if any(pgdata.iterdir()):
            args.append("--delta")  # an earlier attempt stopped halfway
        log.event(
            _logger,
            "restoring a backup",
            stanza=source.stanza,
            backup_id=backup.label,
            target=target.kind,
            value=target.value,
            pgdata=str(pgdata),
        )
        done = await self.sidecar.runner.run("restore", args, source, LONG_TIMEOUT)
        log.event(
            _logger, "backup restored", backup_id=backup.label, seconds=round(done.seconds, 3)
        )
        config = targets.render(targets.recovery_settings(target))
        return restore_job_pb2.RestoreResponse(restore_config=config)

    async def _check_own_archive(self, cluster: dict[str, Any], source: Config) -> None:
        """The new cluster must not archive into a stanza that already has WAL, unless it
        is the source's own stanza (recovering in place)."""
        if plugin_parameters(cluster, self.sidecar.name) is None:
            return  # this plugin does not archive the new cluster's WAL
        own = self.sidecar.resolver.own(cluster)
        if own.key() == source.key():
            return
        found = await self.sidecar.info(own)
        if not found.missing and not found.archive_empty:
            raise ArchiveNotEmpty(
                f"the WAL archive of stanza {own.stanza!r} is not empty "
                f"({found.archive_min} .. {found.archive_max}): another cluster may be using it"
            )
