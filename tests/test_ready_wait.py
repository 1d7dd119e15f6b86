"""Waiting for PostgreSQL to be ready: cheap while it takes long, prompt when it is ready.

The "postmaster" here is a ``sleep`` process and the pidfile is written by the test, line
for line as PostgreSQL writes it, so the wait can be observed without PostgreSQL's own
start-up time in the way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from instance_manager.errors import PostmasterExited, StartupTimeout
from instance_manager.postgres import pidfile, postmaster
from instance_manager.settings import Settings, load


def write_pidfile(pgdata: Path, pid: int, status: str) -> None:
    lines = [str(pid), str(pgdata), "1700000000", "5432", "/tmp", "*", "1 2", status]
    (pgdata / pidfile.PIDFILE).write_text("\n".join(lines) + "\n")


def read_syscalls() -> int:
    """read(2)-like system calls made by this process so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr in /proc/self/io")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    return load(None, {}, {"pgData": str(pgdata)})


@pytest.fixture
async def pm() -> AsyncIterator[postmaster.Postmaster]:
    proc = await asyncio.create_subprocess_exec("sleep", "60")
    yield postmaster.Postmaster(proc.pid, proc)
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def test_a_long_start_costs_few_pidfile_reads(
    settings: Settings, pm: postmaster.Postmaster
) -> None:
    write_pidfile(settings.pgdata, pm.pid, pidfile.STATUS_STARTING)
    before = read_syscalls()
    with pytest.raises(StartupTimeout):
        await postmaster.wait_ready(settings, pm, 1.0)
    # Polling every 5 ms, as before, made some 200 pidfile reads (400 read calls).
    assert read_syscalls() - before < 100


async def test_ready_is_seen_at_once(settings: Settings, pm: postmaster.Postmaster) -> None:
    write_pidfile(settings.pgdata, pm.pid, pidfile.STATUS_STARTING)
    written: list[float] = []

    def become_ready() -> None:
        write_pidfile(settings.pgdata, pm.pid, pidfile.STATUS_READY)
        written.append(time.monotonic())

    # Late enough that the back-off is past its first steps.
    asyncio.get_running_loop().call_later(0.35, become_ready)
    status = await postmaster.wait_ready(settings, pm, 10.0)
    assert status == pidfile.STATUS_READY
    assert time.monotonic() - written[0] < 0.02


async def test_an_exit_while_starting_is_seen_at_once(
    settings: Settings, pm: postmaster.Postmaster
) -> None:
    write_pidfile(settings.pgdata, pm.pid, pidfile.STATUS_STARTING)
    assert pm.proc is not None
    asyncio.get_running_loop().call_later(0.35, pm.proc.kill)
    started = time.monotonic()
    with pytest.raises(PostmasterExited):
        await postmaster.wait_ready(settings, pm, 10.0)
    assert time.monotonic() - started < 0.35 + 0.05
