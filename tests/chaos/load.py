"""What runs beside the faults: one writer pinned to each instance, WAL switches, RSS samples.

A ``PinnedWriter`` inserts into ``chaos_rows`` on one instance only, over its Unix socket, so
it keeps reaching that instance through a network cut, as a client on the same host would. A
standby refuses (read-only); the primary accepts, and each row carries the tag the server
gives it: its ``port`` (which instance) and the timeline its WAL is inserted on. The writer
records every acknowledged commit with the client's monotonic clock before sending and after
the acknowledgement; a commit whose outcome is unknown is never retried under the same id.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.chaos.cluster import ChaosTrio
from tests.cluster_kit import NAMES

CREATE = (
    "CREATE TABLE IF NOT EXISTS chaos_rows (txid bigint PRIMARY KEY, port int NOT NULL,"
    " tli text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
INSERT = (
    "INSERT INTO chaos_rows (txid, port, tli) VALUES (%s, current_setting('port')::int,"
    " substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))"
)
SWITCH = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_switch_wal()) END"


@dataclass(frozen=True)
class Ack:
    txid: int
    writer: str
    sent: float  # time.monotonic() before the INSERT was sent
    acked: float  # time.monotonic() once the commit was acknowledged


class PinnedWriter:
    def __init__(self, trio: ChaosTrio, name: str, stop: threading.Event, pace: float) -> None:
        self.trio, self.name, self.stop, self.pace = trio, name, stop, pace
        self.acks: list[Ack] = []
        self.refused = 0  # statements a standby or a failing primary refused
        self.unknown = 0  # commits whose outcome is unknown (connection lost mid-statement)
        self.next_id = (NAMES.index(name) + 1) * 10**9
        self.thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            if conn is None or conn.closed or conn.broken:
                try:
                    conn = self.trio.connect(self.name, 2)
                except psycopg.Error:
                    conn = None
                    self.stop.wait(0.2)
                    continue
            txid, self.next_id = self.next_id, self.next_id + 1
            sent = time.monotonic()
            try:
                conn.execute(INSERT, [txid])
            except psycopg.Error:
                if conn.broken:
                    self.unknown += 1
                else:
                    self.refused += 1
                self.stop.wait(0.2)
                continue
            self.acks.append(Ack(txid, self.name, sent, time.monotonic()))
            self.stop.wait(self.pace)
        if conn is not None:
            conn.close()


@dataclass
class WalSwitcher:
    """``pg_switch_wal()`` every ``interval`` seconds on whichever instance is writable."""

    trio: ChaosTrio
    stop: threading.Event
    interval: float
    switched: list[str] = field(default_factory=list)

    def run(self) -> None:
        conns: dict[str, psycopg.Connection[Any]] = {}
        while not self.stop.wait(self.interval):
            for name in NAMES:
                conn = conns.get(name)
                try:
                    if conn is None or conn.broken or conn.closed:
                        conn = conns[name] = self.trio.connect(name, 2)
                    row = conn.execute(SWITCH).fetchone()
                except psycopg.Error:
                    conns.pop(name, None)
                    continue
                if row and row[0]:
                    self.switched.append(str(row[0]))
        for conn in conns.values():
            conn.close()


_RSS = re.compile(r"^VmRSS:\s+(\d+) kB", re.M)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            found = _RSS.search(handle.read())
    except OSError:
        return None
    return int(found.group(1)) if found else None


@dataclass
class RssSampler:
    """VmRSS of every daemon every ``interval`` s; a daemon's baseline is its first sample
    taken ``warmup`` s or more after it was started (restarted daemons from their restart)."""

    trio: ChaosTrio
    stop: threading.Event
    warmup: float
    interval: float = 5.0
    baseline: dict[int, tuple[str, int, float]] = field(default_factory=dict)  # pod, KiB, when
    last: dict[int, tuple[int, float]] = field(default_factory=dict)  # pid -> KiB, when

    def sample(self) -> None:
        now = time.monotonic()
        for name, daemon, started in list(self.trio.started_at):
            pid = daemon.proc.pid
            if daemon.proc.poll() is not None or now - started < self.warmup:
                continue
            kib = rss_kib(pid)
            if kib is None:
                continue
            self.baseline.setdefault(pid, (name, kib, now))
            self.last[pid] = (kib, now)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def growth(self) -> list[tuple[str, int, int, int, float, float]]:
        """(pod, pid, baseline KiB, last KiB, growth %, seconds between the two samples)
        for every daemon with a baseline."""
        out = []
        for pid, (name, base, since) in sorted(self.baseline.items()):
            last, until = self.last.get(pid, (base, since))
            out.append((name, pid, base, last, 100.0 * (last - base) / base, until - since))
        return out
