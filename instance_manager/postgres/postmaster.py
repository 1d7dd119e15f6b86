"""The postmaster process: started as our direct child, or adopted from its pidfile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from instance_manager import log
from instance_manager.errors import PostmasterExited, StartupTimeout
from instance_manager.postgres import pidfile
from instance_manager.process import spawn
from instance_manager.settings import Settings

_logger = log.get()
_pg_logger = log.get("postgres")
# While PostgreSQL starts, the pidfile is read again whenever a file in PGDATA is written
# (inotify: "ready" is seen at once) and at least at these intervals, doubling from the
# first to the last. Without inotify the intervals stop growing at READY_POLL_BLIND, so
# that readiness is still noticed within 20 ms; pg_ctl polls every 100 ms.
READY_POLL_FIRST = 0.005
READY_POLL_MAX = 0.1
READY_POLL_BLIND = 0.02


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


def _ready_status(pgdata: Path, pid: int) -> str | None:
    """The pidfile's status once it names ``pid`` and says ready or standby, else None."""
    try:
        info = pidfile.read(pgdata)
    except ValueError:
        return None  # being written
    if info is None or info.pid != pid:
        return None
    if info.status in (pidfile.STATUS_READY, pidfile.STATUS_STANDBY):
        return info.status
    return None


async def wait_ready(settings: Settings, pm: Postmaster, timeout: float) -> str:
    """Wait until the pidfile says ready/standby; returns that status."""
    exited = asyncio.ensure_future(pm.wait())
    try:
        async with asyncio.timeout(timeout):
            with pidfile.Watch(settings.pgdata) as watch:
                exited.add_done_callback(lambda _: watch.wake())
                limit = READY_POLL_MAX if watch.active else READY_POLL_BLIND
                delay = READY_POLL_FIRST
                while pm.running:
                    status = _ready_status(settings.pgdata, pm.pid)
                    if status is not None:
                        return status
                    await watch.wait(delay)
                    delay = min(delay * 2, limit)
    except TimeoutError:
        raise StartupTimeout(
            f"PostgreSQL did not accept connections within {timeout:g} s"
        ) from None
    finally:
        exited.cancel()
    raise PostmasterExited(pm.pid, f"exited while starting: {await pm.wait()}")
