"""Install the per-segment client as ``SCRATCH/bin/manager``, the program PostgreSQL runs.

archive_command and restore_command must keep working whatever happens to the package:
an upgrade of the virtualenv, a ``PUT /update`` that swaps the daemon's build, or a
source tree that the account PostgreSQL runs as cannot read. So at every start the
daemon writes a self-contained copy of ``thin.py`` into its scratch directory, with
the interpreter in its first line and the WAL socket and deadline filled in, and
replaces the previous copy atomically. The interpreter is the base one behind the
virtualenv (``-I -S``: the client uses built-in modules only).

The copy holds the client compiled by the daemon (``marshal``, base64), so PostgreSQL's
calls skip compiling it: about 0.5 ms of each call's ~2 ms beyond the interpreter's own
start. Compiled code is only valid for the Python version that made it, so the copy
checks the running version first and otherwise compiles the source it also carries.
"""

from __future__ import annotations

import binascii
import marshal
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from instance_manager.errors import SettingsError

_SOURCE = Path(__file__).with_name("thin.py")
_SOCKET_LINE = re.compile(r'^SOCKET = ""$', re.M)
_TIMEOUT_LINE = re.compile(r"^TIMEOUT = 0\.0\b.*$", re.M)
_PG_WAL_LINE = re.compile(r'^PG_WAL = ""$', re.M)
_SPOOL_LINE = re.compile(r'^SPOOL = ""$', re.M)
SHEBANG_LIMIT = 255  # bytes the kernel reads of a "#!" line


def interpreter() -> str:
    """The real interpreter behind ``sys.executable`` (a venv's python is a symlink)."""
    return os.path.realpath(sys.executable)


@dataclass(frozen=True)
class Ahead:
    """Where the client finds the markers of segments archived ahead (see thin.py)."""

    pgdata: Path
    spool: Path

    @property
    def pg_wal(self) -> str:
        # %p is "pg_wal/NAME" below PostgreSQL's working directory, which the client reads
        # back with getcwd(): PGDATA with its links resolved, pg_wal as it is named.
        return os.path.realpath(self.pgdata) + "/pg_wal"


def source(socket: Path, timeout: float, ahead: Ahead | None = None) -> str:
    """``thin.py`` with its socket, deadline and (optionally) marker spool set."""
    text = _SOURCE.read_text()
    fills = [
        (_SOCKET_LINE, f"SOCKET = {str(socket)!r}"),
        (_TIMEOUT_LINE, f"TIMEOUT = {float(timeout)!r}"),
        (_PG_WAL_LINE, f"PG_WAL = {ahead.pg_wal!r}" if ahead else 'PG_WAL = ""'),
        (_SPOOL_LINE, f"SPOOL = {str(ahead.spool)!r}" if ahead else 'SPOOL = ""'),
    ]
    for pattern, line in fills:
        text, found = pattern.subn(line, text, count=1)
        if not found:
            raise RuntimeError(f"{_SOURCE}: no line {pattern.pattern!r} to fill in")
    return text


def render(
    socket: Path, timeout: float, python: str | None = None, ahead: Ahead | None = None
) -> str:
    """The installed program's text: the client compiled for this interpreter's version,
    with its source as the fallback for any other."""
    python = python or interpreter()
    shebang = f"#!{python} -IS\n"
    if len(shebang) > SHEBANG_LIMIT or any(c.isspace() for c in python):
        raise SettingsError(f"interpreter path unusable in a #! line: {python!r}")
    text = source(socket, timeout, ahead)
    code = marshal.dumps(compile(text, "manager", "exec", optimize=2))
    blob = binascii.b2a_base64(code, newline=False)
    return (
        f"{shebang}"
        "# The instance manager's WAL client (instance_manager/wal/thin.py), installed by\n"
        "# the daemon; PostgreSQL runs it for each WAL file. Rewritten at every start.\n"
        f"# socket: {str(socket)!r}\n# deadline: {float(timeout)!r} s\n"
        "import sys\n"
        f"if sys.hexversion >> 16 == {sys.hexversion >> 16:#x}:  # the version that compiled it\n"
        "    import binascii, marshal\n"
        f"    exec(marshal.loads(binascii.a2b_base64({blob!r})))\n"
        "else:\n"
        f"    exec(compile({text!r}, __file__, 'exec'))\n"
    )


def install(target: Path, socket: Path, timeout: float, ahead: Ahead | None = None) -> Path:
    """Write the program to ``target`` (0700, owner = us) unless it is already identical."""
    python = interpreter()
    if not os.access(python, os.X_OK):
        raise SettingsError(f"the interpreter {python} is not executable by this account")
    text = render(socket, timeout, python, ahead)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if target.read_text() == text and os.access(target, os.X_OK):
            return target
    except OSError:
        pass
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o700)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target
