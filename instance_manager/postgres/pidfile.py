"""``postmaster.pid``: is the PostgreSQL it names alive, and is it really ours?

A PID in a leftover pidfile may have been recycled by an unrelated process after a
crash, so "the PID exists" is not enough: the process must be a ``postgres``
executable whose data directory is this PGDATA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
