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
from pathlib import Path

from instance_manager.errors import SettingsError

_SOURCE = Path(__file__).with_name("thin.py")
_SOCKET_LINE = re.compile(r'^SOCKET = ""$', re.M)
_TIMEOUT_LINE = re.compile(r"^TIMEOUT = 0\.0\b.*$", re.M)
SHEBANG_LIMIT = 255  # bytes the kernel reads of a "#!" line


def interpreter() -> str:
    """The real interpreter behind ``sys.executable`` (a venv's python is a symlink)."""
    return os.path.realpath(sys.executable)


def source(socket: Path, timeout: float) -> str:
    """``thin.py`` with its socket and deadline set."""
    text = _SOURCE.read_text()
    text, found = _SOCKET_LINE.subn(f"SOCKET = {str(socket)!r}", text, count=1)
    text, found_timeout = _TIMEOUT_LINE.subn(f"TIMEOUT = {float(timeout)!r}", text, count=1)
    if not (found and found_timeout):
        raise RuntimeError(f"{_SOURCE}: the SOCKET/TIMEOUT lines to fill in are missing")
    return text


def render(socket: Path, timeout: float, python: str | None = None) -> str:
    """The installed program's text: the client compiled for this interpreter's version,
    with its source as the fallback for any other."""
    python = python or interpreter()
    shebang = f"#!{python} -IS\n"
    if len(shebang) > SHEBANG_LIMIT or any(c.isspace() for c in python):
        raise SettingsError(f"interpreter path unusable in a #! line: {python!r}")
    text = source(socket, timeout)
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


def install(target: Path, socket: Path, timeout: float) -> Path:
    """Write the program to ``target`` (0700, owner = us) unless it is already identical."""
    python = interpreter()
    if not os.access(python, os.X_OK):
        raise SettingsError(f"the interpreter {python} is not executable by this account")
    text = render(socket, timeout, python)
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
