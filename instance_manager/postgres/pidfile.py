"""``postmaster.pid``: is the PostgreSQL it names alive, and is it really ours?

A PID in a leftover pidfile may have been recycled by an unrelated process after a
crash, so "the PID exists" is not enough: the process must be a ``postgres``
executable whose data directory is this PGDATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PIDFILE = "postmaster.pid"

# Line 8 of the pidfile (PM_STATUS_* in PostgreSQL's pidfile.h).
STATUS_STARTING = "starting"
STATUS_STOPPING = "stopping"
STATUS_READY = "ready"
STATUS_STANDBY = "standby"


@dataclass(frozen=True)
class PidFile:
    pid: int
    data_dir: str
    port: int | None
    socket_dir: str
    status: str


def read(pgdata: Path) -> PidFile | None:
    """Parse the pidfile; None when absent. Raises ValueError when unparsable."""
    try:
        lines = (pgdata / PIDFILE).read_text().splitlines()
    except FileNotFoundError:
        return None
    if not lines or not lines[0].strip().lstrip("-").isdigit():
        raise ValueError(f"{PIDFILE}: first line is not a PID")

    def line(n: int) -> str:
        return lines[n].strip() if len(lines) > n else ""

    port = line(3)
    return PidFile(
        pid=abs(int(lines[0].strip())),
        data_dir=line(1),
        port=int(port) if port.isdigit() else None,
        socket_dir=line(4),
        status=line(7),
    )


def is_postgres(pid: int, pgdata: Path) -> bool:
    """True when ``pid`` is a live postgres process serving ``pgdata``."""
    name = os.environ.get("POSTGRES_NAME", "postgres")
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        return False
    except PermissionError:
        # Another user's process: not a postmaster we could manage.
        return False
    if os.path.basename(exe.removesuffix(" (deleted)")) != name:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    # The postmaster chdirs into its data directory.
    return os.path.realpath(cwd) == os.path.realpath(pgdata)


def remove_stale(pgdata: Path, socket_dir: Path) -> None:
    """Delete the pidfile and any socket/lock files left in the socket directory."""
    (pgdata / PIDFILE).unlink(missing_ok=True)
    if socket_dir.is_dir():
        for entry in socket_dir.iterdir():
            if entry.name.startswith(".s.PGSQL."):
                entry.unlink(missing_ok=True)


# inotify(7): events for files directly inside the watched directory.
_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


def _inotify(directory: Path) -> int | None:
    """An inotify descriptor watching writes in ``directory``; None where unavailable."""
    import ctypes  # only here: the rest of the daemon has no use for it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None  # e.g. the per-user instance limit is reached
    mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
    if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
        os.close(fd)
        return None
    return fd


class Watch:
    """Wakes a waiter when a file in PGDATA (postmaster.pid among them) is written.

    PostgreSQL rewrites its pidfile at each state change, so waiting here instead of
    sleeping notices "ready" at once. Without inotify, ``wait`` simply sleeps for its
    timeout and ``active`` is False.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fd: int | None = None
        self._event = asyncio.Event()

    @property
    def active(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Watch:
        self._fd = _inotify(self._directory)
        if self._fd is not None:
            asyncio.get_running_loop().add_reader(self._fd, self._on_event)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            # Closing an inotify descriptor waits for the kernel's grace period (often
            # 10-20 ms): on the loop's thread, that would delay the news of readiness.
            loop.run_in_executor(None, os.close, self._fd)
            self._fd = None

    def wake(self) -> None:
        """Make the current or next ``wait`` return at once."""
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until something was written in the directory, ``wake()``, or ``timeout`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        self._event.clear()

    def _on_event(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 4096):
                pass
        self._event.set()
