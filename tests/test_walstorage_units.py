"""pg_wal on its own filesystem, below the daemon: settings and initdb, the restorer's
hand-over across filesystems, and moving an existing pg_wal (a tmpfs per test)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from instance_manager import settings as settings_module
from instance_manager.errors import SettingsError, WalNotFound
from instance_manager.postgres import bootstrap, waldir
from instance_manager.settings import CNPG_WAL_DIR, Settings
from instance_manager.state import WalState
from instance_manager.wal import names
from instance_manager.wal.restorer import Restorer
from tests.tmpfs_volume import other_filesystem, tmpfs


@pytest.fixture
def wal_volume(tmp_root: Path) -> Iterator[Path]:
    """A second filesystem; requested before ``daemons`` so that it is unmounted after
    every daemon and postmaster of the test is gone."""
    with tmpfs(tmp_root / "walvol") as volume:
        yield volume


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
