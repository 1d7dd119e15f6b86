"""PostgreSQL configuration files the manager owns, rendered as CloudNativePG does.

``postgresql.conf`` keeps what initdb wrote and gains two includes; ``custom.conf`` is
rendered defaults -> user parameters -> mandatory settings and ends with
``cnpg.config_sha256``; ``override.conf``, ``pg_hba.conf`` and ``pg_ident.conf`` are
generated. Every file is written atomically and only when its content changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from instance_manager import log
from instance_manager.postgres import parameters
from instance_manager.settings import Settings

CUSTOM_CONF = "custom.conf"
OVERRIDE_CONF = "override.conf"
HASH_PARAMETER = "cnpg.config_sha256"

# CloudNativePG's global defaults; a user parameter replaces them.
DEFAULT_PARAMETERS: dict[str, str] = {
    "archive_timeout": "5min",
    "dynamic_shared_memory_type": "posix",
    "full_page_writes": "on",
    "max_parallel_workers": "32",
    "max_replication_slots": "32",
    "max_worker_processes": "32",
    "shared_memory_type": "mmap",
    "ssl_max_protocol_version": "TLSv1.3",
    "ssl_min_protocol_version": "TLSv1.3",
    "wal_keep_size": "512MB",
    "wal_level": "logical",
    "wal_log_hints": "on",
    "wal_receiver_timeout": "5s",
    "wal_sender_timeout": "5s",
}

_logger = log.get()


@dataclass(frozen=True)
class RenderedConfig:
    custom_conf: str
    sha256: str
    ignored: tuple[str, ...] = field(default=())  # names the manager owns
    refused: tuple[parameters.Refusal, ...] = field(default=())  # values not applied


def quote(value: str) -> str:
    """A value in postgresql.conf syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def certificates_dir(settings: Settings) -> Path:
    return settings.instance.scratchDir / "certificates"


def ssl_enabled(settings: Settings) -> bool:
    certs = certificates_dir(settings)
    return (certs / "server.crt").is_file() and (certs / "server.key").is_file()


def manager_path(settings: Settings) -> Path:
    """The per-segment client the daemon installs at start (``wal/install.py``), as a
    script to run by hand; PostgreSQL runs its compiled twin (``wal_client``)."""
    return settings.instance.scratchDir / "bin" / "manager"


def client_path(manager: Path) -> Path:
    """The compiled client installed beside the script ``manager``."""
    return manager.with_name(manager.name + ".pyc")


def interpreter() -> str:
    """The real interpreter behind ``sys.executable`` (a venv's python is a symlink)."""
    return os.path.realpath(sys.executable)


def wal_client(settings: Settings) -> list[str]:
    """The command line of the installed client: the interpreter that compiled it, with
    ``-I -S`` (the client uses built-in modules only), on the compiled file."""
    return [interpreter(), "-IS", str(client_path(manager_path(settings)))]


def wal_deadline(settings: Settings) -> float:
    """The client's own deadline (SCRATCH/bin/manager): the daemon's plugin deadline twice
    over, since a segment may wait for an archive already in flight and then its own, plus
    a margin for the daemon's answer."""
    return 2 * settings.instance.pluginTimeout + 10


def wal_socket(settings: Settings) -> Path:
    """Where the daemon answers the archive/restore client."""
    return wal_socket_in(settings.instance.scratchDir)


def wal_socket_in(scratch_dir: Path) -> Path:
    """The WAL socket of the daemon using ``scratch_dir``: alone in a 0700 directory, as
    run/ itself also holds PostgreSQL's socket, which other local accounts may reach."""
    return scratch_dir / "run" / "wal" / "instance-manager.sock"


def _wal_command(settings: Settings, *args: str) -> str:
    return " ".join([*map(shlex.quote, wal_client(settings)), *args])


