"""Install the per-segment client in ``SCRATCH/bin``, the program PostgreSQL runs.

archive_command and restore_command must keep working whatever happens to the package:
an upgrade of the virtualenv, a ``PUT /update`` that swaps the daemon's build, or a
source tree that the account PostgreSQL runs as cannot read. So at every start the
daemon writes a self-contained copy of ``thin.py``, with the WAL socket and deadline
filled in, and replaces the previous copy atomically, in two forms:

- ``manager.pyc``, the client compiled by the daemon's interpreter, which PostgreSQL's
  commands run as ``<that interpreter> -IS manager.pyc`` (``postgres/config.py``): a
  call skips compiling anything, about 0.8 ms of the ~1.5 ms a call costs beyond the
  interpreter's own start (bench/wal.py);
- ``manager``, the same client as a script with the interpreter in its ``#!`` line, to
  run by hand.

The interpreter is the base one behind the virtualenv (``-I -S``: the client uses
built-in modules only). Compiled code is only valid for the interpreter that made it, and
the commands name that very interpreter.
"""

from __future__ import annotations

import marshal
import os
import re
from importlib.util import MAGIC_NUMBER
from pathlib import Path

from instance_manager.errors import SettingsError
from instance_manager.postgres.config import client_path, interpreter

_SOURCE = Path(__file__).with_name("thin.py")
_SOCKET_LINE = re.compile(r'^SOCKET = ""$', re.M)
_TIMEOUT_LINE = re.compile(r"^TIMEOUT = 0\.0\b.*$", re.M)
SHEBANG_LIMIT = 255  # bytes the kernel reads of a "#!" line
# A .pyc header: the magic number, flags 0 (checked against the source's mtime, which
# nobody does when the file is run directly), then a zero mtime and source size.
_PYC_HEADER = MAGIC_NUMBER + bytes(12)


def source(socket: Path, timeout: float) -> str:
    """``thin.py`` with its socket and deadline set."""
    text = _SOURCE.read_text()
    text, found = _SOCKET_LINE.subn(f"SOCKET = {str(socket)!r}", text, count=1)
    text, found_timeout = _TIMEOUT_LINE.subn(f"TIMEOUT = {float(timeout)!r}", text, count=1)
    if not (found and found_timeout):
        raise RuntimeError(f"{_SOURCE}: the SOCKET/TIMEOUT lines to fill in are missing")
    return text


def render(text: str, socket: Path, timeout: float, python: str) -> str:
    """The script: the client's source ``text`` under a ``#!`` line naming ``python``."""
    shebang = f"#!{python} -IS\n"
    if len(shebang) > SHEBANG_LIMIT or any(c.isspace() for c in python):
        raise SettingsError(f"interpreter path unusable in a #! line: {python!r}")
    return (
        f"{shebang}"
        "# The instance manager's WAL client (instance_manager/wal/thin.py), installed by\n"
        "# the daemon; PostgreSQL runs its compiled twin, manager.pyc. Rewritten at every start.\n"
        f"# socket: {str(socket)!r}\n# deadline: {float(timeout)!r} s\n"
        f"{text}"
    )


def compiled(text: str) -> bytes:
    """The client's source ``text`` as a .pyc for this interpreter."""
    code = compile(text, "manager", "exec", optimize=2)
    return _PYC_HEADER + marshal.dumps(code)


def install(target: Path, socket: Path, timeout: float) -> Path:
    """Write the script to ``target`` and the compiled client beside it (``client_path``),
    both 0700 and owned by us, each unless it is already identical; ``target``."""
    python = interpreter()
    if not os.access(python, os.X_OK):
        raise SettingsError(f"the interpreter {python} is not executable by this account")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = source(socket, timeout)
    _write(client_path(target), compiled(text))
    _write(target, render(text, socket, timeout, python).encode())
    return target


def _write(target: Path, data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically and durably, unless it holds them."""
    try:
        if target.read_bytes() == data and os.access(target, os.X_OK):
            return
    except OSError:
        pass
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o700)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
