"""The WAL socket: private to the daemon's account, and only paths PostgreSQL's WAL commands use.

Requests go through the real Unix socket; the plugin side is a recording backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from instance_manager.errors import WalNotFound
from instance_manager.postgres import config
from instance_manager.process.privileges import UnsafeDirectory
from instance_manager.settings import load
from instance_manager.state import WalState
from instance_manager.wal.archiver import Archiver
from instance_manager.wal.restorer import Restorer
from instance_manager.wal.server import WalServer
from tests.daemon import Daemon, Instance, postmaster_pid

SEG = "000000010000000000000010"
REFUSED = b"error\0error\0refused: "


class Backend:
    """Stands for the plugins: records the paths it is handed."""

    def __init__(self) -> None:
        self.archived: list[Path] = []
        self.restored: list[Path] = []

    async def archive(self, source: Path) -> None:
        self.archived.append(source)

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        if name != SEG:
            raise WalNotFound(name)
        self.restored.append(destination)
        await asyncio.to_thread(destination.write_bytes, b"wal")


def make_pgdata(root: Path, wal_dir: Path | None = None) -> Path:
    """PGDATA with one segment in pg_wal; pg_wal a link to ``wal_dir`` when given."""
    pgdata = root / "pgdata"
    pgdata.mkdir()
    pg_wal = pgdata / "pg_wal"
    if wal_dir is not None:
        wal_dir.mkdir(parents=True)
        pg_wal.symlink_to(wal_dir)
    (pg_wal / "archive_status").mkdir(parents=True)
    (pg_wal / SEG).write_bytes(b"segment")
    (pgdata / "postgresql.conf").write_text("")
    return pgdata


@contextlib.asynccontextmanager
async def serving(root: Path, pgdata: Path, backend: Backend) -> AsyncIterator[Path]:
    socket = root / "run" / "wal" / "instance-manager.sock"
    socket.parent.parent.mkdir(exist_ok=True)
    state = WalState()
    archiver = Archiver(
        backend, root / "archive-spool", lambda: 1, state, inflight=root / "inflight"
    )
    restorer = Restorer(backend, root / "restore-spool", lambda: 1, lambda: 16 << 20, state)
    archiver.prepare()
    restorer.prepare()
    server = WalServer(socket, archiver, restorer, pgdata)
    task = asyncio.create_task(server.run())
    deadline = time.monotonic() + 10
    while not socket.exists():
        if task.done():
            await task  # raises what stopped the server
        assert time.monotonic() < deadline, "the WAL socket never appeared"
        await asyncio.sleep(0.01)
    try:
        yield socket
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ask(socket: Path, *fields: str) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(socket))
    try:
        writer.write("\0".join(fields).encode() + b"\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_archive_source_must_resolve_inside_pg_wal(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    outside = tmp_path / "secret"
    outside.write_text("not WAL")
    (pgdata / "pg_wal" / "000000010000000000000011").symlink_to(outside)
    backend = Backend()
    async with serving(tmp_path, pgdata, backend) as socket:
        assert await ask(socket, "archive", str(pgdata / "pg_wal" / SEG)) == b"ok\n"
        refused = [
            str(outside),
            "/etc/passwd",
            str(pgdata / "postgresql.conf"),  # inside PGDATA, not in pg_wal
            str(pgdata / "pg_wal" / ".." / "postgresql.conf"),
            str(pgdata / "pg_wal"),
            str(pgdata / "pg_wal" / "000000010000000000000011"),  # a link out of pg_wal
        ]
        for path in refused:
            reply = await ask(socket, "archive", path)
            assert reply.startswith(REFUSED + b"archive source "), (path, reply)
            assert b"outside PGDATA/pg_wal" in reply
    assert backend.archived == [pgdata / "pg_wal" / SEG]


async def test_restore_destination_must_resolve_inside_pg_wal(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    (pgdata / "pg_wal" / "RECOVERYHISTORY").symlink_to(tmp_path / "elsewhere")
    backend = Backend()
    async with serving(tmp_path, pgdata, backend) as socket:
        dest = pgdata / "pg_wal" / "RECOVERYXLOG"
        assert await ask(socket, "restore", SEG, str(dest), "0") == b"ok\n"
        assert dest.read_bytes() == b"wal"
        refused = [
            tmp_path / "RECOVERYXLOG",
            pgdata / ".." / "RECOVERYXLOG",
            pgdata / "RECOVERYXLOG",  # inside PGDATA, not in pg_wal: PostgreSQL never asks
            pgdata / "global" / "pg_control",
            pgdata / "pg_wal",
            pgdata / "pg_wal" / "RECOVERYHISTORY",  # an existing link pointing out
        ]
        for dest in refused:
            reply = await ask(socket, "restore", SEG, str(dest), "1")
            assert reply.startswith(REFUSED + b"restore destination "), (dest, reply)
            assert b"outside PGDATA/pg_wal" in reply
    assert backend.restored == [pgdata / "pg_wal" / "RECOVERYXLOG"]
    assert not (tmp_path / "RECOVERYXLOG").exists() and not (tmp_path / "elsewhere").exists()
    assert not (pgdata / "RECOVERYXLOG").exists()


async def test_separate_wal_directory_is_followed(tmp_path: Path) -> None:
    """pg_wal may be a link to its own volume: paths through it, or into it, are PostgreSQL's."""
    wal_dir = tmp_path / "wal" / "pg_wal"
    pgdata = make_pgdata(tmp_path, wal_dir)
    backend = Backend()
    async with serving(tmp_path, pgdata, backend) as socket:
        assert await ask(socket, "archive", str(pgdata / "pg_wal" / SEG)) == b"ok\n"
        assert await ask(socket, "archive", str(wal_dir / SEG)) == b"ok\n"
        dest = pgdata / "pg_wal" / "RECOVERYXLOG"
        assert await ask(socket, "restore", SEG, str(dest), "0") == b"ok\n"
        reply = await ask(socket, "archive", str(tmp_path / "wal" / "other"))
        assert reply.startswith(REFUSED)
    # The plugins get the resolved path: the file where it really is.
    assert backend.archived == [wal_dir / SEG, wal_dir / SEG]
    assert backend.restored == [wal_dir / "RECOVERYXLOG"]
    assert (wal_dir / "RECOVERYXLOG").read_bytes() == b"wal"