def archive_command(settings: Settings) -> str:
    """The client, unless the shell finds the segment's marker in the archive spool: a
    segment the daemon has already stored (``wal/archiver.py``) costs PostgreSQL no more
    than the shell it runs every command in. When the segment is being stored ahead, its
    in-flight file is locked: the shell waits for the lock (``flock``, at most the client's
    deadline) and tests for the marker again. With no such file, the redirection fails
    quietly, without a fork, and so does a system without ``flock``: the client runs."""
    marker = shlex.quote(str(settings.archive_spool)) + "/%f"
    inflight = shlex.quote(str(settings.archive_inflight)) + "/%f"
    wait = f"flock -s -w {wal_deadline(settings):g} 9 2>/dev/null 9<{inflight}"
    client = _wal_command(settings, "wal-archive", "%p")
    return f"test -e {marker} || {{ {wait}; test -e {marker}; }} || exec {client}"


def restore_command(settings: Settings, rewind: bool = False) -> str:
    return _wal_command(settings, "wal-restore", *(["--rewind"] if rewind else []), "%f", "%p")


def mandatory_parameters(settings: Settings) -> dict[str, str]:
    params = {
        "archive_command": archive_command(settings),
        "archive_mode": "on",
        "cluster_name": settings.cluster.metadata.name,
        "hot_standby": "on",
        "listen_addresses": settings.instance.listenAddresses,
        "log_destination": "csvlog",
        "log_directory": str(settings.log_dir),
        "log_filename": "postgres",
        "log_rotation_age": "0",
        "log_rotation_size": "0",
        "log_truncate_on_rotation": "false",
        "logging_collector": "on",
        "port": str(settings.instance.port),
        "restart_after_crash": "off",
        "shared_preload_libraries": ",".join(
            settings.cluster.spec.postgresql.shared_preload_libraries
        ),
        "unix_socket_directories": str(settings.run_dir),
    }
    if ssl_enabled(settings):
        certs = certificates_dir(settings)
        params["ssl"] = "on"
        params["ssl_cert_file"] = str(certs / "server.crt")
        params["ssl_key_file"] = str(certs / "server.key")
        if (certs / "client-ca.crt").is_file():
            params["ssl_ca_file"] = str(certs / "client-ca.crt")
    return params


def render_custom_conf(
    settings: Settings, data_checksums: bool = False, managed: dict[str, str] | None = None
) -> RenderedConfig:
    """defaults -> user parameters (owned ones and refused values dropped) -> mandatory ->
    ``managed``.

    ``data_checksums``: the data directory has page checksums (pg_control says so), so
    ``wal_log_hints = off`` is safe for pg_rewind. ``managed``: settings the cluster layer
    computes for this instance (a primary's ``synchronous_standby_names`` and its
    ``cnpg.synchronous_standby_names_metadata``). Regular parameters come sorted and make
    the hash; ``cnpg.*`` ones follow, outside the hash; the hash line is last.
    """
    params = dict(DEFAULT_PARAMETERS)
    ignored = []
    refused = []
    for name, value in settings.cluster.spec.postgresql.text_parameters.items():
        key = name.lower()
        if parameters.is_owned(key):
            ignored.append(name)
            continue
        reason = parameters.refusal_reason(key, value, data_checksums)
        if reason is not None:
            refused.append(parameters.Refusal(name, value, reason, DEFAULT_PARAMETERS[key]))
            continue
        params[key] = value
    params.update(mandatory_parameters(settings))
    params.update(managed or {})
    internal = sorted(key for key in params if key.startswith("cnpg."))
    regular = sorted(key for key in params if not key.startswith("cnpg."))
    body = "".join(f"{key} = {quote(params[key])}\n" for key in regular)
    digest = hashlib.sha256(body.encode()).hexdigest()
    text = (
        "# Generated by the instance manager from the Cluster resource: do not edit.\n"
        + body
        + "".join(f"{key} = {quote(params[key])}\n" for key in internal)
        + f"{HASH_PARAMETER} = {quote(digest)}\n"
    )
    return RenderedConfig(
        custom_conf=text, sha256=digest, ignored=tuple(ignored), refused=tuple(refused)
    )


