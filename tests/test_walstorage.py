"""pg_wal on its own filesystem (spec.walStorage, --wal-dir): initdb, moving an existing
pg_wal, archive, restore and point-in-time recovery, on a real tmpfs mounted for the test.

Mounting needs root, as CI runs the suite. Without it these tests fail and say why: a
skipped test would hide that the WAL volume is not tested at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from instance_manager import settings as settings_module
from instance_manager.errors import SettingsError, WalNotFound
from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.postgres import bootstrap, waldir
from instance_manager.settings import CNPG_WAL_DIR, Settings
from instance_manager.state import WalState
from instance_manager.wal import names
from instance_manager.wal.restorer import Restorer
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

Start = Callable[..., Daemon]
VOLUME_SIZE = "512m"
ACROSS_FILESYSTEMS = "restore spool and pg_wal are on different filesystems: handing over by copy"


def mount_tmpfs(path: Path) -> None:
    """A fresh tmpfs at ``path`` (root-owned, 0755, as a volume's mount point may be)."""
    if os.geteuid() != 0:
        pytest.fail(
            "the WAL volume tests mount a tmpfs and must run as root (CI does); "
            f"running as uid {os.geteuid()}"
        )
    path.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_SIZE},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} for the WAL volume: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture
def wal_volume(tmp_root: Path) -> Iterator[Path]:
    """A second filesystem, mounted for the test; requested before ``daemons`` so that it
    is unmounted after every daemon and postmaster of the test is gone."""
    volume = tmp_root / "walvol"
    mount_tmpfs(volume)
    try:
        yield volume
    finally:
        unmount(volume)


@pytest.fixture
def plugin(instance: Instance) -> Iterator[PluginProcess]:
    proc = PluginProcess(instance.root).start()
    yield proc
    proc.stop()


def other_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev != os.stat(b).st_dev


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


# -- settings and initdb -----------------------------------------------------------------


def load(tmp: Path, spec: dict[str, object] | None = None, **flags: str) -> Settings:
    config = tmp / "cluster.json"
    config.write_text(json.dumps({"kind": "Cluster", "spec": spec or {}}))
    return settings_module.load(config, {}, {"pgData": str(tmp / "pgdata"), **flags})


def test_wal_storage_puts_pg_wal_on_cnpg_path_unless_a_wal_dir_is_given(tmp_path: Path) -> None:
    assert load(tmp_path).wal_dir is None
    assert load(tmp_path).restore_spool == tmp_path / "wal-restore-spool"
    storage = {"walStorage": {"size": "1Gi"}}
    cnpg = load(tmp_path, storage)
    assert cnpg.wal_dir == CNPG_WAL_DIR
    assert cnpg.restore_spool == CNPG_WAL_DIR.parent / "wal-restore-spool"
    assert f"--waldir={CNPG_WAL_DIR}" in bootstrap.initdb_argv(cnpg)
    own = load(tmp_path, storage, walDir=str(tmp_path / "vol" / "pg_wal"))
    assert own.wal_dir == tmp_path / "vol" / "pg_wal"
    assert own.restore_spool == tmp_path / "vol" / "wal-restore-spool"
    assert "--waldir" not in " ".join(bootstrap.initdb_argv(load(tmp_path)))
    for inside in (tmp_path / "pgdata" / "pg_wal", tmp_path):
        with pytest.raises(SettingsError, match=r"instance\.walDir: .* must be outside PGDATA"):
            load(tmp_path, walDir=str(inside))


# -- the restorer across filesystems -------------------------------------------------------


