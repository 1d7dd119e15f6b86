"""Keep the virtualenv's copy of the package equal to the source tree the tests import.

As root, container/setup.sh installs the package into a virtualenv under /opt (not an
editable install), because the daemon drops to ``postgres``, which may not read the
clone. Tests import the source tree, and the daemon they start runs the installed copy:
after an edit, the copy is refreshed here before the session starts, so both are the
same code. Under an editable install both are already the same files and nothing happens.
"""

from __future__ import annotations

import compileall
import fcntl
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "instance_manager"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def installed_package() -> Path:
    """Where the test interpreter's virtualenv imports the package from, ignoring the cwd."""
    probe = "import instance_manager, os; print(os.path.dirname(instance_manager.__file__))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip()).resolve()


def _differs(left: Path, right: Path) -> bool:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return True
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    if mismatch or errors:
        return True
    return any(_differs(left / d, right / d) for d in cmp.common_dirs)


def sync() -> None:
    """Replace the installed copy with the source tree when they differ."""
    target = installed_package()
    # Only a real install is ever replaced: an editable install (or a copy of the tree run
    # with another tree's virtualenv) imports a source tree, which is nobody's to overwrite.
    if target == SOURCE or target.parent.name != "site-packages":
        return
    if not _differs(SOURCE, target):
        return
    with open(target.parent / ".instance-manager-sync.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copytree(SOURCE, fresh, ignore=_IGNORED)
        compileall.compile_dir(fresh, quiet=1, ddir=str(target))
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.rename(target, old)
        os.rename(fresh, target)
        shutil.rmtree(old)
