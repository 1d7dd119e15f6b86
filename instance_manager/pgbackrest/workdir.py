"""The sidecar's private directories: its work directory, pgBackRest's lock and spool paths.

pgBackRest keeps lock files and the archive-async queue (WAL on its way to or from the
repository) there. Another account able to write into such a directory could swap queued
WAL or hold the locks, so an existing directory is used only if it is a real directory
(not a symbolic link) owned by the sidecar's own account and writable by nobody else.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MODE = 0o700  # a directory the sidecar creates


class UnsafeDirectory(Exception):
    """An existing directory that someone else owns or may write to."""


def check(path: Path, role: str) -> None:
    """Raise :class:`UnsafeDirectory` if ``path`` exists and is not private to this account.

    ``role`` names the directory in the message (``work directory``, ``spool-path``).
    A missing directory is fine: pgBackRest creates it with its own modes.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeDirectory(f"{role} {path} is a symbolic link; give the directory itself")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{role} {path} is not a directory")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise UnsafeDirectory(
            f"{role} {path} is owned by uid {info.st_uid}, not by this sidecar's uid {uid}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{role} {path} is writable by its group or by everyone "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); it must be writable by its owner only"
        )


def prepare(path: Path) -> None:
    """Create the work directory (mode 0700) if needed, :func:`check` it before and after."""
    check(path, "work directory")
    path.mkdir(mode=MODE, parents=True, exist_ok=True)
    check(path, "work directory")