class Store:
    """A WalBackend serving restores from a dict; records where each file was written."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.calls: list[tuple[str, Path]] = []

    async def archive(self, source: Path) -> None:
        raise AssertionError("not used")

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        self.calls.append((name, destination))
        if name not in self.files:
            raise WalNotFound(name)
        await asyncio.to_thread(destination.write_bytes, self.files[name])


def segments(count: int) -> dict[str, bytes]:
    first = "000000010000000000000020"
    return {name: os.urandom(4096) for name in [first, *names.following(first, count - 1)]}


async def test_prefetched_segment_crosses_filesystems_by_copy(
    wal_volume: Path, tmp_root: Path
) -> None:
    files = segments(3)
    first, second, third = files
    store, state = Store(files), WalState()
    restorer = Restorer(store, wal_volume / "spool", lambda: 3, lambda: 16 << 20, state)
    restorer.prepare()
    pg_wal = tmp_root / "pg_wal"
    pg_wal.mkdir()
    assert other_filesystem(pg_wal, restorer.spool)
    destination = pg_wal / "RECOVERYXLOG"
    await restorer.restore(first, destination, rewind=False)
    assert destination.read_bytes() == files[first]
    await restorer.restore(second, destination, rewind=False)  # waits for its prefetch
    assert destination.read_bytes() == files[second]
    await restorer.restore(third, destination, rewind=False)
    assert destination.read_bytes() == files[third]
    assert [name for name, _ in store.calls].count(second) == 1
    assert (second, restorer.spool / f"{second}.partial") in store.calls
    assert state.restored_from_spool == 2
    assert sorted(p.name for p in pg_wal.iterdir()) == ["RECOVERYXLOG"]
    assert not (restorer.spool / second).exists()
    await restorer.close()


async def test_any_spool_failure_means_fetching_directly(tmp_root: Path) -> None:
    files = segments(2)
    first, second = files
    blocked = tmp_root / "not-a-directory"
    blocked.write_text("")
    store, state = Store(files), WalState()
    restorer = Restorer(store, blocked / "spool", lambda: 4, lambda: 16 << 20, state)
    restorer.prepare()
    destination = tmp_root / "RECOVERYXLOG"
    for name in (first, second):
        await restorer.restore(name, destination, rewind=False)
        assert destination.read_bytes() == files[name]
    assert store.calls == [(first, destination), (second, destination)]
    spool = tmp_root / "spool"
    restorer = Restorer(store, spool, lambda: 4, lambda: 16 << 20, state)
    restorer.prepare()
    spool.rmdir()  # gone after start-up: every hand-over and prefetch fails
    await restorer.restore(second, destination, rewind=False)
    assert destination.read_bytes() == files[second]
    await restorer.close()


# -- moving an existing pg_wal onto the WAL volume ---------------------------------------


def data_directory(root: Path) -> Path:
    pgdata = root / "pgdata"
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "pg_wal" / "000000010000000000000001").write_bytes(b"wal" * 100)
    (pgdata / "pg_wal" / "archive_status" / "000000010000000000000001.ready").touch()
    return pgdata


def test_existing_pg_wal_moves_to_the_wal_directory(wal_volume: Path, tmp_root: Path) -> None:
    pgdata = data_directory(tmp_root)
    wal_dir = wal_volume / "pg_wal"
    settings = load(tmp_root, walDir=str(wal_dir))
    waldir.place(settings)
    assert os.readlink(pgdata / "pg_wal") == str(wal_dir)
    assert (wal_dir / "000000010000000000000001").read_bytes() == b"wal" * 100
    assert (wal_dir / "archive_status" / "000000010000000000000001.ready").exists()
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION", "pg_wal"]
    assert sorted(p.name for p in wal_dir.iterdir()) == [
        "000000010000000000000001",
        "archive_status",
    ]
    waldir.place(settings)  # a restart: nothing to do
    assert os.readlink(pgdata / "pg_wal") == str(wal_dir)


def test_an_interrupted_move_is_finished(wal_volume: Path, tmp_root: Path) -> None:
    pgdata = data_directory(tmp_root)
    wal_dir = wal_volume / "pg_wal"
    wal_dir.mkdir()
    (wal_dir / waldir.MOVING_MARKER).touch()
    (wal_dir / "000000010000000000000001.instance-manager-copy").write_bytes(b"w")
    waldir.place(load(tmp_root, walDir=str(wal_dir)))  # crashed while copying
    assert (wal_dir / "000000010000000000000001").read_bytes() == b"wal" * 100
    assert sorted(p.name for p in wal_dir.iterdir()) == [
        "000000010000000000000001",
        "archive_status",
    ]
    (pgdata / "pg_wal").unlink()
    shutil.copytree(wal_dir, pgdata / waldir.OLD_NAME)
    (wal_dir / waldir.MOVING_MARKER).touch()
    waldir.place(load(tmp_root, walDir=str(wal_dir)))  # crashed before the symlink
    assert os.readlink(pgdata / "pg_wal") == str(wal_dir)
    assert not (pgdata / waldir.OLD_NAME).exists()
    assert not (wal_dir / waldir.MOVING_MARKER).exists()


def test_pg_wal_is_never_mixed_with_another_wal_directory(wal_volume: Path, tmp_root: Path) -> None:
    pgdata = data_directory(tmp_root)
    wal_dir = wal_volume / "pg_wal"
    wal_dir.mkdir()
    (wal_dir / "000000010000000000000009").write_bytes(b"someone else's")
    with pytest.raises(SettingsError, match="is not empty and PGDATA/pg_wal is a directory"):
        waldir.place(load(tmp_root, walDir=str(wal_dir)))
    assert (pgdata / "pg_wal").is_dir() and not (pgdata / "pg_wal").is_symlink()
    shutil.rmtree(pgdata / "pg_wal")
    (pgdata / "pg_wal").symlink_to(wal_volume)
    with pytest.raises(SettingsError, match=r"links to .*, not to"):
        waldir.place(load(tmp_root, walDir=str(wal_dir)))
