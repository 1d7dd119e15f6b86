"""Exception tree. Each class carries the process exit code it maps to."""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_SETTINGS = 2
# CloudNativePG's MissingWALDiskSpaceExitCode: tells the operator not to fail over.
EXIT_NO_WAL_SPACE = 4


class InstanceManagerError(Exception):
    """Base class: anything we raise on purpose."""

    exit_code = EXIT_FAILURE
    retryable = False


class SettingsError(InstanceManagerError):
    """The settings (file, environment, flags) are invalid. Nothing was started."""

    exit_code = EXIT_INVALID_SETTINGS


class NoWALSpaceError(InstanceManagerError):
    """The WAL volume has no room for one more segment: PostgreSQL is not started."""

    exit_code = EXIT_NO_WAL_SPACE


class CommandError(InstanceManagerError):
    """An external command (initdb, pg_ctl, pg_controldata...) failed."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = output.strip().splitlines()[-3:]
        super().__init__(f"{argv[0]} exited with status {returncode}: {' | '.join(tail)}")


class PostmasterExited(InstanceManagerError):
    """The postmaster ended without being asked to."""

    def __init__(self, pid: int, status: str) -> None:
        self.pid = pid
        self.status = status
        super().__init__(f"postmaster (pid {pid}) exited unexpectedly: {status}")


class StartupTimeout(InstanceManagerError):
    """PostgreSQL did not accept connections within startDelay."""

    retryable = True


class PluginError(InstanceManagerError):
    """A CNPG-I plugin could not be used or answered with an error."""

    retryable = True


class WalNotFound(PluginError):
    """No plugin has the requested WAL file (PostgreSQL then tries streaming or stops)."""


class ListenError(InstanceManagerError):
    """A server could not bind its address: says which address and why."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.host = host
        self.port = port
        self.cause = cause
        # asyncio's message repeats the address inside its own wording; errno says it plainly.
        if cause.errno is not None and cause.errno > 0:
            reason = os.strerror(cause.errno)
        else:
            reason = cause.strerror or str(cause) or type(cause).__name__
        reason = reason[:1].lower() + reason[1:]
        super().__init__(f"cannot listen on {host or '*'}:{port}: {reason}")


def describe(exc: BaseException) -> str:
    """One line saying what failed and why, for a log line or an answer.

    Exception groups are unwrapped to the exceptions inside them (a TaskGroup wraps even
    a single failure in one, whose own message says only how many there are); repeated
    messages are given once. Our own errors and OSErrors carry their message as is; any
    other exception is prefixed with its class name, since ``KeyError('x')`` says just ``'x'``.
    """
    if isinstance(exc, BaseExceptionGroup):
        parts = dict.fromkeys(describe(inner) for inner in exc.exceptions)
        return "; ".join(parts)
    text = " ".join(str(exc).split())
    if isinstance(exc, InstanceManagerError | OSError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
