"""Which of the user's ``spec.postgresql.parameters`` reach ``custom.conf``.

Two kinds of user parameter never do, as in CloudNativePG (``FixedConfigurationParameters``
in pkg/postgres/configuration.go): *fixed* ones, whose value the manager chooses, and
*blocked* ones, which must keep PostgreSQL's default for the manager to work. Both are
dropped with a warning.

Some values of parameters a user may set are refused as well, because PostgreSQL would
not start with them, or because WAL archiving or a later ``pg_rewind`` could not work:
the manager's own value is used instead and a warning names the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

# The manager chooses the value (CloudNativePG's "fixed" list).
FIXED = frozenset(
    {
        "archive_command",
        "archive_mode",
        "cluster_name",
        "pg_failover_slots.primary_dsn",
        "pg_failover_slots.standby_slot_names",
        "port",
        "primary_conninfo",
        "primary_slot_name",
        "recovery_target",
        "recovery_target_action",
        "recovery_target_inclusive",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_timeline",
        "recovery_target_xid",
        "restore_command",
        "shared_preload_libraries",  # spec.postgresql.shared_preload_libraries instead
        "ssl",
        "ssl_ca_file",
        "ssl_cert_file",
        "ssl_crl_file",
        "ssl_dh_params_file",
        "ssl_key_file",
        "ssl_passphrase_command",
        "ssl_passphrase_command_supports_reload",
        "ssl_prefer_server_ciphers",
        "synchronized_standby_slots",
        "synchronous_standby_names",
        "temp_tablespaces",
    }
)

# PostgreSQL's default must stay (CloudNativePG's "blocked" list).
BLOCKED = frozenset(
    {
        "allow_system_table_mods",
        "archive_cleanup_command",
        "bonjour",
        "bonjour_name",
        "config_file",
        "data_directory",
        "data_sync_retry",
        "event_source",
        "external_pid_file",
        "hba_file",
        "hot_standby",
        "ident_file",
        "jit_provider",
        "listen_addresses",
        "log_destination",
        "log_directory",
        "log_file_mode",
        "log_filename",
        "log_rotation_age",
        "log_rotation_size",
        "log_truncate_on_rotation",
        "logging_collector",
        "promote_trigger_file",
        "recovery_end_command",
        "recovery_min_apply_delay",
        "restart_after_crash",
        "stats_temp_directory",
        "syslog_facility",
        "syslog_ident",
        "syslog_sequence_numbers",
        "syslog_split_messages",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
    }
)

# Owned here beyond CloudNativePG's lists, each with the reason.
OWNED_HERE = {
    # PostgreSQL 15 uses archive_library instead of archive_command when both are set,
    # so WAL would never reach the plugins.
    "archive_library": "it would replace archive_command",
    # The manager sets it from spec.postgresql.enableAlterSystem (PostgreSQL 17 and later).
    "allow_alter_system": "set from spec.postgresql.enableAlterSystem",
    # The TLS files are the manager's, like the ssl_*_file parameters above.
    "ssl_crl_dir": "a TLS file of the manager",
    # Configuration-file directives, not parameters: they would read another file.
    "include": "a directive that reads another file",
    "include_dir": "a directive that reads another file",
    "include_if_exists": "a directive that reads another file",
}

OWNED = FIXED | BLOCKED | frozenset(OWNED_HERE)

# The wal_level values PostgreSQL accepts, "minimal" aside: archive and hot_standby are
# its old names for replica.
WAL_LEVELS = frozenset({"replica", "logical", "archive", "hot_standby"})


@dataclass(frozen=True)
class Refusal:
    """A user value not applied: ``used`` is the value written instead."""

    parameter: str
    value: str
    reason: str
    used: str


def is_owned(name: str) -> bool:
    """True for a (lower-case) name the user may not set."""
    return name in OWNED or name.startswith("cnpg.")


def parse_bool(text: str) -> bool | None:
    """A boolean as PostgreSQL's parse_bool reads it; None when it is not one."""
    value = text.lower()
    if not value:
        return None
    for word, meaning in (("true", True), ("false", False), ("yes", True), ("no", False)):
        if word.startswith(value):
            return meaning
    if len(value) >= 2 and "off".startswith(value):
        return False
    return {"on": True, "1": True, "0": False}.get(value)


def refusal_reason(name: str, value: str, data_checksums: bool) -> str | None:
    """Why the user's ``value`` of ``name`` cannot be used, or None when it can."""
    if name == "wal_level":
        level = value.lower()
        if level == "minimal":
            return "WAL archiving and replication need wal_level replica or logical"
        if level not in WAL_LEVELS:
            return "not a wal_level PostgreSQL knows (replica or logical)"
    elif name in ("full_page_writes", "wal_log_hints"):
        enabled = parse_bool(value)
        if enabled is None:
            return "not a boolean"
        if not enabled and name == "full_page_writes":
            return "pg_rewind and WAL archiving need full_page_writes on"
        if not enabled and not data_checksums:
            return "pg_rewind needs wal_log_hints on when data checksums are off"
    return None