def os_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def render_pg_hba(settings: Settings) -> str:
    lines = [
        "# Generated by the instance manager: do not edit.",
        "local all cnpg_metrics_exporter peer map=cnpg_metrics_exporter",
        "local all all peer map=local",
    ]
    if ssl_enabled(settings):
        lines += [
            "hostssl postgres streaming_replica all cert",
            "hostssl replication streaming_replica all cert",
        ]
    lines += ["", "# User rules (spec.postgresql.pg_hba)"]
    lines += settings.cluster.spec.postgresql.pg_hba
    lines += ["", "# Default rule", "host all all all scram-sha-256"]
    return "\n".join(lines) + "\n"


def render_pg_ident(settings: Settings) -> str:
    user = os_user()
    lines = [
        "# Generated by the instance manager: do not edit.",
        f"local {user} postgres",
        "cnpg_streaming_replica streaming_replica streaming_replica",
        f"cnpg_metrics_exporter {user} cnpg_metrics_exporter",
    ]
    lines += settings.cluster.spec.postgresql.pg_ident
    return "\n".join(lines) + "\n"


def render_override_conf(settings: Settings, extra: Mapping[str, str] | None = None) -> str:
    """restore_command and recovery_target_timeline, then ``extra`` (a standby's
    primary_conninfo and primary_slot_name; pg_rewind's restore_command replaces ours)."""
    params = {
        "restore_command": restore_command(settings),
        "recovery_target_timeline": "latest",
        **(extra or {}),
    }
    return "# Generated by the instance manager: recovery settings live here.\n" + "".join(
        f"{key} = {quote(value)}\n" for key, value in params.items()
    )


def write_atomic(path: Path, content: str, mode: int = 0o600) -> bool:
    """Replace ``path`` with ``content`` unless it already holds it. Returns changed."""
    try:
        if path.read_text() == content:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def ensure_includes(pgdata: Path) -> bool:
    """Append the custom.conf and override.conf includes to postgresql.conf once."""
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    present = {line.strip() for line in text.splitlines()}
    missing = [name for name in (CUSTOM_CONF, OVERRIDE_CONF) if f"include '{name}'" not in present]
    if not missing:
        return False
    if not text.endswith("\n"):
        text += "\n"
    for name in missing:
        text += f"\n# load CloudNativePG {name} configuration\ninclude '{name}'\n"
    return write_atomic(conf, text, 0o600)


def log_dropped(rendered: RenderedConfig) -> None:
    """One warning for each user parameter that did not reach custom.conf."""
    for name in rendered.ignored:
        log.event(
            _logger,
            "ignoring a parameter the instance manager owns",
            logging.WARNING,
            parameter=name,
        )
    for refusal in rendered.refused:
        log.event(
            _logger,
            "refusing a parameter value",
            logging.WARNING,
            parameter=refusal.parameter,
            value=refusal.value,
            reason=refusal.reason,
            used=refusal.used,
        )


def write_all(
    settings: Settings,
    data_checksums: bool = False,
    recovery: Mapping[str, str] | None = None,
    managed: dict[str, str] | None = None,
) -> tuple[RenderedConfig, bool]:
    """Write every managed file; returns the rendered custom.conf and whether any changed.
    ``recovery``: extra override.conf settings (see render_override_conf); ``managed``:
    custom.conf settings of the cluster layer (see render_custom_conf)."""
    pgdata = settings.pgdata
    rendered = render_custom_conf(settings, data_checksums, managed)
    log_dropped(rendered)
    changed = write_atomic(pgdata / CUSTOM_CONF, rendered.custom_conf)
    changed |= write_atomic(pgdata / OVERRIDE_CONF, render_override_conf(settings, recovery))
    changed |= write_atomic(pgdata / "pg_hba.conf", render_pg_hba(settings))
    changed |= write_atomic(pgdata / "pg_ident.conf", render_pg_ident(settings))
    changed |= ensure_includes(pgdata)
    auto_conf = pgdata / "postgresql.auto.conf"
    if auto_conf.exists():
        mode = 0o600 if settings.cluster.spec.postgresql.enableAlterSystem else 0o400
        os.chmod(auto_conf, mode)
    return rendered, changed
