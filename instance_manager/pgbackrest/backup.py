"""cnpgi.backup.v1.Backup: ``pgbackrest backup``, then ``info`` for every BackupResult field.

Parameters (the Backup's ``spec.pluginConfiguration.parameters``): ``type`` (or
``backupType``): full, diff or incr (pgBackRest's default, incr, when absent); ``repo``
(or ``selectedRepository``): the repository number; ``startFast``: an immediate
checkpoint (else the Backup's ``spec.onlineConfiguration.immediateCheckpoint``). Any
other parameter is refused. The backup carries the Backup's name as an annotation, which
is how it is found in ``info`` afterwards.

pgBackRest's own archive check (``archive-check``) refuses an ``archive_command`` that does
not name pgbackrest, and ours is the instance manager's: backups run with
``--no-archive-check`` and the plugin does that check itself, waiting (``archive-timeout``,
60 s by default) until every WAL segment the backup needs is in the archive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from instance_manager import log
from instance_manager.pgbackrest import info
from instance_manager.pgbackrest.compression import DecompressError, decompress
from instance_manager.pgbackrest.options import (
    Config,
    ConfigError,
    decode_cluster,
    env_name,
    flag,
)
from instance_manager.pgbackrest.replies import fail
from instance_manager.pgbackrest.runner import INFO_TIMEOUT, LONG_TIMEOUT, CommandFailed
from instance_manager.pgbackrest.sidecar import Sidecar
from instance_manager.plugins._gen import backup_pb2, backup_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_logger = log.get("pgbackrest")
BACKUP_TYPES = ("full", "diff", "incr")
NAME_ANNOTATION = "cnpg-backup"
CLUSTER_ANNOTATION = "cnpg-cluster"
_ALIASES = {"backupType": "type", "selectedRepository": "repo"}
ARCHIVE_TIMEOUT = 60.0  # pgBackRest's archive-timeout default
WAL_POLL_INTERVAL = 0.05


class BackupFailed(Exception):
    """The backup ran but its result cannot be found or read."""


def _section(document: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    value: Any = document
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def backup_args(
    parameters: Mapping[str, str], backup: Mapping[str, Any], cluster: str
) -> list[str]:
    """The command line of ``pgbackrest backup`` for this request."""
    given = {_ALIASES.get(key, key): value for key, value in parameters.items()}
    unknown = set(given) - {"type", "repo", "startFast"}
    if unknown:
        raise ValueError(f"unknown backup parameters: {', '.join(sorted(unknown))}")
    if _section(backup, "spec").get("online") is False:
        raise ValueError("offline backups are not supported: PostgreSQL is running")
    args = ["--no-archive-check"]  # done by the plugin: see the module's docstring
    if "type" in given:
        if given["type"] not in BACKUP_TYPES:
            raise ValueError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
        args.append(f"--type={given['type']}")
    if "repo" in given:
        if not given["repo"].isdigit():
            raise ValueError(f"repo must be a repository number, got {given['repo']!r}")
        args.append(f"--repo={given['repo']}")
    immediate = _section(backup, "spec", "onlineConfiguration").get("immediateCheckpoint")
    fast = flag("startFast", given["startFast"]) if "startFast" in given else immediate is True
    args.append("--start-fast" if fast else "--no-start-fast")
    name = str(_section(backup, "metadata").get("name") or "")
    if name:
        args.append(f"--annotation={NAME_ANNOTATION}={name}")
    if cluster:
        args.append(f"--annotation={CLUSTER_ANNOTATION}={cluster}")
    return args


def new_backup(before: info.StanzaInfo, after: info.StanzaInfo, name: str) -> info.BackupSet:
    """The backup this request made: new since ``before``, with our annotation if named."""
    known = {b.label for b in before.backups}
    fresh = [b for b in after.backups if b.label not in known]
    if name:
        fresh = [b for b in fresh if b.annotations.get(NAME_ANNOTATION) == name] or fresh
    if not fresh:
        raise BackupFailed("pgbackrest backup succeeded but info lists no new backup")
    return max(fresh, key=lambda b: (b.stopped_at, b.label))


def needed_segments(begin: str, end: str) -> set[str]:
    """The WAL segments from ``begin`` to ``end``. Within one log file the names count up by
    one whatever the segment size; across log files only both ends are known for sure."""
    if begin[:16] != end[:16]:
        return {begin, end}
    first, last = int(begin[16:24], 16), int(end[16:24], 16)
    return {f"{begin[:16]}{n:08X}" for n in range(first, last + 1)}


def listed_segments(text: str) -> set[str]:
    """Segment names in a ``repo-ls --output=json`` listing of an archive directory."""
    entries = json.loads(text)
    return {name[:24] for name in entries if isinstance(name, str) and name[24:25] == "-"}


def tablespace_map(backup: info.BackupSet) -> bytes:
    """PostgreSQL's tablespace_map (one ``oid path`` line each) from pgBackRest's record."""
    return "".join(f"{t.oid} {t.destination}\n" for t in backup.tablespaces).encode()


def timeline_of(wal: str) -> str:
    return str(int(wal[:8], 16)) if len(wal) >= 8 else ""


def metadata(
    sidecar: Sidecar, config: Config, stanza: info.StanzaInfo, backup: info.BackupSet
) -> dict[str, str]:
    return {
        "pluginName": sidecar.name,
        "pluginVersion": sidecar.version,
        "stanza": config.stanza,
        "type": backup.type,
        "prior": backup.prior,
        "repo": str(backup.repo_key),
        "pgbackrestVersion": backup.pgbackrest_version,
        "systemIdentifier": str(stanza.system_id),
        "postgresVersion": stanza.pg_version,
        "timeline": timeline_of(backup.begin_wal),
        "databaseSize": str(backup.size),
        "repositorySize": str(backup.repo_size),
        "repositoryDelta": str(backup.repo_delta),
        "checksumErrors": str(backup.error).lower(),
    }


class BackupService(backup_pb2_grpc.BackupServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar

    async def GetCapabilities(
        self, request: backup_pb2.BackupCapabilitiesRequest, context: Context
    ) -> backup_pb2.BackupCapabilitiesResult:
        rpc = backup_pb2.BackupCapability.RPC
        return backup_pb2.BackupCapabilitiesResult(
            capabilities=[backup_pb2.BackupCapability(rpc=rpc(type=rpc.TYPE_BACKUP))]
        )

    async def Backup(
        self, request: backup_pb2.BackupRequest, context: Context
    ) -> backup_pb2.BackupResult:
        try:
            result = await self._backup(request)
        except (ConfigError, CommandFailed, ValueError, BackupFailed) as exc:
            self.sidecar.record_backup(ok=False)
            await fail(context, "Backup", exc)
        self.sidecar.record_backup(ok=True)
        log.event(_logger, "backup completed", backup_id=result.backup_id, name=result.backup_name)
        return result

    async def _backup(self, request: backup_pb2.BackupRequest) -> backup_pb2.BackupResult:
        cluster = decode_cluster(request.cluster_definition)
        backup = decode_cluster(request.backup_definition)
        name = str(_section(backup, "metadata").get("name") or "")
        cluster_name = str(_section(cluster, "metadata").get("name") or "")
        args = backup_args(dict(request.parameters), backup, cluster_name)
        config = self.sidecar.resolver.own(cluster)
        await self.sidecar.ensure_stanza(config)
        before = await self.sidecar.info(config)
        log.event(_logger, "backup starting", stanza=config.stanza, name=name, args=args)
        await self.sidecar.runner.run("backup", args, config, LONG_TIMEOUT)
        after = await self.sidecar.info(config)
        made = new_backup(before, after, name)
        await self._wait_for_wal(config, after.archive_id, made)
        repo = [f"--repo={made.repo_key}"] if made.repo_key else []
        stanza, label_file = await asyncio.gather(
            self.sidecar.info(config, f"--set={made.label}", *repo),
            self._label_file(config, made),
        )
        made = stanza.backup(made.label) or made
        return backup_pb2.BackupResult(
            backup_id=made.label,
            backup_name=name or made.label,
            started_at=made.started_at,
            stopped_at=made.stopped_at,
            begin_wal=made.begin_wal,
            end_wal=made.end_wal,
            begin_lsn=made.begin_lsn,
            end_lsn=made.end_lsn,
            backup_label_file=label_file,
            tablespace_map_file=tablespace_map(made),
            instance_id=self._instance_id(backup),
            online=True,  # PostgreSQL runs: pgBackRest backs it up online
            metadata=metadata(self.sidecar, config, stanza, made),
        )

    async def _wait_for_wal(self, config: Config, archive_id: str, made: info.BackupSet) -> None:
        """Until the archive holds every segment from the backup's first to its last."""
        wanted = needed_segments(made.begin_wal, made.end_wal)
        timeout = float(config.env.get(env_name("archive-timeout")) or ARCHIVE_TIMEOUT)
        repo = [f"--repo={made.repo_key}"] if made.repo_key else []
        deadline = time.monotonic() + timeout
        while True:
            present: set[str] = set()
            for prefix in sorted({segment[:16] for segment in wanted}):
                path = f"archive/{config.stanza}/{archive_id}/{prefix}"
                listed = await self.sidecar.runner.run(
                    "repo-ls", ["--output=json", *repo, path], config, INFO_TIMEOUT
                )
                present |= listed_segments(listed.stdout)
            missing = wanted - present
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BackupFailed(
                    f"WAL segment {min(missing)} needed by backup {made.label} was not "
                    f"archived within {timeout:g} s: the backup is not usable"
                )
            await asyncio.sleep(WAL_POLL_INTERVAL)

    def _instance_id(self, backup: Mapping[str, Any]) -> str:
        pod = _section(backup, "status", "instanceID").get("podName")
        return str(pod) if pod else self.sidecar.instance_id

    async def _label_file(self, config: Config, backup: info.BackupSet) -> bytes:
        """The backup's backup_label, as stored in the repository; empty (and a warning)
        when it cannot be read: the backup itself is complete either way."""
        path = f"backup/{config.stanza}/{backup.label}/pg_data"
        repo = [f"--repo={backup.repo_key}"] if backup.repo_key else []
        runner = self.sidecar.runner
        try:
            listing = await runner.run(
                "repo-ls", ["--output=json", *repo, path], config, INFO_TIMEOUT
            )
            names = sorted(n for n in json.loads(listing.stdout) if n.startswith("backup_label"))
            if not names:
                raise BackupFailed(f"no backup_label in {path} (repo-bundle?)")
            fetched = await runner.run(
                "repo-get", [*repo, f"{path}/{names[0]}"], config, INFO_TIMEOUT
            )
            return decompress(names[0], fetched.output)
        except (CommandFailed, BackupFailed, DecompressError, ValueError) as exc:
            log.event(
                _logger,
                "backup_label not read",
                logging.WARNING,
                label=backup.label,
                error=str(exc),
            )
            return b""
