"""Exception tree. Each class carries the process exit code it maps to."""

from __future__ import annotations

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
