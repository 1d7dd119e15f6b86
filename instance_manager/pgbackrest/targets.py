"""Recovery targets: CloudNativePG's ``bootstrap.recovery.recoveryTarget``, the backup set a
restore starts from, and the PostgreSQL settings that stop recovery at the target.

A target time without a time zone is read as UTC, and written back with its offset, so the
backup chosen here and the point PostgreSQL stops at agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from instance_manager.pgbackrest.info import BackupSet, lsn_value
from instance_manager.pgbackrest.options import ConfigError

Kind = Literal["latest", "time", "lsn", "name", "xid", "immediate"]
_KEYS: dict[str, Kind] = {
    "targetTime": "time",
    "targetLSN": "lsn",
    "targetName": "name",
    "targetXID": "xid",
}


@dataclass(frozen=True)
class RecoveryTarget:
    kind: Kind = "latest"  # latest: replay every WAL file the archive has
    value: str = ""
    exclusive: bool = False  # stop just before the target instead of just after
    timeline: str = ""  # recovery_target_timeline; "" keeps the default (latest)
    backup_id: str = ""  # a pgBackRest label to restore, instead of choosing one

    @property
    def at(self) -> datetime:
        return parse_time(self.value)


def parse_time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"recoveryTarget.targetTime: {text!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_target(recovery: Mapping[str, Any]) -> RecoveryTarget:
    """The target of ``spec.bootstrap.recovery`` (no recoveryTarget: the end of the archive)."""
    raw = recovery.get("recoveryTarget") or {}
    if not isinstance(raw, dict):
        raise ConfigError("bootstrap.recovery.recoveryTarget must be an object")
    chosen: list[tuple[Kind, str]] = [
        (kind, str(raw[key])) for key, kind in _KEYS.items() if raw.get(key) not in (None, "")
    ]
    if raw.get("targetImmediate") is True:
        chosen.append(("immediate", ""))
    if len(chosen) > 1:
        names = ", ".join(kind for kind, _ in chosen)
        raise ConfigError(f"bootstrap.recovery.recoveryTarget: more than one target ({names})")
    kind, value = chosen[0] if chosen else ("latest", "")
    target = RecoveryTarget(
        kind=kind,
        value=value,
        exclusive=raw.get("exclusive") is True,
        timeline=str(raw.get("targetTLI") or ""),
        backup_id=str(raw.get("backupID") or ""),
    )
    if kind == "time":
        parse_time(value)  # refused now rather than halfway through a restore
    if kind == "lsn":
        try:
            lsn_value(value)
        except ValueError as exc:
            raise ConfigError(f"recoveryTarget.targetLSN: {exc}") from None
    return target


def choose_backup(backups: Sequence[BackupSet], target: RecoveryTarget) -> BackupSet:
    """The backup set to restore: the one named, or the newest that ended before the target."""
    if target.backup_id:
        for backup in backups:
            if backup.label == target.backup_id:
                return backup
        raise ConfigError(f"recoveryTarget.backupID: no backup {target.backup_id!r} in the stanza")
    candidates = list(backups)
    if target.kind == "time":
        limit = target.at.timestamp()
        candidates = [b for b in candidates if b.stopped_at <= limit]
    elif target.kind == "lsn":
        limit_lsn = lsn_value(target.value)
        candidates = [b for b in candidates if b.end_lsn and lsn_value(b.end_lsn) <= limit_lsn]
    if not candidates:
        what = f" that ended before the target {target.kind} {target.value}" if backups else ""
        raise ConfigError(f"no backup to restore{what}")
    return max(candidates, key=lambda b: (b.stopped_at, b.label))


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def recovery_settings(target: RecoveryTarget) -> dict[str, str]:
    """postgresql.conf settings that stop recovery at the target and promote there."""
    settings: dict[str, str] = {}
    if target.kind == "time":
        settings["recovery_target_time"] = target.at.isoformat(sep=" ")
    elif target.kind == "lsn":
        settings["recovery_target_lsn"] = target.value
    elif target.kind == "name":
        settings["recovery_target_name"] = target.value
    elif target.kind == "xid":
        settings["recovery_target_xid"] = target.value
    elif target.kind == "immediate":
        settings["recovery_target"] = "immediate"
    if target.kind != "latest":
        settings["recovery_target_inclusive"] = "off" if target.exclusive else "on"
        settings["recovery_target_action"] = "promote"
    if target.timeline:
        settings["recovery_target_timeline"] = target.timeline
    return settings


def render(settings: Mapping[str, str]) -> str:
    return "".join(f"{name} = {quote(value)}\n" for name, value in settings.items())
