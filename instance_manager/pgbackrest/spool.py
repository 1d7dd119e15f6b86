"""pgBackRest's archive-push status files: what ``archive-push:async`` reports per segment.

The asynchronous push writes, in ``<spool-path>/archive/<stanza>/out``, ``<wal>.ok`` once
the segment is stored in every repository (empty, or ``0`` and a warning on the next line),
``<wal>.error`` when that segment failed, and ``global.error`` when the whole run failed
(a code on the first line, the message after it). pgBackRest's own foreground
``archive-push`` reads the same files; this module reads them the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from instance_manager.pgbackrest.options import Config, env_name
from instance_manager.pgbackrest.runner import CommandFailed, status_code

OK = ".ok"
ERROR = ".error"
GLOBAL_ERROR = "global.error"
COMMAND = "archive-push:async"


def out_dir(config: Config) -> Path | None:
    """Where the asynchronous push of ``config``'s stanza writes its status files (None
    when no spool path is set or the stanza name would leave it)."""
    spool = config.env.get(env_name("spool-path"))
    stanza = config.stanza
    if not spool or "/" in stanza or stanza in ("", ".", ".."):
        return None
    return Path(spool) / "archive" / stanza / "out"


@dataclass(frozen=True)
class Status:
    """One segment's status file: stored (``warning`` may say more), or failed."""

    stored: bool
    code: int = 0
    message: str = ""

    def failure(self, wal: str) -> CommandFailed:
        text = f"{wal}: {self.message or 'no message'}"
        return CommandFailed(COMMAND, self.code, text, status_code(COMMAND, self.code))


def parse(content: str, stored: bool) -> Status:
    """A status file's text: empty, or a code line and a message."""
    if not content.strip():
        if stored:
            return Status(True)
        return Status(False, 1, "empty status file")
    first, _, rest = content.partition("\n")
    try:
        code = int(first.strip())
    except ValueError:
        return Status(stored, 0 if stored else 1, content.strip())
    return Status(stored, code, rest.strip())


def listing(directory: Path) -> set[str]:
    """The names in ``directory`` (empty when it does not exist yet)."""
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def read(directory: Path, wal: str, names: set[str], errors: bool) -> Status | None:
    """``wal``'s status among ``names`` (a listing of ``directory``): ``.ok`` first, then,
    with ``errors``, its ``.error`` or the run's ``global.error``; None if there is none."""
    for name, stored in ((wal + OK, True), (wal + ERROR, False), (GLOBAL_ERROR, False)):
        if name not in names or not (stored or errors):
            continue
        try:
            content = (directory / name).read_text(errors="replace")
        except FileNotFoundError:
            continue  # removed between the listing and now: not a status any more
        return parse(content, stored)
    return None


def stored(directory: Path, wal: str) -> Status | None:
    """``wal``'s ``.ok`` status, if it is there (one open, no listing)."""
    try:
        return parse((directory / (wal + OK)).read_text(errors="replace"), True)
    except FileNotFoundError:
        return None


def clear_errors(directory: Path, wals: list[str]) -> None:
    """Remove the error files a new run makes obsolete (pgBackRest's foreground does the
    same before it starts the asynchronous push)."""
    for name in [*(wal + ERROR for wal in wals), GLOBAL_ERROR]:
        (directory / name).unlink(missing_ok=True)


def timeout_failure(wal: str, seconds: float) -> CommandFailed:
    return CommandFailed(
        COMMAND,
        -1,
        f"{wal} not stored within {seconds:g} s",
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
