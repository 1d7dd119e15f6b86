"""Unit tests of the pgBackRest plugin: configuration, info parsing, recovery targets, backup
arguments, error mapping, lz4, recovery settings; and the gRPC server in-process (Identity,
health, argument errors), with no PostgreSQL.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from instance_manager.pgbackrest import PLUGIN_NAME, backup, info, targets
from instance_manager.pgbackrest.compression import decompress
from instance_manager.pgbackrest.identity import HealthCheckRequest, HealthCheckResponse
from instance_manager.pgbackrest.metrics import archive_backlog, backup_gauges, listing_size
from instance_manager.pgbackrest.options import ConfigError, Resolver, option_name
from instance_manager.pgbackrest.runner import Runner, error_message, status_code
from instance_manager.pgbackrest.server import PluginServer
from instance_manager.pgbackrest.sidecar import Sidecar
from instance_manager.plugins._gen import identity_pb2, restore_job_pb2, wal_pb2
from instance_manager.plugins.connection import Plugin
from instance_manager.plugins.selection import recovery_source
from instance_manager.postgres import recovery
from instance_manager.settings import load

WORK = Path("/tmp/pgbackrest-plugin-units")


def cluster(parameters: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    plugins = [] if parameters is None else [{"name": PLUGIN_NAME, "parameters": parameters}]
    return {"metadata": {"name": "c"}, "spec": {"plugins": plugins, **spec}}


# -- configuration ------------------------------------------------------------------------


def test_option_names_in_both_spellings() -> None:
    assert option_name("repo1-path") == "repo1-path"
    assert option_name("repo1Path") == "repo1-path"
    assert option_name("repo1S3KeySecret") == "repo1-s3-key-secret"
    assert option_name("processMax") == "process-max"
    for bad in ("repo1_path", "-x", "a b", "repo1--path"):
        with pytest.raises(ConfigError):
            option_name(bad)


def test_parameters_win_over_the_environment_which_wins_over_defaults() -> None:
    environ = {
        "PGDATA": "/d",
        "PGBACKREST_STANZA": "env",
        "PGBACKREST_REPO1_PATH": "/env",
        "X": "1",
    }
    resolver = Resolver(PLUGIN_NAME, environ, WORK)
    from_env = resolver.own(cluster())
    assert from_env.stanza == "env" and from_env.env["PGBACKREST_REPO1_PATH"] == "/env"
    assert from_env.env["PGBACKREST_PG1_PATH"] == "/d" and from_env.pgdata == Path("/d")
    assert from_env.env["PGBACKREST_LOG_LEVEL_FILE"] == "off" and "X" not in from_env.env
    own = resolver.own(cluster({"stanza": "main", "repo1Path": "/r", "archiveAsync": True}))
    assert own.stanza == "main" and own.env["PGBACKREST_REPO1_PATH"] == "/r"
    assert own.env["PGBACKREST_ARCHIVE_ASYNC"] == "y" and own.create_stanza
    assert own.key() != from_env.key()


def test_configuration_errors_are_clear() -> None:
    resolver = Resolver(PLUGIN_NAME, {}, WORK)
    with pytest.raises(ConfigError, match="no stanza configured"):
        resolver.own(cluster({}))
    with pytest.raises(ConfigError, match="chosen per request"):
        resolver.own(cluster({"stanza": "s", "type": "full"}))
    with pytest.raises(ConfigError, match="single line"):
        resolver.own(cluster({"stanza": "s\nrepo1-path=/x"}))
    with pytest.raises(ConfigError, match="true or false"):
        resolver.own(cluster({"stanza": "s", "createStanza": "maybe"}))
    assert not resolver.own(cluster({"stanza": "s", "createStanza": "false"})).create_stanza
    disabled = cluster({"stanza": "s"})
    disabled["spec"]["plugins"][0]["enabled"] = False
    with pytest.raises(ConfigError):
        resolver.own(disabled)


def recovering_cluster() -> dict[str, Any]:
    source = {"name": PLUGIN_NAME, "parameters": {"stanza": "origin"}}
    return cluster(
        {"stanza": "own"},
        externalClusters=[{"name": "src", "plugin": source}],
        bootstrap={"recovery": {"source": "src"}},
    )


def test_wal_comes_from_the_recovery_source_only_while_recovery_signal_exists(
    tmp_path: Path,
) -> None:
    resolver = Resolver(PLUGIN_NAME, {"PGDATA": str(tmp_path)}, WORK)
    doc = recovering_cluster()
    assert resolver.for_wal_restore(doc).stanza == "own"  # a standby, or promoted
    (tmp_path / "recovery.signal").touch()
    assert resolver.for_wal_restore(doc).stanza == "origin"
    assert resolver.source(cluster({"stanza": "own"})) is None


# -- info -----------------------------------------------------------------------------------

MISSING = [{"archive": [], "backup": [], "db": [], "name": "main",
            "repo": [{"key": 1, "status": {"code": 1, "message": "missing stanza path"}}],
            "status": {"code": 1, "message": "missing stanza path"}}]  # fmt: skip


def backup_record(
    label: str, start: int, stop: int, lsn: str, kind: str = "full"
) -> dict[str, Any]:
    return {
        "label": label, "type": kind, "prior": None, "error": False,
        "annotation": {"cnpg-backup": label.lower()},
        "archive": {"start": "000000010000000000000003", "stop": "000000010000000000000004"},
        "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1},
        "info": {"delta": 10, "repository": {"delta": 3, "size": 5}, "size": 10},
        "lsn": {"start": "0/3000028", "stop": lsn}, "timestamp": {"start": start, "stop": stop},
    }  # fmt: skip


def stanza_doc(*backups: dict[str, Any]) -> list[dict[str, Any]]:
    return [{
        "name": "main",
        "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1",
                     "max": "000000010000000000000009", "min": "000000010000000000000001"}],
        "backup": list(backups),
        "db": [{"id": 1, "repo-key": 1, "system-id": 7711, "version": "15"}],
        "repo": [{"key": 1, "status": {"code": 0, "message": "ok"}}],
        "status": {"code": 0, "message": "ok"},
    }]  # fmt: skip


def test_info_parsing() -> None:
    missing = info.parse(json.dumps(MISSING), "main")
    assert missing.missing and missing.archive_empty
    doc = stanza_doc(
        backup_record("A", 100, 110, "0/4000050"), backup_record("B", 200, 210, "0/9000000")
    )
    found = info.parse(json.dumps(doc), "main")
    assert not found.missing and not found.archive_empty
    assert (found.archive_min, found.archive_max, found.archive_id) == (
        "000000010000000000000001", "000000010000000000000009", "15-1",
    )  # fmt: skip
    assert found.system_id == 7711 and [b.label for b in found.backups] == ["A", "B"]
    first = found.backups[0]
    assert (first.begin_lsn, first.end_lsn, first.repo_size, first.annotations) == (
        "0/3000028", "0/4000050", 5, {"cnpg-backup": "a"},
    )  # fmt: skip
    with pytest.raises(info.InfoError):
        info.parse("[]", "main")
    assert info.lsn_value("1/0") == 1 << 32
    gauges = backup_gauges(found)
    assert gauges == {
        "first_recoverability_point": 110,
        "last_available_backup_timestamp": 210,
        "backups": 2,
    }


# -- recovery targets -----------------------------------------------------------------------


def test_recovery_targets_choose_the_backup_and_the_settings() -> None:
    backups = info.parse(json.dumps(stanza_doc(
        backup_record("A", 100, 1_700_000_000, "0/4000050"),
        backup_record("B", 200, 1_700_000_600, "0/9000000"),
    )), "main").backups  # fmt: skip
    by_time = targets.parse_target({"recoveryTarget": {"targetTime": "2023-11-14 22:20:00"}})
    assert targets.choose_backup(backups, by_time).label == "A"  # 22:13:20 < 22:20 < 22:23:20
    settings = targets.recovery_settings(by_time)
    assert settings["recovery_target_time"] == "2023-11-14 22:20:00+00:00"
    assert settings["recovery_target_action"] == "promote"
    by_lsn = targets.parse_target({"recoveryTarget": {"targetLSN": "0/A000000", "exclusive": True}})
    assert targets.choose_backup(backups, by_lsn).label == "B"
    assert targets.recovery_settings(by_lsn)["recovery_target_inclusive"] == "off"
    latest = targets.parse_target({})
    assert targets.choose_backup(backups, latest).label == "B"
    assert targets.recovery_settings(latest) == {}
    named = targets.parse_target({"recoveryTarget": {"targetName": "it's", "backupID": "A"}})
    assert targets.choose_backup(backups, named).label == "A"
    assert "recovery_target_name = 'it''s'" in targets.render(targets.recovery_settings(named))
    immediate = targets.parse_target(
        {"recoveryTarget": {"targetImmediate": True, "targetTLI": "2"}}
    )
    assert targets.recovery_settings(immediate)["recovery_target"] == "immediate"
    assert targets.recovery_settings(immediate)["recovery_target_timeline"] == "2"


def test_recovery_target_errors() -> None:
    with pytest.raises(ConfigError, match="more than one target"):
        targets.parse_target({"recoveryTarget": {"targetTime": "2023-01-01", "targetXID": "7"}})
    with pytest.raises(ConfigError, match="ISO 8601"):
        targets.parse_target({"recoveryTarget": {"targetTime": "yesterday"}})
    with pytest.raises(ConfigError, match="LSN"):
        targets.parse_target({"recoveryTarget": {"targetLSN": "12"}})
    early = targets.parse_target({"recoveryTarget": {"targetTime": "2000-01-01T00:00:00Z"}})
    backups = info.parse(
        json.dumps(stanza_doc(backup_record("A", 1, 1_700_000_000, "0/1"))), "main"
    )
    with pytest.raises(ConfigError, match="no backup to restore that ended before"):
        targets.choose_backup(backups.backups, early)
    with pytest.raises(ConfigError, match="no backup 'Z'"):
        targets.choose_backup(backups.backups, targets.RecoveryTarget(backup_id="Z"))


# -- backups ----------------------------------------------------------------------------------


def test_backup_arguments() -> None:
    cr = {
        "metadata": {"name": "nightly"},
        "spec": {"onlineConfiguration": {"immediateCheckpoint": True}},
    }
    args = backup.backup_args({"backupType": "diff", "selectedRepository": "2"}, cr, "c")
    assert args == ["--no-archive-check", "--type=diff", "--repo=2", "--start-fast",
                    "--annotation=cnpg-backup=nightly", "--annotation=cnpg-cluster=c"]  # fmt: skip
    assert "--no-start-fast" in backup.backup_args({"startFast": "false"}, cr, "")
    for bad in ({"type": "huge"}, {"repo": "x"}, {"compress": "lz4"}):
        with pytest.raises(ValueError):
            backup.backup_args(bad, {}, "")
    with pytest.raises(ValueError, match="offline"):
        backup.backup_args({}, {"spec": {"online": False}}, "")


def test_the_new_backup_is_found_by_its_annotation() -> None:
    before = info.parse(json.dumps(stanza_doc(backup_record("A", 1, 2, "0/1"))), "main")
    records = [backup_record("A", 1, 2, "0/1"), backup_record("B", 3, 9, "0/2")]
    records.append(backup_record("C", 3, 8, "0/2"))
    after = info.parse(json.dumps(stanza_doc(*records)), "main")
    assert backup.new_backup(before, after, "c").label == "C"
    assert backup.new_backup(before, after, "").label == "B"
    with pytest.raises(backup.BackupFailed):
        backup.new_backup(after, after, "b")
    assert backup.needed_segments("000000010000000000000003", "000000010000000000000005") == {
        "000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
    }  # fmt: skip
    listing = json.dumps({"000000010000000000000003-ab.gz": {"type": "file", "size": 7}})
    assert backup.listed_segments(listing) == {"000000010000000000000003"}
    assert listing_size(listing) == 7


# -- commands -------------------------------------------------------------------------------


def test_exit_statuses_map_to_grpc_codes_and_messages_keep_the_error() -> None:
    assert status_code("archive-get", 1) == grpc.StatusCode.NOT_FOUND
    assert status_code("archive-push", 1) == grpc.StatusCode.INTERNAL
    assert status_code("archive-push", 44) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_code("archive-get", 103) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_code("backup", 50) == grpc.StatusCode.UNAVAILABLE
    stderr = "WARN: x\nERROR: [103]: unable to find a valid repository:\n  repo1: missing\n"
    assert (
        error_message(stderr) == "ERROR: [103]: unable to find a valid repository: repo1: missing"
    )
    assert error_message("") == "no message on stderr"


def test_decompression_of_repository_files() -> None:
    text = b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n" * 20
    assert decompress("backup_label.gz", gzip.compress(text)) == text
    assert decompress("backup_label.bz2", bz2.compress(text)) == text
    assert decompress("backup_label", text) == text
    if shutil.which("lz4"):
        for flags in ([], ["-BD", "--content-size"], ["-9"]):
            packed = subprocess.run(["lz4", "-c", *flags], input=text, capture_output=True).stdout
            assert decompress("backup_label.lz4", packed) == text


def test_archive_backlog_counts_ready_files(tmp_path: Path) -> None:
    status = tmp_path / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    assert archive_backlog(tmp_path, time.time()) == (0, 0.0)
    (status / "000000010000000000000002.ready").touch()
    (status / "000000010000000000000001.done").touch()
    old = status / "000000010000000000000001.ready"
    old.touch()
    os.utime(old, (time.time() - 30, time.time() - 30))
    count, lag = archive_backlog(tmp_path, time.time())
    assert count == 2 and 29 < lag < 40
    assert archive_backlog(None, time.time()) == (0, 0.0)


# -- recovery settings in PGDATA ----------------------------------------------------------------


def test_recovery_settings_are_written_once_and_removed(tmp_path: Path) -> None:
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text("# Do not edit this file manually!\nwork_mem = '8MB'\n")
    auto.chmod(0o400)
    config = (
        "recovery_target_time = '2024-01-01 00:00:00+00:00'\nrecovery_target_action = 'promote'\n"
    )
    recovery.write_recovery_settings(tmp_path, "p", config)
    recovery.write_recovery_settings(tmp_path, "p", config)  # again: still one block
    text = auto.read_text()
    assert text.count("recovery_target_time") == 1 and "work_mem" in text
    assert (tmp_path / "recovery.signal").exists() and auto.stat().st_mode & 0o777 == 0o400
    assert recovery.clear_recovery_settings(tmp_path)
    assert auto.read_text() == "# Do not edit this file manually!\nwork_mem = '8MB'\n"
    assert not recovery.clear_recovery_settings(tmp_path)


def test_recovery_bootstrap_is_needed_only_with_a_plugin_source(tmp_path: Path) -> None:
    source = {"name": "origin", "plugin": {"name": PLUGIN_NAME}}
    doc = {"spec": {"externalClusters": [source], "bootstrap": {"recovery": {"source": "origin"}}}}
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps(doc))
    settings = load(config_file, {}, {"pgData": str(tmp_path / "d")})
    assert recovery_source(settings.cluster) == PLUGIN_NAME
    assert recovery.restore_needed(settings)  # no PGDATA yet
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "PG_VERSION").write_text("15\n")
    assert not recovery.restore_needed(settings)
    (tmp_path / recovery.MARKER).write_text("recovering\n")
    assert recovery.restore_needed(settings)  # an earlier attempt did not finish
    config_file.write_text(json.dumps({"spec": {}}))
    assert not recovery.restore_needed(load(config_file, {}, {"pgData": str(tmp_path / "d")}))


# -- the gRPC server, in-process ----------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[PluginServer]:
    resolver = Resolver(PLUGIN_NAME, {}, tmp_path / "work")
    sidecar = Sidecar(PLUGIN_NAME, "0.1.0", Runner("/bin/false"), resolver, "pod-1")
    async with PluginServer(sidecar, tmp_path / "sock", {"pgbackrestVersion": "2.45"}) as srv:
        yield srv


async def test_identity_health_and_capabilities(server: PluginServer) -> None:
    assert server.socket_path.stat().st_mode & 0o777 == 0o660
    plugin = Plugin(PLUGIN_NAME, server.socket_path)
    try:
        async with plugin.channel() as ch:
            assert ch.handshake is not None
            service = identity_pb2.PluginCapability.Service
            assert {
                service.TYPE_WAL_SERVICE,
                service.TYPE_BACKUP_SERVICE,
                service.TYPE_METRICS,
            } <= ch.handshake.services
            assert ch.handshake.wal == {1, 2} and ch.handshake.backup == {1}
            meta = await ch.identity.GetPluginMetadata(identity_pb2.GetPluginMetadataRequest())
            assert meta.name == PLUGIN_NAME and meta.manifest["pgbackrestVersion"] == "2.45"
            check = ch.channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=HealthCheckRequest.SerializeToString,
                response_deserializer=HealthCheckResponse.FromString,
            )
            for name in ("", "cnpgi.wal.v1.WAL"):
                answer: Any = await check(HealthCheckRequest(service=name))
                assert answer.status == 1  # SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await check(HealthCheckRequest(service="nope"))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            from instance_manager.plugins._gen import restore_job_pb2_grpc

            restore = restore_job_pb2_grpc.RestoreJobHooksStub(ch.channel)
            caps = await restore.GetCapabilities(
                restore_job_pb2.RestoreJobHooksCapabilitiesRequest()
            )
            assert [c.kind for c in caps.capabilities] == [1]  # KIND_RESTORE
    finally:
        await plugin.close()


async def rpc_code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_bad_requests_and_unimplemented_calls(server: PluginServer) -> None:
    plugin = Plugin(PLUGIN_NAME, server.socket_path)
    raw = json.dumps(cluster({"stanza": "s"})).encode()
    try:
        async with plugin.channel() as ch:
            wal = ch.wal
            relative = wal_pb2.WALArchiveRequest(
                cluster_definition=raw, source_file_name="pg_wal/x"
            )
            assert await rpc_code(wal.Archive(relative)) == grpc.StatusCode.INVALID_ARGUMENT
            no_stanza = wal_pb2.WALArchiveRequest(
                cluster_definition=b"{}", source_file_name="/d/pg_wal/000000010000000000000001"
            )
            assert await rpc_code(wal.Archive(no_stanza)) == grpc.StatusCode.FAILED_PRECONDITION
            bad = wal_pb2.WALRestoreRequest(
                cluster_definition=raw, source_wal_name="../x", destination_file_name="/tmp/x"
            )
            assert await rpc_code(wal.Restore(bad)) == grpc.StatusCode.INVALID_ARGUMENT
            status = wal.Status(wal_pb2.WALStatusRequest())
            assert await rpc_code(status) == grpc.StatusCode.UNIMPLEMENTED
            first = wal.SetFirstRequired(wal_pb2.SetFirstRequiredRequest())
            assert await rpc_code(first) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await plugin.close()
