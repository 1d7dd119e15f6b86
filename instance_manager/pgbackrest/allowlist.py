"""Which pgBackRest options a Cluster may set through the plugin's parameters.

The Cluster is written by whoever may edit the Cluster resource; the sidecar runs with its
own account, files and credentials. So a parameter becomes a pgBackRest option only if it
is on the lists below: where the repository is and how to reach it (type, path, bucket,
endpoint, region, credentials, TLS checks), encryption, compression, retention, bundling,
parallelism, timeouts and the archive-async queue. Everything else is refused, in
particular the options that make pgBackRest run a program (``cmd``, ``cmd-ssh``,
``repo1-s3-process-cmd``), work through another host (``repo1-host*``, ``pg1-host*``) or
choose where it reads or writes on the sidecar's filesystem (``pg1-path``, ``lock-path``,
``spool-path``, ``log-path``, ``config*``, ``link-map``, ...). The sidecar's own command
line can enable such an option (``--allow-option NAME``, NAME with or without its index);
the sidecar's own ``PGBACKREST_*`` variables are trusted as they are. The options a request
decides and the plugin's own log settings are never parameters.

Option names are checked in pgBackRest's canonical form (``repo1-path``, index 1 to 256),
so a deprecated alias (``db1-path``, ``backup-cmd``) or an unknown name is refused too.
Names as of pgBackRest 2.45 to 2.5x (its build/config.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Options anywhere in the configuration that a Cluster may set.
GLOBAL = frozenset(
    {
        "stanza",
        # archiving
        "archive-async",
        "archive-check",
        "archive-copy",
        "archive-get-queue-max",
        "archive-header-check",
        "archive-missing-retry",
        "archive-mode",
        "archive-mode-check",
        "archive-push-batch-size",
        # Not archive-push-queue-max: past it pgBackRest drops WAL and reports it pushed, and
        # an Archive call must never answer OK for a segment that is not stored.
        "archive-timeout",
        # backups
        "backup-standby",
        "checksum-page",
        "db-exclude",
        "db-include",
        "exclude",
        "expire-auto",
        "manifest-save-threshold",
        "page-header-check",
        "resume",
        "start-fast",
        "stop-auto",
        # compression, buffers, parallelism, network
        "buffer-size",
        "compress-level",
        "compress-level-network",
        "compress-type",
        "db-timeout",
        "io-timeout",
        "job-retry",
        "job-retry-interval",
        "process-max",
        "protocol-timeout",
        "sck-keep-alive",
        "tcp-keep-alive-count",
        "tcp-keep-alive-idle",
        "tcp-keep-alive-interval",
    }
)
# Repository options, named here without their index (``repo-path`` for ``repo1-path``).
REPO = frozenset(
    {
        "repo-type",
        "repo-path",
        "repo-cipher-type",
        "repo-cipher-pass",
        "repo-hardlink",
        "repo-symlink",
        "repo-retention-archive",
        "repo-retention-archive-type",
        "repo-retention-diff",
        "repo-retention-full",
        "repo-retention-full-type",
        "repo-retention-history",
        "repo-bundle",
        "repo-bundle-limit",
        "repo-bundle-size",
        "repo-block",
        "repo-block-age-map",
        "repo-block-checksum-size-map",
        "repo-block-size-map",
        "repo-block-size-super",
        "repo-block-size-super-full",
        "repo-storage-ca-file",
        "repo-storage-ca-path",
        "repo-storage-host",
        "repo-storage-port",
        "repo-storage-prefetch",
        "repo-storage-read-over",
        "repo-storage-tag",
        "repo-storage-upload-chunk-size",
        "repo-storage-verify-tls",
        "repo-azure-account",
        "repo-azure-container",
        "repo-azure-endpoint",
        "repo-azure-key",
        "repo-azure-key-type",
        "repo-azure-uri-style",
        "repo-gcs-bucket",
        "repo-gcs-endpoint",
        "repo-gcs-key",
        "repo-gcs-key-type",
        "repo-gcs-user-project",
        "repo-s3-bucket",
        "repo-s3-endpoint",
        "repo-s3-key",
        "repo-s3-key-secret",
        "repo-s3-key-type",
        "repo-s3-kms-key-id",
        "repo-s3-region",
        "repo-s3-requester-pays",
        "repo-s3-role",
        "repo-s3-service",
        "repo-s3-sse-customer-key",
        "repo-s3-sts-host",
        "repo-s3-token",
        "repo-s3-uri-style",
        "repo-sftp-host",
        "repo-sftp-host-fingerprint",
        "repo-sftp-host-key-check-type",
        "repo-sftp-host-key-hash-type",
        "repo-sftp-host-port",
        "repo-sftp-host-user",
        "repo-sftp-private-key-passphrase",
    }
)
# Options of the local PostgreSQL (``pg1-port``): how to connect, never where its files are.
PG = frozenset({"pg-database", "pg-port", "pg-user"})
# Options a request decides: refused so that they cannot silently change every request.
PER_REQUEST = frozenset(
    {
        "annotation",
        "delta",
        "force",
        "output",
        "recovery-option",
        "repo",
        "set",
        "target",
        "target-action",
        "target-exclusive",
        "target-timeline",
        "type",
    }
)
# The plugin's own settings (its logs carry pgBackRest's messages; info's JSON is stdout).
OWNED = frozenset({"log-level-console", "log-level-file", "log-level-stderr"})

INDEX_MAX = 256  # pgBackRest's highest repository or PostgreSQL index
_INDEXED = re.compile(r"^(repo|pg)([1-9][0-9]{0,2})-([a-z0-9-]+)$")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_PROGRAMS = frozenset({"cmd", "cmd-ssh", "repo-s3-process-cmd", "repo-host-cmd", "pg-host-cmd"})


def generic(option: str) -> str:
    """``repo2-path`` -> ``repo-path``; any other name as it is. An index out of pgBackRest's
    range leaves the name as it is (and so not on any list)."""
    found = _INDEXED.match(option)
    if found is None or int(found.group(2)) > INDEX_MAX:
        return option
    return f"{found.group(1)}-{found.group(3)}"


def allowed(option: str) -> bool:
    """On the lists a Cluster may use."""
    name = generic(option)
    if name == option:
        return option in GLOBAL
    return name in (REPO if name.startswith("repo-") else PG)


def why_refused(option: str) -> str:
    name = generic(option)
    if option in REPO | PG:
        return f"it lacks its index (for example {option.replace('-', '1-', 1)})"
    if name in _PROGRAMS:
        return "it makes pgBackRest run a program"
    if name.startswith(("repo-host", "pg-host")):
        return "it makes pgBackRest work through another host"
    if name.endswith(("-path", "-file", "-map", "-known-host")) or name.startswith("config"):
        return "it names files or directories on the sidecar"
    return "it is not on the plugin's list of options a Cluster may set"


class OptionPolicy:
    """The allowlist, plus what the sidecar's command line enables (``--allow-option``)."""

    def __init__(self, enabled: Iterable[str] = ()) -> None:
        """Raises ValueError for a name that is not an option or cannot be enabled."""
        names = frozenset(enabled)
        for name in sorted(names):
            if not _NAME.match(name):
                raise ValueError(f"--allow-option {name!r}: not a pgBackRest option name")
            if generic(name) in PER_REQUEST | OWNED:
                raise ValueError(f"--allow-option {name}: the plugin sets this option itself")
        self.enabled = names

    def refusal(self, key: str, option: str, origin: str) -> str | None:
        """Why the parameter ``key`` (pgBackRest's ``option``) is refused; None if it is not."""
        name = generic(option)
        if name in PER_REQUEST:
            return f"parameter {key!r} ({origin}): {option} is chosen per request"
        if name in OWNED:
            return f"parameter {key!r} ({origin}): the plugin sets {option} itself"
        if allowed(option) or option in self.enabled or name in self.enabled:
            return None
        return (
            f"parameter {key!r} ({origin}): pgBackRest option {option} is refused because "
            f"{why_refused(option)}; only the sidecar's command line can enable it "
            f"(--allow-option {option})"
        )
