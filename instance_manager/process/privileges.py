"""Directories the daemon needs, and dropping root before anything else runs.

PostgreSQL refuses to run as root. When started as root (a laptop, a test) we create the
scratch directories and an absent PGDATA, give them to the target account, and become
that account for good, so every file PostgreSQL or we write later has one owner.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import sysconfig
from pathlib import Path

from instance_manager.errors import SettingsError
from instance_manager.process import readable
from instance_manager.settings import Settings

DEFAULT_USER = "postgres"


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(path: Path, parent: int | None = None) -> int:
    """An fd on the directory ``path`` itself: SettingsError when it is a symbolic link."""
    name = path.name if parent is not None else path
    try:
        return os.open(name, _OPEN_DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise SettingsError(f"cannot open the directory {path}: {exc.strerror}") from None
        kind = "a symbolic link" if os.path.islink(path) else "not a directory"
        raise SettingsError(
            f"{path} is {kind}: the instance manager creates and owns this directory and "
            "follows no link there; remove it or point the setting at a real directory"
        ) from None


def _make_parents(path: Path) -> None:
    """Missing ancestors of a directory we create, 0755 whatever the umask: the account the
    daemon becomes must be able to reach what lies below them."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755)
            os.chmod(directory, 0o755)


def _make(path: Path, mode: int, owner: pwd.struct_passwd | None, parent: int | None = None) -> int:
    """Create directory ``path`` unless it exists, set its mode and owner, return an fd on it.

    Never through a symbolic link at ``path``: as root, a link planted there would hand its
    target to the account. ``parent`` is an fd on ``path.parent`` (checked the same way).
    """
    own_parent = parent is None
    if parent is None:
        _make_parents(path.parent)
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        created = True
        try:
            os.mkdir(path.name, mode, dir_fd=parent)
        except FileExistsError:
            created = False
        fd = _open_dir(path, parent)
    finally:
        if own_parent:
            os.close(parent)
    try:
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        if created or owner is not None or os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, mode)  # mkdir's mode went through the umask
    except OSError as exc:
        os.close(fd)
        raise SettingsError(f"cannot set the owner or mode of {path}: {exc.strerror}") from None
    return fd


def _give_empty(path: Path, owner: pwd.struct_passwd | None) -> None:
    """An existing directory: given to the account when it is empty (not through a link)."""
    if owner is None or not path.is_dir() or any(path.iterdir()):
        return
    fd = _open_dir(path)
    try:
        os.fchown(fd, owner.pw_uid, owner.pw_gid)
    finally:
        os.close(fd)


def _make_wal_dir(wal_dir: Path, owner: pwd.struct_passwd | None) -> None:
    """pg_wal's own directory, absent or empty, for initdb or the move of pg_wal to fill; its
    parent (the WAL volume) is created and given to the account only when absent."""
    if not wal_dir.parent.exists():
        os.close(_make(wal_dir.parent, 0o700, owner))
    if not wal_dir.exists():
        os.close(_make(wal_dir, 0o700, owner))
    else:
        _give_empty(wal_dir, owner)


def prepare(settings: Settings) -> None:
    """Create the scratch tree and PGDATA's directory; drop to the target user if root."""
    owner = None
    if os.geteuid() == 0:
        name = settings.instance.user or DEFAULT_USER
        try:
            owner = pwd.getpwnam(name)
        except KeyError:
            raise SettingsError(f"instance.user: no such account {name!r}") from None
        # Before anything is created: name what the account could not read or reach.
        readable.check(owner, readable.needed_paths() + readable.data_paths(settings))
    _make_scratch(settings, owner)
    pgdata = settings.pgdata
    if settings.wal_dir is not None:
        _make_wal_dir(settings.wal_dir, owner)
    with contextlib.suppress(OSError):  # the restorer reports it and fetches without a spool
        os.close(_make(settings.restore_spool, 0o700, owner))
    if not pgdata.exists():
        os.close(_make(pgdata, 0o700, owner))
    else:
        _give_empty(pgdata, owner)
    if owner is not None:
        become(owner)


def _make_scratch(settings: Settings, owner: pwd.struct_passwd | None) -> None:
    """SCRATCH and its run/, log/, tmp/ (all private but run/, PostgreSQL's socket dir)."""
    scratch = settings.instance.scratchDir
    fd = _make(scratch, 0o755, owner)
    try:
        children = [(settings.run_dir, 0o755), (settings.log_dir, 0o700), (settings.tmp_dir, 0o700)]
        for path, mode in children:
            assert path.parent == scratch, path
            os.close(_make(path, mode, owner, parent=fd))
    finally:
        os.close(fd)


class UnsafeDirectory(Exception):
    """A directory that must be private to this account is a link, another's, or no directory."""


def private_directory(directory: Path) -> None:
    """Create ``directory`` 0700, or make an existing one so: a real directory of ours.

    For what the daemon alone may open (the WAL socket's directory, uploaded builds). The
    check goes through an fd opened without following a link, so what is checked is what
    gets its mode fixed.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        fd = os.open(directory, _OPEN_DIR)
    except OSError as exc:
        raise UnsafeDirectory(
            f"{directory}: not a directory of its own (a symbolic link?): {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise UnsafeDirectory(
                f"{directory} belongs to uid {info.st_uid}, not to this process ({os.geteuid()})"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


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
