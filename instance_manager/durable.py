"""Copying files so that a crash leaves either the old state or the whole new file.

Used where a rename cannot do the job because source and destination are on different
filesystems (pg_wal on its own volume).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TEMP_SUFFIX = ".instance-manager-copy"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_file(source: Path, destination: Path, mode: int = 0o600) -> None:
    """Copy to a temporary name beside ``destination``, fsync, rename over it, fsync the
    directory. FileNotFoundError when ``source`` is absent; nothing is left behind on error."""
    temporary = destination.with_name(destination.name + TEMP_SUFFIX)
    with open(source, "rb") as src:
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
            with open(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(temporary, destination)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    fsync_dir(destination.parent)


def move_file(source: Path, destination: Path) -> None:
    """A rename across filesystems: a durable copy, then ``source`` is removed."""
    copy_file(source, destination)
    source.unlink(missing_ok=True)
