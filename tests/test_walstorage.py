"""pg_wal on its own filesystem (spec.walStorage, --wal-dir) with the daemon and real
PostgreSQL: initdb, moving an existing pg_wal, archive, restore and point-in-time
recovery, on a tmpfs mounted for each test (tests/tmpfs_volume.py: needs root, as CI
runs the suite; without it the tests fail and say why).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.postgres import waldir
from instance_manager.wal import names
from tests.daemon import (
    PG_BIN,
    VENV_BIN,
    Daemon,
    Instance,
    base_spec,
    chown_tree,
    controldata_state,
    pg_user,
    postmaster_pid,
    wait_for,
)
from tests.pgbackrest_kit import SidecarProcess, make_dir, pgbackrest_spec
from tests.test_pgbackrest import take_backup
from tests.test_wal import (
    PLUGIN,
    PluginProcess,
    plugin_spec,
    sql,
    switch_segments,
    wait_archived,
)
from tests.tmpfs_volume import other_filesystem, tmpfs

Start = Callable[..., Daemon]
ACROSS_FILESYSTEMS = "restore spool and pg_wal are on different filesystems: handing over by copy"


@pytest.fixture
def wal_volume(tmp_root: Path) -> Iterator[Path]:
    """A second filesystem; requested before ``daemons`` so that it is unmounted after
    every daemon and postmaster of the test is gone."""
    with tmpfs(tmp_root / "walvol") as volume:
        yield volume


@pytest.fixture
def plugin(instance: Instance) -> Iterator[PluginProcess]:
    proc = PluginProcess(instance.root).start()
    yield proc
    proc.stop()


def base_backup(inst: Instance, target: Path, *extra: str) -> None:
    subprocess.run(
        [str(PG_BIN / "pg_basebackup"), "-D", str(target), "-h", "127.0.0.1",
         "-p", str(inst.pg_port), "-U", "postgres", "-X", "none", "-c", "fast", *extra],
        check=True, capture_output=True, user="postgres", group="postgres", extra_groups=[],
    )  # fmt: skip


def wal_restore(inst: Instance, name: str, destination: Path) -> subprocess.CompletedProcess[str]:
    """What restore_command runs, as the command line offers it."""
    argv = [str(VENV_BIN / "instance-manager"), "wal-restore", "--scratch-dir", str(inst.scratch)]
    return subprocess.run(
        [*argv, name, str(destination)], capture_output=True, text=True, timeout=60
    )


def restore_destinations(plugin: PluginProcess) -> list[Path]:
    return [Path(call["destination_file_name"]) for call in plugin.calls("restore")]


@pytest.mark.slow
def test_point_in_time_recovery_with_pg_wal_symlinked_to_another_filesystem(
    wal_volume: Path, instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    """Regression: the restore spool sat beside PGDATA, the handover into pg_wal was a
    rename, and the kernel answered EXDEV for every segment, so recovery never started."""
    instance.write_config(plugin_spec(max_parallel=4))
    primary = daemons(instance)
    primary.wait_ready()
    sql(instance, "CREATE TABLE kept AS SELECT g FROM generate_series(1, 100) g")
    restored = Instance(instance.root / "r")
    restored.root.mkdir()
    wal_dir = wal_volume / "pg_wal"
    wal_dir.mkdir(mode=0o700)
    chown_tree(restored.root)
    chown_tree(wal_volume)
    base_backup(instance, restored.pgdata, f"--waldir={wal_dir}")
    sql(instance, "INSERT INTO kept SELECT g FROM generate_series(101, 200) g")
    sql(instance, "SELECT pg_create_restore_point('walstorage_target')")
    sql(instance, "INSERT INTO kept SELECT g FROM generate_series(201, 300) g")
    closed = switch_segments(instance, 4)
    wait_archived(instance, closed[-1])
    assert primary.stop() == 0
    (restored.pgdata / "recovery.signal").touch()
    with open(restored.pgdata / "postgresql.auto.conf", "a") as auto_conf:
        auto_conf.write("recovery_target_name = 'walstorage_target'\n")
        auto_conf.write("recovery_target_action = 'promote'\n")
    chown_tree(restored.root)
    restored.write_config(
        base_spec(
            externalClusters=[{"name": "origin", "plugin": {"name": PLUGIN}}],
            wal={"maxParallel": 4},
        )
    )
    replica = daemons(restored, "--plugin-socket-dir", str(plugin.socket_dir))
    replica.wait_ready(120)
    wait_for(lambda: not sql(restored, "SELECT pg_is_in_recovery()")[0][0], 60, "promotion")
    assert sql(restored, "SELECT count(*) FROM kept") == [(200,)]
    assert (restored.pgdata / "pg_wal").resolve() == wal_dir
    spool = restored.root / "wal-restore-spool"
    assert other_filesystem(spool, wal_dir)
    assert any(dest.parent == spool for dest in restore_destinations(plugin))
    assert replica.find(ACROSS_FILESYSTEMS)
    assert not replica.find("WAL request failed"), replica.tail()
    assert replica.stop() == 0
    assert postmaster_pid(restored.pgdata) is None


@pytest.mark.slow
def test_wal_dir_takes_pg_wal_archives_restores_and_restarts(
    wal_volume: Path, instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    wal_dir = wal_volume / "pg_wal"  # absent, in a mount point that belongs to root
    instance.write_config(plugin_spec(max_parallel=3))
    first = daemons(instance, "--wal-dir", str(wal_dir))
    first.wait_ready()
    link = instance.pgdata / "pg_wal"
    assert os.readlink(link) == str(wal_dir)
    assert other_filesystem(wal_dir, instance.pgdata)
    assert first.find("pg_wal moved to the WAL directory")
    closed = switch_segments(instance, 3)
    wait_archived(instance, closed[-1])
    for name in closed:
        assert (plugin.storage / name).read_bytes() == (wal_dir / name).read_bytes()
    destination = link / "RECOVERYXLOG"
    for name in closed[:2]:
        done = wal_restore(instance, name, destination)
        assert done.returncode == 0, done.stderr
        assert destination.read_bytes() == (plugin.storage / name).read_bytes()
    destination.unlink()
    spool = wal_volume / "wal-restore-spool"
    assert spool / f"{closed[1]}.partial" in restore_destinations(plugin)  # prefetched
    # The first one straight into pg_wal (the daemon passes the resolved path), the
    # second one handed over from the spool.
    assert restore_destinations(plugin).count(wal_dir / "RECOVERYXLOG") == 1
    assert not first.find(ACROSS_FILESYSTEMS)
    assert first.stop() == 0
    second = daemons(instance, "--wal-dir", str(wal_dir))
    second.wait_ready()
    assert not second.find("pg_wal moved to the WAL directory")
    assert sql(instance, "SELECT count(*) FROM w") == [(3,)]
    assert second.stop() == 0
    assert controldata_state(instance.pgdata) == "shut down"


@pytest.mark.slow
def test_initdb_puts_pg_wal_on_the_wal_volume(
    wal_volume: Path, tmp_root: Path, daemons: Start
) -> None:
    inst = Instance(tmp_root)
    inst.write_config(base_spec(walStorage={"size": "1Gi"}))
    wal_dir = wal_volume / "wal" / "pg_wal"  # its parent is absent too
    daemon = daemons(inst, "--wal-dir", str(wal_dir))
    daemon.wait_ready(120)
    daemon.wait_log("bootstrap complete")
    assert os.readlink(inst.pgdata / "pg_wal") == str(wal_dir)
    postgres = pg_user()
    for directory in (wal_dir.parent, wal_dir, wal_volume / "wal" / "wal-restore-spool"):
        assert (directory.stat().st_uid, directory.stat().st_mode & 0o777) == (
            postgres.pw_uid,
            0o700,
        ), directory
    assert any(names.is_segment(p.name) for p in wal_dir.iterdir())
    assert daemon.stop() == 0
    assert controldata_state(inst.pgdata) == "shut down"


@pytest.mark.slow
def test_recovery_bootstrap_replays_on_the_wal_volume(
    wal_volume: Path, instance: Instance, daemons: Start
) -> None:
    """pgBackRest restores pg_wal as a directory: it is moved before recovery replays."""
    repo = make_dir(instance.root / "repo")
    sidecar = SidecarProcess(instance).start()
    try:
        instance.write_config(pgbackrest_spec(repo))
        source = daemons(instance)
        source.wait_ready()
        take_backup(instance, sidecar, "base", "full")
        sql(instance, "CREATE TABLE kept AS SELECT g FROM generate_series(1, 100) g")
        sql(instance, "SELECT pg_create_restore_point('walstorage_target')")
        sql(instance, "INSERT INTO kept SELECT g FROM generate_series(101, 150) g")
        wait_archived(instance, switch_segments(instance, 2)[-1])
        assert source.stop() == 0
    finally:
        sidecar.stop()
    restored = Instance(make_dir(instance.root / "r"))
    spec = pgbackrest_spec(repo, stanza="pitr")
    origin = {"name": PLUGIN_NAME, "parameters": {"stanza": "main", "repo1-path": str(repo)}}
    spec["externalClusters"] = [{"name": "origin", "plugin": origin}]
    target = {"targetName": "walstorage_target"}
    spec["bootstrap"] = {"recovery": {"source": "origin", "recoveryTarget": target}}
    restored.write_config(spec)
    wal_dir = wal_volume / "pg_wal"
    restored_sidecar = SidecarProcess(restored).start()
    try:
        daemon = daemons(restored, "--wal-dir", str(wal_dir))
        daemon.wait_ready(180)
        messages = daemon.messages()
        moved = messages.index("pg_wal moved to the WAL directory")
        assert moved < messages.index("recovery bootstrap complete"), daemon.tail()
        assert sql(restored, "SELECT count(*), max(g) FROM kept") == [(100, 100)]
        assert os.readlink(restored.pgdata / "pg_wal") == str(wal_dir)
        assert not (restored.pgdata / waldir.OLD_NAME).exists()
        assert daemon.stop() == 0
    finally:
        restored_sidecar.stop()
