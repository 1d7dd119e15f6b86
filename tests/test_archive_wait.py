"""PostgreSQL's archive_command waits in the shell for a segment being stored ahead.

The rendered command runs under /bin/sh against the real Archiver, whose look-ahead holds
the segment's in-flight lock while a gated backend "stores" it; no daemon answers the WAL
socket, so a command that falls through to the client says so on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from instance_manager.errors import PluginError, WalNotFound
from instance_manager.postgres import config
from instance_manager.settings import Settings
from instance_manager.state import WalState
from instance_manager.wal import install
from instance_manager.wal.archiver import Archiver
from tests.test_config_render import make_settings
from tests.waiting import eventually

FIRST, SECOND = "000000010000000000000007", "000000010000000000000008"


class GatedBackend:
    """Stores a segment when its gate opens; ``failing`` segments fail then instead."""

    def __init__(self) -> None:
        self.gates = {FIRST: asyncio.Event(), SECOND: asyncio.Event()}
        self.gates[FIRST].set()
        self.failing: set[str] = set()

    async def archive(self, source: Path) -> None:
        await self.gates[source.name].wait()
        if source.name in self.failing:
            raise PluginError(f"cannot store {source.name}")

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        raise WalNotFound(name)


def waiting_on(path: Path) -> bool:
    """Someone is blocked on a lock of ``path`` (a "->" line of /proc/locks)."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(f":{inode}"):
            return True
    return False


async def shell_for(current: Settings, segment: str) -> asyncio.subprocess.Process:
    command = config.archive_command(current).replace("%f", segment)
    command = command.replace("%p", f"pg_wal/{segment}")
    return await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=current.pgdata,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def archive_ahead(tmp_root: Path, backend: GatedBackend) -> tuple[Settings, Archiver]:
    """PostgreSQL archived FIRST; the look-ahead (maxParallel 2) now holds SECOND."""
    current = make_settings(tmp_root)
    install.install(config.manager_path(current), config.wal_socket(current), 5)
    pg_wal = current.pgdata / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    for name in (FIRST, SECOND):
        (pg_wal / name).write_bytes(b"wal")
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    archiver = Archiver(
        backend, current.archive_spool, lambda: 2, WalState(), inflight=current.archive_inflight
    )
    archiver.prepare()
    await archiver.archive(pg_wal / FIRST)
    lock = current.archive_inflight / SECOND
    await eventually(lock.exists, 5, "the in-flight file of the segment stored ahead")
    return current, archiver


async def test_the_shell_waits_for_the_upload_and_never_starts_the_client(
    tmp_root: Path,
) -> None:
    backend = GatedBackend()
    current, archiver = await archive_ahead(tmp_root, backend)
    try:
        shell = await shell_for(current, SECOND)
        lock = current.archive_inflight / SECOND
        await eventually(lambda: waiting_on(lock), 10, "the shell to wait on the lock")
        assert shell.returncode is None
        backend.gates[SECOND].set()
        async with asyncio.timeout(10):
            _, err = await shell.communicate()
        assert (shell.returncode, err) == (0, b"")
        assert (current.archive_spool / SECOND).exists()
        assert not lock.exists()
    finally:
        await archiver.close()


async def test_a_failed_upload_ahead_hands_the_segment_to_the_client(tmp_root: Path) -> None:
    backend = GatedBackend()
    backend.failing.add(SECOND)
    current, archiver = await archive_ahead(tmp_root, backend)
    try:
        shell = await shell_for(current, SECOND)
        lock = current.archive_inflight / SECOND
        await eventually(lambda: waiting_on(lock), 10, "the shell to wait on the lock")
        backend.gates[SECOND].set()
        async with asyncio.timeout(10):
            _, err = await shell.communicate()
        # no marker: the client ran, and (no daemon here) failed, so PostgreSQL retries
        assert shell.returncode == 1
        assert f"wal archive {SECOND}: instance manager not reachable" in err.decode()
        assert not (current.archive_spool / SECOND).exists()
    finally:
        await archiver.close()


async def test_a_restart_clears_in_flight_files_nobody_holds(tmp_root: Path) -> None:
    current = make_settings(tmp_root)
    current.archive_inflight.mkdir(parents=True)
    (current.archive_inflight / SECOND).touch()  # left by a daemon that died
    archiver = Archiver(
        GatedBackend(),
        current.archive_spool,
        lambda: 2,
        WalState(),
        inflight=current.archive_inflight,
    )
    archiver.prepare()
    assert os.listdir(current.archive_inflight) == []
