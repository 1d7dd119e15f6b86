"""The postmaster process: started as our direct child, or adopted from its pidfile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

from instance_manager import log
from instance_manager.errors import PostmasterExited, StartupTimeout
from instance_manager.postgres import pidfile
from instance_manager.process import spawn
from instance_manager.settings import Settings

_logger = log.get()
_pg_logger = log.get("postgres")
# How often to look at the pidfile while PostgreSQL starts: it is a cheap file read,
# and a short interval is what makes our start-to-ready beat pg_ctl's 100 ms polling.
READY_POLL_INTERVAL = 0.005


class Postmaster:
    """A running postmaster; ``wait()`` resolves when it exits, without polling."""

    def __init__(self, pid: int, proc: asyncio.subprocess.Process | None) -> None:
        self.pid = pid
        self.proc = proc
        self.adopted = proc is None
        self.started_at = time.monotonic()
        self._exited: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []  # held here: the loop keeps weak references
        self._watch()

    def _watch(self) -> None:
        if self.proc is not None:
            self.tasks.append(asyncio.get_running_loop().create_task(self._wait_child(self.proc)))
            return
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._exited.set_result("exited before it could be watched")
            return
        loop = asyncio.get_running_loop()

        def on_exit() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            if not self._exited.done():
                self._exited.set_result("exited (adopted postmaster, status unknown)")

        loop.add_reader(fd, on_exit)

    async def _wait_child(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        spawn.forget(proc.pid)
        if not self._exited.done():
            self._exited.set_result(spawn.describe_status(code))

    @property
    def running(self) -> bool:
        return not self._exited.done()

    async def wait(self) -> str:
        """Wait for the exit; returns how it ended ('exit status 0', 'killed by ...')."""
        return await asyncio.shield(self._exited)

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def postgres_env(settings: Settings) -> dict[str, str]:
    return spawn.base_env(
        {
            "PGDATA": str(settings.pgdata),
            "PG_OOM_ADJUST_FILE": "/proc/self/oom_score_adj",
            "PG_OOM_ADJUST_VALUE": "0",
            "TMPDIR": str(settings.tmp_dir),
            "LC_MESSAGES": "C",
        }
    )


def adopt_or_clean(settings: Settings) -> int | None:
    """The PID of a live postmaster serving PGDATA, or None after removing stale files."""
    try:
        info = pidfile.read(settings.pgdata)
    except ValueError as exc:
        log.event(_logger, "removing an unparsable pidfile", error=str(exc))
        pidfile.remove_stale(settings.pgdata, settings.run_dir)
        return None
    if info is None:
        return None
    if pidfile.is_postgres(info.pid, settings.pgdata):
        return info.pid
    log.event(_logger, "removing a stale pidfile", pid=info.pid)
    pidfile.remove_stale(settings.pgdata, settings.run_dir)
    return None


async def _pump(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
    """The postmaster's own stdout/stderr: PostgreSQL's lines, so never dropped."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip("\n")
        sink(text)
        log.event(_pg_logger, text, source="stderr", keep=True)
        await log.output().room()


async def start(settings: Settings, sink: Callable[[str], None]) -> Postmaster:
    """Adopt a live postmaster, or start ``postgres -D PGDATA`` as our own child."""
    pid = adopt_or_clean(settings)
    if pid is not None:
        log.event(_logger, "adopting the running postmaster", pid=pid)
        return Postmaster(pid, None)
    proc = await spawn.spawn(
        [settings.bin("postgres"), "-D", str(settings.pgdata)],
        env=postgres_env(settings),
        new_session=True,  # a terminal's Ctrl-C reaches us, not PostgreSQL directly
    )
    assert proc.stdout is not None
    pm = Postmaster(proc.pid, proc)
    pm.tasks.append(asyncio.get_running_loop().create_task(_pump(proc.stdout, sink)))
    log.event(_logger, "postmaster started", pid=proc.pid)
    return pm


async def wait_ready(settings: Settings, pm: Postmaster, timeout: float) -> str:
    """Wait until the pidfile says ready/standby; returns that status."""
    try:
        async with asyncio.timeout(timeout):
            while pm.running:
                try:
                    info = pidfile.read(settings.pgdata)
                except ValueError:
                    info = None  # being written
                if (
                    info
                    and info.pid == pm.pid
                    and info.status
                    in (
                        pidfile.STATUS_READY,
                        pidfile.STATUS_STANDBY,
                    )
                ):
                    return info.status
                await asyncio.sleep(READY_POLL_INTERVAL)
    except TimeoutError:
        raise StartupTimeout(
            f"PostgreSQL did not accept connections within {timeout:g} s"
        ) from None
    raise PostmasterExited(pm.pid, f"exited while starting: {await pm.wait()}")
