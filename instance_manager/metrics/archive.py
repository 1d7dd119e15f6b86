"""pg_wal and archive visibility: CNPG's directory counts, and what CNPG does not show.

CloudNativePG exposes how many ``.ready``/``.done`` files exist. We add what an operator
needs to see an archive falling behind: the backlog in segments and bytes, how old its
oldest segment is, when archiving last succeeded and failed, and the measured archive
rate, all from the daemon's own WAL state and the archive_status directory. None of it
needs PostgreSQL to be up: while it is, the server lists the directories in the
built-in statement's round trip (``from_row``), which spares a worker thread per scrape;
otherwise ``scan`` reads them.
"""

from __future__ import annotations

import collections
import collections.abc
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instance_manager.metrics.builtin import P
from instance_manager.metrics.exposition import Family, gauge
from instance_manager.state import InstanceState

_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
RATE_WINDOW = 300.0  # seconds of history behind the archive rate
RATE_STEP = 1.0  # at most one sample a second, however often we are scraped
A = P + "wal_archive_"


@dataclass(frozen=True)
class WalDirectory:
    segments: int  # files named like a WAL segment in pg_wal
    ready: int
    done: int
    ready_bytes: int  # size of the files waiting to be archived
    oldest_ready: float | None  # mtime of the oldest .ready marker


def scan(pgdata: Path) -> WalDirectory:
    """Read pg_wal and pg_wal/archive_status; blocking, so run it in a worker thread."""
    pg_wal = pgdata / "pg_wal"
    with os.scandir(pg_wal) as entries:
        segments = sum(1 for e in entries if _SEGMENT.match(e.name))
    ready = done = ready_bytes = 0
    oldest: float | None = None
    with os.scandir(pg_wal / "archive_status") as entries:
        for entry in entries:
            if entry.name.endswith(".done"):
                done += 1
            elif entry.name.endswith(".ready"):
                ready += 1
                try:
                    mtime = entry.stat().st_mtime
                    ready_bytes += (pg_wal / entry.name[: -len(".ready")]).stat().st_size
                except FileNotFoundError:
                    continue  # archived (or recycled) while we looked
                oldest = mtime if oldest is None else min(oldest, mtime)
    return WalDirectory(segments, ready, done, ready_bytes, oldest)


def from_row(row: tuple[Any, ...]) -> WalDirectory:
    """``scan``'s figures from the row of builtin.WAL_DIRECTORY."""
    segments, ready, done, ready_bytes, oldest = row
    return WalDirectory(
        int(segments), int(ready), int(done), int(ready_bytes),
        None if oldest is None else float(oldest),
    )  # fmt: skip


class ArchiveRate:
    """Segments archived per second over the last RATE_WINDOW, from the archived count."""

    def __init__(self, clock: collections.abc.Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def observe(self, archived: int) -> float:
        now = self.clock()
        samples = self._samples
        if len(samples) > 1 and now - samples[-2][0] < RATE_STEP:
            samples.pop()  # keep the newest of close samples: the window stays short
        samples.append((now, archived))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        start, first = samples[0]
        if archived < first:  # counter reset (a new daemon state): start again
            samples.clear()
            samples.append((now, archived))
            return 0.0
        return (archived - first) / (now - start) if now > start else 0.0


def status_families(wal: WalDirectory | None) -> list[Family]:
    status = Family(
        P + "pg_wal_archive_status",
        "Number of WAL segments in the 'pg_wal/archive_status' directory (ready, done)",
        "gauge",
    )
    if wal is not None:
        status.add((("value", "ready"),), float(wal.ready))
        status.add((("value", "done"),), float(wal.done))
    return [status]


def pg_wal_family(
    wal: WalDirectory | None, segment_size: int, settings: dict[str, float] | None
) -> Family:
    family = Family(
        P + "pg_wal",
        "Segments in pg_wal (count, size in bytes); min/max_wal_size, wal_keep_size and "
        "max_slot_wal_keep_size in segments; the WAL volume's size in bytes and segments",
        "gauge",
    )
    if wal is not None:
        family.add((("value", "count"),), float(wal.segments))
        family.add((("value", "size"),), float(wal.segments * segment_size))
    for key, value in (settings or {}).items():
        family.add((("value", key),), value)
    return family


_GAUGES = {
    "backlog_segments": "WAL files waiting to be archived (.ready markers)",
    "backlog_bytes": "Bytes of WAL waiting to be archived",
    "oldest_ready_age_seconds": "Age of the oldest WAL file waiting to be archived (0: none)",
    "last_archived_timestamp_seconds": "When the daemon last archived a WAL file (0: never)",
    "last_failed_timestamp_seconds": "When archiving a WAL file last failed (0: never)",
    "rate_segments_per_second": f"WAL files archived per second over the last {RATE_WINDOW:.0f} s",
    "rate_bytes_per_second": f"Bytes of WAL archived per second over the last {RATE_WINDOW:.0f} s",
}
_COUNTERS = {
    "archived_total": "WAL files archived by the daemon since it started",
    "archived_ahead_total": "Of which archived ahead of PostgreSQL's request (look-ahead)",
    "failed_total": "Failed attempts to archive a WAL file since the daemon started",
}
NAMES = tuple(A + n for n in (*_GAUGES, *_COUNTERS))


def visibility_families(
    wal: WalDirectory | None, state: InstanceState, rate: ArchiveRate
) -> list[Family]:
    w = state.wal
    oldest_age = 0.0
    if wal is not None and wal.oldest_ready is not None:
        oldest_age = max(0.0, time.time() - wal.oldest_ready)
    per_second = rate.observe(w.archived_count)
    values = {
        "backlog_segments": float(wal.ready if wal is not None else w.ready_wal_files),
        "backlog_bytes": float(wal.ready_bytes) if wal is not None else math.nan,
        "oldest_ready_age_seconds": oldest_age,
        "last_archived_timestamp_seconds": w.last_archived_time or 0.0,
        "last_failed_timestamp_seconds": w.last_failed_time or 0.0,
        "rate_segments_per_second": per_second,
        "rate_bytes_per_second": per_second * state.wal_segment_size,
    }
    out = [gauge(A + name, _GAUGES[name], value) for name, value in values.items()]
    counts = {
        "archived_total": w.archived_count,
        "archived_ahead_total": w.archived_ahead,
        "failed_total": w.failed_count,
    }
    for name, count in counts.items():
        family = Family(A + name, _COUNTERS[name], "counter")
        family.add((), float(count))
        out.append(family)
    return out
