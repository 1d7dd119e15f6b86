"""``pgbackrest info --output=json``, read into typed values.

Only what the plugin uses is typed; ``raw`` keeps each backup's whole record. Status codes
are pgBackRest's: 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data,
4 different across repositories, 5 database mismatch across repositories, 99 other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STATUS_OK = 0
STATUS_NO_BACKUP = 2
# The stanza has to be created (stanza-create) in a repository reporting one of these.
STATUS_MISSING = frozenset({1, 3})


class InfoError(Exception):
    """info's output is not what pgBackRest 2.x prints."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Tablespace:
    oid: int
    name: str
    destination: str


@dataclass(frozen=True)
class BackupSet:
    label: str
    type: str  # full, diff, incr
    prior: str  # the backup this one depends on ("" for a full one)
    started_at: int  # Unix seconds
    stopped_at: int
    begin_wal: str
    end_wal: str
    begin_lsn: str
    end_lsn: str
    size: int  # database size
    repo_size: int  # what the backup occupies in the repository, files it references included
    repo_delta: int  # what this backup itself added to the repository
    repo_key: int
    database_id: int
    pgbackrest_version: str
    error: bool  # page checksum errors were found while copying
    annotations: dict[str, str]
    tablespaces: tuple[Tablespace, ...]  # listed only by ``info --set``
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> BackupSet:
        info, lsn = _dict(doc.get("info")), _dict(doc.get("lsn"))
        archive, times = _dict(doc.get("archive")), _dict(doc.get("timestamp"))
        database = _dict(doc.get("database"))
        spaces = doc.get("tablespace") if isinstance(doc.get("tablespace"), list) else []
        return cls(
            label=_str(doc.get("label")),
            type=_str(doc.get("type")),
            prior=_str(doc.get("prior")),
            started_at=_int(times.get("start")),
            stopped_at=_int(times.get("stop")),
            begin_wal=_str(archive.get("start")),
            end_wal=_str(archive.get("stop")),
            begin_lsn=_str(lsn.get("start")),
            end_lsn=_str(lsn.get("stop")),
            size=_int(info.get("size")),
            repo_size=_int(_dict(info.get("repository")).get("size")),
            repo_delta=_int(_dict(info.get("repository")).get("delta")),
            repo_key=_int(database.get("repo-key")),
            database_id=_int(database.get("id")),
            pgbackrest_version=_str(_dict(doc.get("backrest")).get("version")),
            error=doc.get("error") is True,
            annotations={str(k): str(v) for k, v in _dict(doc.get("annotation")).items()},
            tablespaces=tuple(
                Tablespace(_int(t.get("oid")), _str(t.get("name")), _str(t.get("destination")))
                for t in spaces or []
                if isinstance(t, dict)
            ),
            raw=doc,
        )


@dataclass(frozen=True)
class StanzaInfo:
    name: str
    status_code: int
    status_message: str
    repo_status: dict[int, int]  # repository key -> status code
    backups: tuple[BackupSet, ...]  # oldest first, as pgBackRest lists them
    archive_min: str  # oldest WAL in the archive of any database ("" when none)
    archive_max: str  # newest WAL in the archive of the current database
    archive_id: str  # the current database's archive directory, such as "15-1"
    system_id: int
    pg_version: str

    @property
    def missing(self) -> bool:
        """Some repository has no stanza: stanza-create is needed."""
        codes = set(self.repo_status.values()) or {self.status_code}
        return bool(codes & STATUS_MISSING)

    @property
    def archive_empty(self) -> bool:
        return not self.archive_min and not self.archive_max

    def backup(self, label: str) -> BackupSet | None:
        return next((b for b in self.backups if b.label == label), None)

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> StanzaInfo:
        status = _dict(doc.get("status"))
        dbs = [d for d in doc.get("db") or [] if isinstance(d, dict)]
        current = max(dbs, key=lambda d: _int(d.get("id")), default={})
        archives = [a for a in doc.get("archive") or [] if isinstance(a, dict)]
        mins = [_str(a.get("min")) for a in archives if _str(a.get("min"))]
        now = [a for a in archives if _dict(a.get("database")).get("id") == current.get("id")]
        maxes = [_str(a.get("max")) for a in (now or archives) if _str(a.get("max"))]
        repos = [r for r in doc.get("repo") or [] if isinstance(r, dict)]
        return cls(
            name=_str(doc.get("name")),
            status_code=_int(status.get("code")),
            status_message=_str(status.get("message")),
            repo_status={
                _int(r.get("key")): _int(_dict(r.get("status")).get("code")) for r in repos
            },
            backups=tuple(
                BackupSet.parse(b) for b in doc.get("backup") or [] if isinstance(b, dict)
            ),
            archive_min=min(mins, key=_segment_order, default=""),
            archive_max=max(maxes, key=_segment_order, default=""),
            archive_id=_str(now[-1].get("id")) if now else "",
            system_id=_int(current.get("system-id")),
            pg_version=_str(current.get("version")),
        )


def _segment_order(name: str) -> tuple[str, str]:
    """WAL names sort by log/segment first: a new timeline does not make a segment newer."""
    return name[8:], name[:8]


def parse(text: str, stanza: str) -> StanzaInfo:
    """The stanza's entry in info's JSON output."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InfoError(f"pgbackrest info printed no JSON: {exc}") from None
    if not isinstance(document, list):
        raise InfoError("pgbackrest info printed JSON that is not a list of stanzas")
    for entry in document:
        if isinstance(entry, dict) and entry.get("name") == stanza:
            return StanzaInfo.parse(entry)
    raise InfoError(f"pgbackrest info does not list stanza {stanza!r}")


def lsn_value(text: str) -> int:
    """'16/B374D848' -> its 64-bit position."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"{text!r} is not an LSN such as 0/3000028")
    return (int(high, 16) << 32) | int(low, 16)
