"""Running ``pgbackrest``: an argv and an explicit environment, a time limit, exit status as
the only verdict, every stderr line logged, failures mapped to gRPC status codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from instance_manager import log
from instance_manager.pgbackrest.options import Config
from instance_manager.process import spawn

_logger = log.get("pgbackrest")

# Time limits, seconds. A WAL command that takes longer is killed and PostgreSQL retries;
# pgBackRest's own protocol-timeout (1830 s) is longer, so a wedged repository shows here.
WAL_TIMEOUT = 600.0
INFO_TIMEOUT = 120.0
STANZA_TIMEOUT = 300.0
# Backups and restores take as long as the data takes; CloudNativePG sets no deadline
# either. This only bounds a command that hangs for good.
LONG_TIMEOUT = 48 * 3600.0

# archive-get's "no such WAL file" (any real error has a code of its own, 25 and up).
EXIT_WAL_MISSING = 1
# pgBackRest error codes (its error.yaml) by what they mean for the caller.
_CONFIGURATION = {
    27,  # ConfigError
    30, 31, 32, 33, 34, 35, 36, 37,  # command and option errors
    38,  # PgRunningError: restore into a running PGDATA
    40,  # PathNotEmptyError
    43,  # ParamRequiredError
    44,  # ArchiveMismatchError: WAL of another database system
    45,  # ArchiveDuplicateError: same WAL name, other contents
    46,  # VersionNotSupportedError
    51,  # BackupMismatchError
    58,  # DbMismatchError
    61,  # OptionMultipleValueError
    103,  # RepoInvalidError: no valid repository (missing stanza, wrong path)
}  # fmt: skip
_TRANSIENT = {
    49,  # HostConnectError
    50,  # LockAcquireError: another pgbackrest holds the lock
    56,  # DbConnectError
    59,  # ArchiveTimeoutError
    62,  # ProtocolTimeoutError
}
_CONTEXT_LINES = 4  # lines of an error message kept in a gRPC status


@dataclass(frozen=True)
class Outcome:
    output: bytes  # stdout as printed
    stderr: str
    seconds: float

    @property
    def stdout(self) -> str:
        return self.output.decode(errors="replace")


class CommandFailed(Exception):
    """pgbackrest exited non-zero, was killed, or could not be started."""

    def __init__(self, command: str, status: int, message: str, code: grpc.StatusCode) -> None:
        self.command = command
        self.status = status
        self.code = code
        super().__init__(f"pgbackrest {command} failed ({describe(status)}): {message}")


def describe(status: int) -> str:
    if status == -1:
        return "timed out"
    return spawn.describe_status(status)


def status_code(command: str, status: int) -> grpc.StatusCode:
    if command == "archive-get" and status == EXIT_WAL_MISSING:
        return grpc.StatusCode.NOT_FOUND
    if status in _CONFIGURATION:
        return grpc.StatusCode.FAILED_PRECONDITION
    if status in _TRANSIENT:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def error_message(stderr: str) -> str:
    """pgBackRest's ERROR line and its continuation, on one line (else the last lines)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for n, line in enumerate(lines):
        if line.startswith("ERROR:"):
            return " ".join(lines[n : n + _CONTEXT_LINES])
    return " | ".join(lines[-_CONTEXT_LINES:]) or "no message on stderr"


class Runner:
    """Runs one pgBackRest binary; ``binary`` is an absolute path found at start-up."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    async def run(
        self, command: str, args: Sequence[str], config: Config, timeout: float
    ) -> Outcome:
        argv = [self.binary, command, *args]
        started = time.monotonic()
        try:
            async with spawn.child(
                argv, env=config.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            ) as proc:
                try:
                    async with asyncio.timeout(timeout):
                        out, err = await proc.communicate()
                except TimeoutError:
                    raise CommandFailed(
                        command,
                        -1,
                        f"no answer within {timeout:g} s",
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ) from None
        except OSError as exc:
            raise CommandFailed(
                command,
                127,
                f"cannot run {self.binary}: {exc}",
                grpc.StatusCode.FAILED_PRECONDITION,
            ) from exc
        status = proc.returncode if proc.returncode is not None else -1
        stderr = err.decode(errors="replace")
        seconds = time.monotonic() - started
        self._log(command, config, status, stderr, seconds)
        if status != 0:
            code = status_code(command, status)
            text = (
                "not in the archive" if code == grpc.StatusCode.NOT_FOUND else error_message(stderr)
            )
            raise CommandFailed(command, status, text, code)
        return Outcome(out, stderr, seconds)

    def _log(self, command: str, config: Config, status: int, stderr: str, seconds: float) -> None:
        if not stderr.strip():
            log.event(
                _logger, "pgbackrest ran", logging.DEBUG, command=command, seconds=round(seconds, 3)
            )
            return
        missing = command == "archive-get" and status == EXIT_WAL_MISSING
        level = logging.WARNING if status == 0 or missing else logging.ERROR
        log.event(
            _logger,
            "pgbackrest stderr",
            level,
            command=command,
            stanza=config.stanza,
            status=describe(status),
            seconds=round(seconds, 3),
            stderr=stderr.strip().splitlines(),
        )
