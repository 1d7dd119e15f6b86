"""Directories the daemon needs, and dropping root before anything else runs.

PostgreSQL refuses to run as root. When started as root (a laptop, a test) we create the
scratch directories and an absent PGDATA, give them to the target account, and become
that account for good, so every file PostgreSQL or we write later has one owner.
"""

from __future__ import annotations

import os
import pwd
import sysconfig
from pathlib import Path

from instance_manager.errors import SettingsError
from instance_manager.process import readable
from instance_manager.settings import Settings

DEFAULT_USER = "postgres"


def _make(path: Path, mode: int, owner: pwd.struct_passwd | None) -> None:
    existed = path.exists()
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if not existed:
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def prepare(settings: Settings) -> None:
    """Create the scratch tree and PGDATA's directory; drop to the target user if root."""
    owner = None
    if os.geteuid() == 0:
        name = settings.instance.user or DEFAULT_USER
        try:
            owner = pwd.getpwnam(name)
        except KeyError:
            raise SettingsError(f"instance.user: no such account {name!r}") from None
        readable.check(owner)  # before anything is created: name what the account can't read
    scratch = settings.instance.scratchDir
    _make(scratch, 0o755, owner)
    _make(settings.run_dir, 0o755, owner)
    _make(settings.log_dir, 0o700, owner)
    _make(settings.tmp_dir, 0o1777, owner)
    pgdata = settings.pgdata
    _make(settings.restore_spool, 0o700, owner)
    if not pgdata.exists():
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _make(pgdata, 0o700, owner)
    elif owner is not None and not any(pgdata.iterdir()):
        os.chown(pgdata, owner.pw_uid, owner.pw_gid)
    if owner is not None:
        become(owner)


def become(owner: pwd.struct_passwd) -> None:
    os.initgroups(owner.pw_name, owner.pw_gid)
    os.setgid(owner.pw_gid)
    os.setuid(owner.pw_uid)
    os.environ.update(HOME=owner.pw_dir, USER=owner.pw_name, LOGNAME=owner.pw_name)
    # Modules are imported lazily later on: the new account must be able to read them.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not os.access(stdlib, os.R_OK | os.X_OK):
        raise SettingsError(
            f"instance.user: {owner.pw_name} cannot read the Python library at {stdlib}; "
            "install the instance manager with a Python outside /root (e.g. /usr/bin/python3)"
        )