async def test_socket_is_alone_in_a_private_directory(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    (tmp_path / "run" / "wal").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "run" / "wal", 0o755)
    async with serving(tmp_path, pgdata, Backend()) as socket:
        assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(socket.stat().st_mode)
    settings = load(None, {}, {"pgData": str(pgdata), "scratchDir": str(tmp_path / "c")})
    socket = config.wal_socket(settings)
    assert socket == config.wal_socket_in(settings.instance.scratchDir)
    assert socket.parent != settings.run_dir  # not beside PostgreSQL's own socket
    assert socket.parent.parent == settings.run_dir


async def test_socket_directory_behind_a_link_is_refused(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "wal").symlink_to(target)
    with pytest.raises(UnsafeDirectory, match="not a directory of its own"):
        async with serving(tmp_path, pgdata, Backend()):
            pass
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and not any(target.iterdir())


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no Umask line for {pid}")


@pytest.mark.slow
def test_daemon_umask_is_private_and_postgres_keeps_its_own(
    instance: Instance, daemons: Callable[..., Daemon]
) -> None:
    """The daemon runs with umask 0077; PostgreSQL still creates group-readable files in a
    data directory initialised with group access (mode 0750)."""
    os.chmod(instance.pgdata, 0o750)
    daemon = daemons(instance)
    daemon.wait_ready()
    assert umask_of(daemon.proc.pid) == 0o077
    socket = instance.scratch / "run" / "wal" / "instance-manager.sock"
    assert stat.S_ISSOCK(socket.stat().st_mode)
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    postmaster = postmaster_pid(instance.pgdata)
    assert postmaster is not None and umask_of(postmaster) == 0o027
    with psycopg.connect(instance.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE TABLE umask_probe (x int)")
        row = conn.execute("SELECT pg_relation_filepath('umask_probe')").fetchone()
    assert row is not None
    assert stat.S_IMODE((instance.pgdata / row[0]).stat().st_mode) == 0o640
    assert daemon.stop() == 0
