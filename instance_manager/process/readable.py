"""Before dropping root: can the target account read everything the daemon will need?

After ``setuid`` the daemon keeps importing modules lazily (the web stack, gRPC, the
metrics server), and PostgreSQL runs the interpreter for every WAL segment. A package in
a 0700 home (``/root/project/.venv``, an editable install pointing into the clone) would
fail much later, half started, with an ``ImportError``. So the check runs first, in a
forked child that takes on the account's identity and asks the kernel (``access(2)``
walks every parent directory), and a refusal names the path before anything is created.
"""

from __future__ import annotations

import os
import pwd
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import instance_manager
from instance_manager.errors import SettingsError
from instance_manager.settings import Settings

_CHILD_FAILED = 3


def needed_paths() -> list[tuple[str, int]]:
    """(path, access mode) for the interpreter, its library and every import location."""
    paths: list[tuple[str, int]] = [(os.path.realpath(sys.executable), os.X_OK)]
    package = Path(instance_manager.__file__).resolve().parent
    paths.append((str(package), os.R_OK | os.X_OK))
    paths.append((str(package / "cli.py"), os.R_OK))
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.append((sysconfig.get_paths()[key], os.R_OK | os.X_OK))
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            paths.append((entry, os.R_OK | os.X_OK))
    seen: set[str] = set()
    unique = []
    for path, mode in paths:
        if path not in seen:
            seen.add(path)
            unique.append((path, mode))
    return unique


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def data_paths(settings: Settings) -> list[tuple[str, int]]:
    """Directories the account must reach: PGDATA, the WAL directory and the scratch tree,
    or, for those that do not exist yet, the nearest ancestor that does."""
    paths = [settings.pgdata, settings.instance.scratchDir]
    if settings.wal_dir is not None:
        paths.append(settings.wal_dir)
    return [(str(_nearest_existing(Path(os.path.abspath(p)))), os.X_OK) for p in paths]


def unreadable(owner: pwd.struct_passwd, paths: Iterable[tuple[str, int]]) -> list[str]:
    """The paths ``owner`` cannot use, checked by a child running as ``owner``."""
    items = list(paths)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the account, report, exit without cleanup
        code = 0
        try:
            os.close(read_end)
            os.setgroups(os.getgrouplist(owner.pw_name, owner.pw_gid))
            os.setgid(owner.pw_gid)
            os.setuid(owner.pw_uid)
            failed = [path for path, mode in items if not os.access(path, mode)]
            os.write(write_end, "\0".join(failed).encode())
        except BaseException:
            code = _CHILD_FAILED
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SettingsError(f"cannot check what {owner.pw_name} can read (child failed)")
    return [p for p in data.decode().split("\0") if p]


def check(owner: pwd.struct_passwd, paths: Iterable[tuple[str, int]] | None = None) -> None:
    """Raise SettingsError (exit 2) naming the first path ``owner`` cannot use."""
    failed = unreadable(owner, needed_paths() if paths is None else paths)
    if failed:
        raise SettingsError(
            f"instance.user: {owner.pw_name} cannot read {failed[0]}, which the instance manager "
            "needs after it stops being root; put it where that account can read it "
            "(container/setup.sh puts the virtualenv under /opt/instance-manager, "
            "container/standalone.sh the data under /var/lib/instance-manager)"
            + (f" ({len(failed) - 1} more paths)" if len(failed) > 1 else "")
        )
