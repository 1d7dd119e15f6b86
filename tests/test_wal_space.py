"""No room for a WAL segment: PostgreSQL is not started and the daemon exits with 4."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, Instance, chown_tree

Start = Callable[..., Daemon]


@pytest.fixture
def small_wal_volume(instance: Instance) -> Iterator[Path]:
    """pg_wal moved onto a tmpfs with less than one segment of room left."""
    mount = instance.root / "walvol"
    mount.mkdir()
    wal = instance.pgdata / "pg_wal"
    used = sum(f.stat().st_size for f in wal.rglob("*") if f.is_file())
    size_kib = used // 1024 + 8 * 1024  # 8 MiB left: less than one 16 MiB segment
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"cannot mount a tmpfs (CI runs as root): {result.stderr}"
    try:
        shutil.copytree(wal, mount / "pg_wal", symlinks=True)
        shutil.rmtree(wal)
        os.symlink(mount / "pg_wal", wal)
        chown_tree(mount)
        user = pwd.getpwnam("postgres")
        os.lchown(wal, user.pw_uid, user.pw_gid)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_no_space_for_wal_exits_4_without_starting(
    instance: Instance, small_wal_volume: Path, daemons: Start
) -> None:
    free = shutil.disk_usage(small_wal_volume).free
    assert free < 16 * 1024 * 1024
    daemon = daemons(instance)
    assert daemon.wait_exit(60) == 4, daemon.tail()
    assert not daemon.find("postmaster started")
    assert not (instance.pgdata / "postmaster.pid").exists()
