"""A tmpfs mounted for one test: a second, real filesystem (a WAL volume).

Mounting needs root, as CI runs the suite. Without it the test fails and says why: a
skipped test would hide that the WAL volume is not tested at all.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

VOLUME_SIZE = "512m"


@contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    """A fresh tmpfs at ``path`` (root-owned, 0755, as a volume's mount point may be),
    unmounted on exit."""
    mount(path)
    try:
        yield path
    finally:
        unmount(path)


def mount(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the WAL volume tests mount a tmpfs and must run as root (CI does); "
            f"running as uid {os.geteuid()}"
        )
    path.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_SIZE},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} for the WAL volume: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def other_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev != os.stat(b).st_dev
