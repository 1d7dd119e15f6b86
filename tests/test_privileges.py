"""Starting as root: the scratch tree is created and given away without following links.

These tests run as root (as CI does). The preparation runs in a child process, since it
ends by dropping the process's privileges for good.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.daemon import PYTHON, VENV_BIN, pg_user, rmtree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")

# Loads the settings from flags and runs the preparation; prints the account it ends as.
PREPARE = """
import os, sys
from instance_manager import settings
from instance_manager.errors import SettingsError
from instance_manager.process import privileges
flags = {"pgData": sys.argv[1], "scratchDir": sys.argv[2]}
try:
    privileges.prepare(settings.load(None, {}, flags))
except SettingsError as exc:
    print(exc, file=sys.stderr)
    raise SystemExit(exc.exit_code)
print(os.geteuid())
"""


def prepare(pgdata: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, "-c", PREPARE, str(pgdata), str(scratch)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")


def owned_dir(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    assert stat.S_ISDIR(info.st_mode), path
    return info.st_uid, stat.S_IMODE(info.st_mode)


@pytest.fixture
def root_dir(tmp_root: Path) -> Path:
    """A directory root owns, 0755: what a planted link would try to hand over."""
    target = tmp_root / "root-owned"
    target.mkdir()
    os.chmod(target, 0o755)
    return target


def test_scratch_tree_modes_and_owner(tmp_root: Path) -> None:
    scratch, pgdata = tmp_root / "a" / "c", tmp_root / "b" / "pgdata"
    (scratch / "tmp").mkdir(parents=True)
    os.chmod(scratch / "tmp", 0o1777)  # what earlier versions made
    os.umask(old := os.umask(0o077))
    try:
        done = prepare(pgdata, scratch)
    finally:
        os.umask(old)
    uid = pg_user().pw_uid
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(uid)
    assert owned_dir(scratch) == (uid, 0o755)
    assert owned_dir(scratch / "run") == (uid, 0o755)
    assert owned_dir(scratch / "log") == (uid, 0o700)
    assert owned_dir(scratch / "tmp") == (uid, 0o700)
    assert owned_dir(pgdata) == (uid, 0o700)
    # Parents created on the way stay root's, and reachable whatever the umask.
    assert owned_dir(tmp_root / "b") == (0, 0o755)


@pytest.mark.parametrize("where", ["run", "log", "tmp", "."])
def test_a_link_in_the_scratch_tree_is_refused(tmp_root: Path, root_dir: Path, where: str) -> None:
    scratch = tmp_root / "c"
    if where == ".":
        scratch.symlink_to(root_dir)
    else:
        scratch.mkdir()
        (scratch / where).symlink_to(root_dir)
    done = prepare(tmp_root / "pgdata", scratch)
    assert done.returncode == 2, done.stderr
    link = scratch / where if where != "." else scratch
    assert f"{os.path.normpath(link)} is a symbolic link" in done.stderr
    assert owned_dir(root_dir) == (0, 0o755)
    assert not (tmp_root / "pgdata").exists()


def test_a_dangling_link_is_not_created_through(tmp_root: Path) -> None:
    scratch = tmp_root / "c"
    scratch.mkdir()
    (scratch / "tmp").symlink_to(tmp_root / "made-through-the-link")
    done = prepare(tmp_root / "pgdata", scratch)
    assert done.returncode == 2 and "is a symbolic link" in done.stderr
    assert not (tmp_root / "made-through-the-link").exists()


def test_links_at_pgdata_or_the_restore_spool_are_refused(tmp_root: Path, root_dir: Path) -> None:
    (tmp_root / "pgdata").symlink_to(root_dir)  # empty: it would be given to the account
    done = prepare(tmp_root / "pgdata", tmp_root / "c")
    assert done.returncode == 2 and "pgdata is a symbolic link" in done.stderr
    assert owned_dir(root_dir) == (0, 0o755)
    for made in ("c", "wal-restore-spool"):
        rmtree(tmp_root / made)
    os.unlink(tmp_root / "pgdata")
    (tmp_root / "wal-restore-spool").symlink_to(root_dir)
    done = prepare(tmp_root / "pgdata", tmp_root / "c")
    assert done.returncode == 2 and "wal-restore-spool is a symbolic link" in done.stderr
    assert owned_dir(root_dir) == (0, 0o755)


def test_the_daemon_exits_2_on_a_linked_run_directory(tmp_root: Path, root_dir: Path) -> None:
    """The reproduction: a link at SCRATCH/run handed a root-owned directory to postgres."""
    scratch = tmp_root / "c"
    scratch.mkdir()
    (scratch / "run").symlink_to(root_dir)
    argv = [
        str(VENV_BIN / "instance-manager"), "run", "--pg-data", str(tmp_root / "pgdata"),
        "--scratch-dir", str(scratch), "--pod-name", "test-1",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{scratch / 'run'} is a symbolic link" in done.stderr
    assert owned_dir(root_dir) == (0, 0o755)
    assert not (tmp_root / "pgdata").exists()
