"""pg_wal on its own volume (``spec.walStorage``, ``instance.walDir``).

PGDATA/pg_wal is then a symlink to the WAL directory. initdb makes it so for a new
instance (``--waldir``). An existing PGDATA whose pg_wal is still a plain directory (the
WAL volume was added later, or a restore brought pg_wal back as a directory) has it moved
before PostgreSQL starts, as CloudNativePG does:

1. a marker file in the WAL directory says a move is under way;
2. every file is copied durably into the WAL directory;
3. pg_wal is renamed aside, the symlink takes its place, the marker and the old copy go.

Each step can be repeated, so a crash at any point is finished by the next start. A WAL
directory that holds files but no marker is never written to: it may belong to another
PGDATA.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from instance_manager import durable, log
from instance_manager.errors import SettingsError
from instance_manager.postgres import pidfile
from instance_manager.settings import Settings

_logger = log.get()
MOVING_MARKER = ".instance-manager-moving-pg_wal"
OLD_NAME = "pg_wal.instance-manager-old"


def place(settings: Settings) -> None:
    """Make PGDATA/pg_wal a symlink to the WAL directory, if there is one (blocking)."""
    wal_dir = settings.wal_dir
    if wal_dir is None:
        return
    pgdata = settings.pgdata
    link, old = pgdata / "pg_wal", pgdata / OLD_NAME
    if link.is_symlink():
        if os.path.realpath(link) != os.path.realpath(wal_dir):
            raise SettingsError(
                f"instance.walDir: {link} links to {os.readlink(link)}, not to {wal_dir}"
            )
        _finish(wal_dir, old)
        return
    if not link.exists() and not old.is_dir():
        return  # not a data directory (yet): initdb or a restore makes pg_wal
    if _postmaster_alive(pgdata):
        log.event(
            _logger,
            "pg_wal not moved to the WAL directory: a live postmaster uses it",
            logging.WARNING,
            wal_dir=str(wal_dir),
        )
        return
    _move(link, old, wal_dir)


def _move(link: Path, old: Path, wal_dir: Path) -> None:
    started = time.monotonic()
    marker = wal_dir / MOVING_MARKER
    if link.is_dir():
        _claim(wal_dir, marker)
        files = _copy_tree(link, wal_dir)
        os.rename(link, old)
        durable.fsync_dir(link.parent)
    else:
        files = -1  # copied and renamed aside by an earlier start
    os.symlink(wal_dir, link)
    durable.fsync_dir(link.parent)
    _finish(wal_dir, old)
    log.event(
        _logger,
        "pg_wal moved to the WAL directory",
        wal_dir=str(wal_dir),
        files=files,
        seconds=round(time.monotonic() - started, 3),
    )


def _claim(wal_dir: Path, marker: Path) -> None:
    """An empty WAL directory, or one an interrupted move left (emptied again)."""
    wal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    entries = list(wal_dir.iterdir())
    if entries and marker not in entries:
        raise SettingsError(
            f"instance.walDir: {wal_dir} is not empty and PGDATA/pg_wal is a directory: "
            "refusing to mix two WAL directories"
        )
    for entry in entries:
        if entry != marker:
            _remove(entry)
    marker.touch(mode=0o600)
    durable.fsync_dir(wal_dir)


def _copy_tree(source: Path, target: Path) -> int:
    """Copy pg_wal's files and subdirectories (archive_status, ...); returns the file count."""
    count = 0
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink():
            destination.mkdir(mode=0o700, exist_ok=True)
            count += _copy_tree(entry, destination)
        else:
            durable.copy_file(entry, destination, entry.lstat().st_mode & 0o777)
            count += 1
    durable.fsync_dir(target)
    return count


def _finish(wal_dir: Path, old: Path) -> None:
    (wal_dir / MOVING_MARKER).unlink(missing_ok=True)
    if old.exists():
        shutil.rmtree(old)
        durable.fsync_dir(old.parent)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _postmaster_alive(pgdata: Path) -> bool:
    try:
        found = pidfile.read(pgdata)
    except ValueError:
        return False
    return found is not None and pidfile.is_postgres(found.pid, pgdata)
