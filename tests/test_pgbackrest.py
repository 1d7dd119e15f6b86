"""The pgBackRest plugin sidecar with real pgBackRest, real PostgreSQL 15 and the daemon.

Each test: a copy of the template PGDATA, a posix repository in the test's directory, the
daemon (`instance-manager run`) and the sidecar (`python -m instance_manager.pgbackrest`),
both as postgres.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.plugins._gen import backup_pb2, metrics_pb2, wal_pb2
from instance_manager.plugins.connection import Channel
from tests.daemon import PG_BIN, Daemon, Instance, chown_tree, free_port, wait_for
from tests.pgbackrest_kit import (
    SidecarProcess,
    archived_segments,
    archiver,
    call,
    cluster_json,
    info,
    make_dir,
    pgbackrest,
    pgbackrest_spec,
    pgbench,
    ready_files,
    run_as_postgres,
    sql,
    switch_segments,
    wait_archived,
)

Start = Callable[..., Daemon]


@pytest.fixture
def repo(instance: Instance) -> Path:
    return make_dir(instance.root / "repo")


@pytest.fixture
def sidecar(instance: Instance) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(instance).start()
    yield proc
    proc.stop()


def segments_between(first: str, last: str) -> set[str]:
    """Every segment name of timeline 1 from first to last (16 MB segments)."""

    def number(name: str) -> int:
        return int(name[8:16], 16) * 256 + int(name[16:24], 16)

    return {f"00000001{n // 256:08X}{n % 256:08X}" for n in range(number(first), number(last) + 1)}


def test_wal_reaches_the_repository_and_pgbackrest_check_passes(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    instance.write_config(pgbackrest_spec(repo, max_parallel=4))
    daemon = daemons(instance)
    daemon.wait_ready()
    closed = switch_segments(instance, 2)
    pgbench(instance, "-i", "-s", "4", "-q")
    pgbench(instance, "-T", "2", "-c", "2", "-j", "2")
    closed += switch_segments(instance, 1)
    wait_archived(instance, closed[-1])
    assert sidecar.find("stanza created"), sidecar.tail()
    archive = info(instance, repo)["archive"][0]
    assert archive["min"] <= closed[0] and archive["max"] >= closed[-1]
    assert segments_between(closed[0], closed[-1]) <= archived_segments(instance, repo)
    # A WAL switch archived through the daemon. --no-archive-check only skips the test that
    # archive_command names pgbackrest (ours is the instance manager's); check still waits.
    pgbackrest(instance, repo, "main", "check", "--no-archive-check")
    # Restore through the plugin: the same bytes; a missing segment is NOT_FOUND.
    dest = make_dir(instance.root / "restored") / "RECOVERYXLOG"

    async def restore(ch: Channel, name: str) -> grpc.StatusCode:
        request = wal_pb2.WALRestoreRequest(
            cluster_definition=cluster_json(instance),
            source_wal_name=name,
            destination_file_name=str(dest),
        )
        try:
            await ch.wal.Restore(request)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert call(sidecar.socket, lambda ch: restore(ch, closed[0])) == grpc.StatusCode.OK
    assert dest.read_bytes() == (instance.pgdata / "pg_wal" / closed[0]).read_bytes()
    missing = call(sidecar.socket, lambda ch: restore(ch, "0000000100000000000000FF"))
    assert missing == grpc.StatusCode.NOT_FOUND
    assert daemon.stop() == 0


def backup_definition(name: str) -> bytes:
    doc = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Backup",
        "metadata": {"name": name},
        "spec": {"method": "plugin", "pluginConfiguration": {"name": PLUGIN_NAME}},
    }
    return json.dumps(doc).encode()


def take_backup(
    inst: Instance, sidecar: SidecarProcess, name: str, kind: str
) -> backup_pb2.BackupResult:
    request = backup_pb2.BackupRequest(
        cluster_definition=cluster_json(inst),
        backup_definition=backup_definition(name),
        parameters={"type": kind, "startFast": "true"},
    )

    async def backup(ch: Channel) -> backup_pb2.BackupResult:
        result: backup_pb2.BackupResult = await ch.backup.Backup(request)
        return result

    return call(sidecar.socket, backup)


def collect_metrics(inst: Instance, sidecar: SidecarProcess) -> dict[str, float]:
    async def collect(ch: Channel) -> dict[str, float]:
        raw = cluster_json(inst)
        defined = await ch.metrics.Define(metrics_pb2.DefineMetricsRequest(cluster_definition=raw))
        names = {m.fq_name for m in defined.metrics}
        got = await ch.metrics.Collect(metrics_pb2.CollectMetricsRequest(cluster_definition=raw))
        assert {m.fq_name for m in got.metrics} <= names
        assert all(m.value_type.type == metrics_pb2.MetricType.TYPE_GAUGE for m in defined.metrics)
        return {m.fq_name.removeprefix("cnpg_plugin_pgbackrest_"): m.value for m in got.metrics}

    return call(sidecar.socket, collect)


def assert_matches_info(result: backup_pb2.BackupResult, record: dict[str, Any]) -> None:
    assert result.backup_id == record["label"]
    assert (result.started_at, result.stopped_at) == (
        record["timestamp"]["start"],
        record["timestamp"]["stop"],
    )
    assert (result.begin_wal, result.end_wal) == (
        record["archive"]["start"],
        record["archive"]["stop"],
    )
    assert (result.begin_lsn, result.end_lsn) == (record["lsn"]["start"], record["lsn"]["stop"])
    assert result.metadata["type"] == record["type"]
    assert result.metadata["prior"] == (record["prior"] or "")
    assert result.metadata["databaseSize"] == str(record["info"]["size"])
    label = result.backup_label_file.decode()
    assert label.startswith(f"START WAL LOCATION: {result.begin_lsn} (file {result.begin_wal})")
    assert "LABEL: pgBackRest backup started at" in label


def test_backup_result_matches_pgbackrest_info(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    instance.write_config(pgbackrest_spec(repo))
    daemon = daemons(instance)
    daemon.wait_ready()
    full = take_backup(instance, sidecar, "nightly", "full")
    record = info(instance, repo, "main", f"--set={full.backup_id}")["backup"][0]
    assert_matches_info(full, record)
    assert full.backup_name == "nightly" and record["annotation"]["cnpg-backup"] == "nightly"
    assert full.online and full.instance_id == "test-1"
    assert full.tablespace_map_file == b""  # no tablespaces
    stanza = info(instance, repo)
    assert full.metadata["systemIdentifier"] == str(stanza["db"][0]["system-id"])
    assert full.metadata["stanza"] == "main" and full.metadata["timeline"] == "1"
    sql(instance, "CREATE TABLE after_full AS SELECT g FROM generate_series(1, 1000) g")
    incr = take_backup(instance, sidecar, "hourly", "incr")
    assert_matches_info(incr, info(instance, repo, "main", f"--set={incr.backup_id}")["backup"][0])
    assert incr.metadata["prior"] == full.backup_id
    metrics = collect_metrics(instance, sidecar)
    assert metrics["first_recoverability_point"] == full.stopped_at
    assert metrics["last_available_backup_timestamp"] == incr.stopped_at
    assert metrics["backups"] == 2
    assert metrics["repository_size_bytes"] > 0
    assert metrics["last_archive_timestamp"] > 0
    assert (
        "last_failed_backup_timestamp" not in metrics or not metrics["last_failed_backup_timestamp"]
    )
    assert daemon.stop() == 0


@pytest.mark.slow
def test_point_in_time_recovery_reaches_exactly_the_rows_before_the_target(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    instance.write_config(pgbackrest_spec(repo))
    source = daemons(instance)
    source.wait_ready()
    take_backup(instance, sidecar, "base", "full")
    sql(instance, "CREATE TABLE kept AS SELECT g FROM generate_series(1, 100) g")
    target = str(sql(instance, "SELECT clock_timestamp()")[0][0])
    time.sleep(1.1)
    sql(instance, "INSERT INTO kept SELECT g FROM generate_series(101, 150) g")
    wait_archived(instance, switch_segments(instance, 1)[-1])
    assert source.stop() == 0
    sidecar.stop()

    restored = Instance(make_dir(instance.root / "r"))
    restored.write_config(recovery_spec(repo, target))
    restored_sidecar = SidecarProcess(restored).start()
    try:
        daemon = daemons(restored)
        daemon.wait_ready(180)
        assert daemon.find("recovery bootstrap complete"), daemon.tail()
        assert sql(restored, "SELECT count(*), max(g) FROM kept") == [(100, 100)]
        assert sql(restored, "SELECT pg_is_in_recovery()") == [(False,)]
        assert int(str(sql(restored, "SELECT timeline_id FROM pg_control_checkpoint()")[0][0])) > 1
        auto = (restored.pgdata / "postgresql.auto.conf").read_text()
        assert "recovery_target_time" not in auto and "BEGIN recovery target" not in auto
        assert not (restored.root / ".instance-manager-recovery").exists()
        # The new timeline's history went to the new cluster's own stanza.
        wait_for(lambda: info(restored, repo, "pitr")["archive"], 30, "the pitr archive")
        assert daemon.stop() == 0
    finally:
        restored_sidecar.stop()


def recovery_spec(repo: Path, target_time: str) -> dict[str, Any]:
    """A new cluster bootstrapped from stanza main at ``target_time``, archiving to pitr."""
    spec = pgbackrest_spec(repo, stanza="pitr")
    source = {"name": PLUGIN_NAME, "parameters": {"stanza": "main", "repo1-path": str(repo)}}
    spec["externalClusters"] = [{"name": "origin", "plugin": source}]
    spec["bootstrap"] = {
        "recovery": {"source": "origin", "recoveryTarget": {"targetTime": target_time}}
    }
    return spec


@pytest.mark.slow
def test_sidecar_killed_mid_stream_loses_nothing_and_catches_up(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    instance.write_config(pgbackrest_spec(repo, max_parallel=4))
    daemon = daemons(instance)
    daemon.wait_ready()
    first = switch_segments(instance, 1)[0]
    wait_archived(instance, first)
    _, archived, failed = archiver(instance)
    load = threading.Thread(target=pgbench, args=(instance, "-i", "-s", "6", "-q"))
    load.start()
    wait_for(lambda: archiver(instance)[1] >= archived + 2, 60, "archiving under load")
    sidecar.kill()  # SIGKILL while segments are being pushed
    load.join()
    closed = switch_segments(instance, 2)
    wait_for(lambda: archiver(instance)[2] > failed, 60, "archive_command to fail")
    assert set(closed) <= ready_files(instance)  # kept by PostgreSQL, not lost
    sidecar.start()  # over the stale socket the killed one left
    closed += switch_segments(instance, 1)
    wait_archived(instance, closed[-1], 120)
    assert segments_between(first, closed[-1]) <= archived_segments(instance, repo)
    pgbackrest(instance, repo, "main", "verify")
    assert daemon.stop() == 0


def foreign_stanza(root: Path, repo: Path) -> None:
    """Stanza 'other' in ``repo``, created by another database system (a fresh initdb)."""
    other = Instance(make_dir(root / "o"), pg_port=free_port())
    make_dir(other.socket_dir)
    run_as_postgres(str(PG_BIN / "initdb"), "-N", "-D", str(other.pgdata))
    options = (
        f"-c port={other.pg_port} -c unix_socket_directories={other.socket_dir} "
        "-c listen_addresses=''"
    )
    ctl = [str(PG_BIN / "pg_ctl"), "-D", str(other.pgdata), "-w", "-l", str(root / "o.log")]
    run_as_postgres(*ctl, "-o", options, "start")
    try:
        pgbackrest(other, repo, "other", "stanza-create")
    finally:
        run_as_postgres(*ctl, "-m", "immediate", "stop")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("foreign stanza", "system-id"),
        ("unusable repository", "Not a directory"),
        ("missing stanza, createStanza false", "createStanza is false"),
    ],
)
def test_wrong_stanza_or_repository_is_a_clear_error_and_archiving_fails(
    instance: Instance,
    repo: Path,
    sidecar: SidecarProcess,
    daemons: Start,
    case: str,
    expected: str,
) -> None:
    if case == "foreign stanza":
        foreign_stanza(instance.root, repo)
        spec = pgbackrest_spec(repo, stanza="other")
    elif case == "unusable repository":
        blocker = instance.root / "not-a-directory"
        blocker.write_text("")
        chown_tree(blocker)
        spec = pgbackrest_spec(blocker / "repo")
    else:
        spec = pgbackrest_spec(repo, stanza="absent", createStanza="false")
    instance.write_config(spec)
    daemon = daemons(instance)
    daemon.wait_ready()
    before = archiver(instance)  # the template's statistics carry over
    closed = switch_segments(instance, 1)
    failure = daemon.wait_log("WAL request failed")
    assert expected in failure["error"], failure
    wait_for(lambda: sidecar.find("Archive failed"), 10, "the sidecar's error")
    assert expected in sidecar.find("Archive failed")[0]["error"]
    last, archived, failed = archiver(instance)
    assert (last, archived) == before[:2] and failed > before[2]  # never a silent success
    assert closed[0] in ready_files(instance)
    assert daemon.stop() == 0
