"""The SQL behind ``/pg/status`` and how its answer becomes CNPG's ``PostgresqlStatus``.

One statement reads everything (a single round trip); parts that only make sense on a
primary (or a standby) are guarded by ``CASE`` on one ``pg_is_in_recovery()`` reading, so a
promotion in the middle of the statement cannot mix the two. Pure functions: no I/O here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from instance_manager.postgres.controldata import hot_standby_values

STREAMING_REPLICATION_USER = "streaming_replica"
# Hot-standby-sensitive settings: a standby cannot run with lower values than its primary.
DECREASE_SENSITIVE = (
    "max_connections",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
    "max_locks_per_transaction",
)

_MICROS = "(extract(epoch FROM {0}) * 1000000)::bigint"

STATUS_QUERY = f"""
WITH r AS (SELECT pg_catalog.pg_is_in_recovery() AS recovery)
SELECT json_build_object(
  'loadedConfigurationHash', COALESCE(current_setting('cnpg.config_sha256', true), ''),
  'systemID', (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
  'isPrimary', NOT r.recovery,
  'pendingRestart', EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE pending_restart),
  'timeLineID', (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
  'currentWAL', CASE WHEN NOT r.recovery
       THEN pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END,
  'currentLsn', CASE WHEN NOT r.recovery THEN pg_catalog.pg_current_wal_lsn()::text END,
  'receivedLsn', CASE WHEN r.recovery THEN pg_catalog.pg_last_wal_receive_lsn()::text END,
  'replayLsn', CASE WHEN r.recovery THEN pg_catalog.pg_last_wal_replay_lsn()::text END,
  'replayPaused', CASE WHEN r.recovery THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END,
  'walReceivers', (SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver),
  'readyWalFiles', CASE WHEN NOT r.recovery THEN (SELECT count(*)
       FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready') END,
  'archiver', (SELECT json_build_object(
      'lastArchivedWAL', COALESCE(last_archived_wal, ''),
      'lastArchivedWALTime', {_MICROS.format("last_archived_time")},
      'lastFailedWAL', COALESCE(last_failed_wal, ''),
      'lastFailedWALTime', {_MICROS.format("last_failed_time")},
      'isArchivingWAL', COALESCE(last_archived_time, '-infinity')
                        > COALESCE(last_failed_time, '-infinity'))
    FROM pg_catalog.pg_stat_archiver),
  'slots', (SELECT json_agg(json_build_object(
      'slotName', slot_name, 'plugin', COALESCE(plugin::text, ''),
      'slotType', COALESCE(slot_type, ''), 'datoid', COALESCE(datoid::text, ''),
      'database', COALESCE(database::text, ''), 'xmin', COALESCE(xmin::text, ''),
      'catalogXmin', COALESCE(catalog_xmin::text, ''),
      'restartLsn', COALESCE(restart_lsn::text, ''), 'walStatus', COALESCE(wal_status, ''),
      'safeWalSize', safe_wal_size, 'active', active) ORDER BY slot_name)
    FROM pg_catalog.pg_replication_slots),
  'replication', (SELECT json_agg(json_build_object(
      'applicationName', application_name, 'state', COALESCE(state, ''),
      'receivedLsn', COALESCE(sent_lsn::text, ''), 'writeLsn', COALESCE(write_lsn::text, ''),
      'flushLsn', COALESCE(flush_lsn::text, ''), 'replayLsn', COALESCE(replay_lsn::text, ''),
      'writeLag', to_char(COALESCE(write_lag, '0'::interval), 'HH24:MI:SS.US'),
      'flushLag', to_char(COALESCE(flush_lag, '0'::interval), 'HH24:MI:SS.US'),
      'replayLag', to_char(COALESCE(replay_lag, '0'::interval), 'HH24:MI:SS.US'),
      'syncState', COALESCE(sync_state, ''),
      'syncPriority', COALESCE(sync_priority, 0)::text) ORDER BY application_name)
    FROM pg_catalog.pg_stat_replication
    WHERE usename = '{STREAMING_REPLICATION_USER}'),
  'basebackups', (SELECT json_agg(json_build_object(
      'usename', a.usename, 'application_name', a.application_name,
      'backend_start', {_MICROS.format("a.backend_start")}, 'phase', b.phase,
      'backup_total', COALESCE(b.backup_total, 0),
      'backup_streamed', COALESCE(b.backup_streamed, 0),
      'backup_total_pretty', COALESCE(pg_catalog.pg_size_pretty(b.backup_total), ''),
      'backup_streamed_pretty', COALESCE(pg_catalog.pg_size_pretty(b.backup_streamed), ''),
      'tablespaces_total', COALESCE(b.tablespaces_total, 0),
      'tablespaces_streamed', COALESCE(b.tablespaces_streamed, 0))
      ORDER BY a.usename, a.application_name)
    FROM pg_catalog.pg_stat_progress_basebackup b
    JOIN pg_catalog.pg_stat_activity a USING (pid)
    WHERE a.application_name ~ '-join$')
) FROM r
"""

_SENSITIVE = ", ".join(f"'{name}'" for name in DECREASE_SENSITIVE)
# Settings waiting for a restart whose value in the files is lower than the running one.
DECREASED_QUERY = f"""
SELECT COALESCE(json_object_agg(s.name, COALESCE(f.setting, s.boot_val)::integer), '{{}}')
FROM pg_catalog.pg_settings s
LEFT JOIN (SELECT DISTINCT ON (name) name, setting, applied
           FROM pg_catalog.pg_file_settings ORDER BY name, seqno DESC) f
  ON f.name = s.name AND NOT f.applied
WHERE s.pending_restart AND s.name IN ({_SENSITIVE})
  AND COALESCE(f.setting, s.boot_val)::integer < s.setting::integer
"""

# (name, omitted when empty) in PostgresqlStatus order.
FIELDS: tuple[tuple[str, bool], ...] = (
    ("currentLsn", True),
    ("receivedLsn", True),
    ("replayLsn", True),
    ("systemID", False),
    ("isPrimary", False),
    ("replayPaused", False),
    ("pendingRestart", False),
    ("pendingRestartForDecrease", False),
    ("isWalReceiverActive", False),
    ("isPgRewindRunning", False),
    ("mightBeUnavailable", False),
    ("isArchivingWAL", True),
    ("node", False),
    ("pod", False),
    ("mightBeUnavailableMaskedError", True),
    ("loadedConfigurationHash", True),
    # Not in CNPG's PostgresqlStatus (the operator ignores unknown fields): the last
    # configuration reload failed and is being retried.
    ("configurationReloadError", True),
    ("configurationReloadFailures", True),
    ("lastArchivedWAL", True),
    ("lastArchivedWALTime", True),
    ("lastFailedWAL", True),
    ("lastFailedWALTime", True),
    ("currentWAL", True),
    ("readyWalFiles", True),
    ("timeLineID", True),
    ("replicationInfo", True),
    ("replicationSlotsInfo", True),
    ("pgStatBasebackupsInfo", True),
    ("executableHash", False),
    ("instanceManagerVersion", False),
    ("instanceArch", False),
    ("isInstanceManagerUpgrading", False),
    ("sessionID", False),
    ("isPodReady", False),
)
_ZERO: dict[str, Any] = {"node": "", "systemID": "", "executableHash": "", "instanceArch": ""}
_ZERO.update({"sessionID": "", "instanceManagerVersion": ""})


def pod(name: str) -> dict[str, Any]:
    """A Pod with only its name set, serialised as Go serialises an empty corev1.Pod."""
    return {
        "metadata": {"name": name, "creationTimestamp": None},
        "spec": {"containers": None},
        "status": {},
    }


def shape(values: dict[str, Any]) -> dict[str, Any]:
    """The fields in PostgresqlStatus order, zero values filled, empty optional ones dropped."""
    out: dict[str, Any] = {}
    for name, omit_empty in FIELDS:
        value = values.get(name, _ZERO.get(name, False))
        if omit_empty and value in (None, "", 0, False, []):
            continue
        out[name] = value
    return out


def rfc3339(micros: int | None) -> str:
    """Go's time.RFC3339Nano of a UTC instant; '-infinity' when there is none."""
    if micros is None:
        return "-infinity"
    seconds, fraction = divmod(int(micros), 1_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text + "Z"


def lsn(text: str) -> int:
    """'16/B374D848' as an integer (0 for an empty or invalid LSN)."""
    high, sep, low = text.partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16) if sep else 0
    except ValueError:
        return 0


def _omit_empty(row: dict[str, Any]) -> dict[str, Any]:
    """Go's omitempty on strings, booleans and pointers (a pointer to 0 stays)."""
    return {k: v for k, v in row.items() if v is not None and v is not False and v != ""}


def _slots(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [_omit_empty(row) for row in rows or []]


def _replication(rows: list[dict[str, Any]] | None, cluster: str) -> list[dict[str, Any]]:
    pattern = re.compile(re.escape(cluster) + r"-[0-9]+$")
    chosen = []
    for row in rows or []:
        if pattern.search(str(row.get("applicationName") or "")):
            chosen.append(_omit_empty(row))
    return chosen


def _basebackups(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    result = []
    for row in rows or []:
        entry = dict(row)
        entry["backend_start"] = rfc3339(entry.get("backend_start"))
        result.append(entry)
    return result


def fill(values: dict[str, Any], row: dict[str, Any], cluster: str) -> None:
    """Copy the statement's answer into ``values`` as CNPG computes each field."""
    primary = bool(row.get("isPrimary"))
    values["loadedConfigurationHash"] = row.get("loadedConfigurationHash") or ""
    values["systemID"] = row.get("systemID") or ""
    values["isPrimary"] = primary
    values["pendingRestart"] = bool(row.get("pendingRestart"))
    values["timeLineID"] = row.get("timeLineID") or 0
    if primary:
        values["currentWAL"] = row.get("currentWAL") or ""
        values["currentLsn"] = row.get("currentLsn") or ""
        values["readyWalFiles"] = int(row.get("readyWalFiles") or 0)
        values["replicationSlotsInfo"] = _slots(row.get("slots"))
        values["replicationInfo"] = _replication(row.get("replication"), cluster)
    else:
        received, replayed = row.get("receivedLsn") or "", row.get("replayLsn") or ""
        # The two functions are read one after the other: replay may have passed receive.
        values["receivedLsn"] = replayed if lsn(received) < lsn(replayed) else received
        values["replayLsn"] = replayed
        values["replayPaused"] = bool(row.get("replayPaused"))
        values["isWalReceiverActive"] = int(row.get("walReceivers") or 0) > 0
    archiver = row.get("archiver") or {}
    values["lastArchivedWAL"] = archiver.get("lastArchivedWAL") or ""
    values["lastArchivedWALTime"] = rfc3339(archiver.get("lastArchivedWALTime"))
    values["lastFailedWAL"] = archiver.get("lastFailedWAL") or ""
    values["lastFailedWALTime"] = rfc3339(archiver.get("lastFailedWALTime"))
    values["isArchivingWAL"] = bool(archiver.get("isArchivingWAL"))
    values["pgStatBasebackupsInfo"] = _basebackups(row.get("basebackups"))


def all_decreases_applied(decreased: dict[str, int], controldata: dict[str, str]) -> bool:
    """On a standby: do the values already received from the primary match the new ones?"""
    received = hot_standby_values(controldata)
    return all(received.get(name) == value for name, value in decreased.items())
