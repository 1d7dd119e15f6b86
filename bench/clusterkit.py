"""What both sides of bench/cluster.py share: the writing client, SQL probes, references.

The client writes one row per transaction through one connection to whichever instance is
the primary: on any error it drops the connection and connects again, trying the instances
in order (``target_session_attrs=read-write``, a short ``connect_timeout``). Every attempt
is timed, so the write-unavailability window of a switchover and the time until a new
primary takes writes after a failover are read off the client's own record.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from harness import PG_BIN, BenchError, chown_tree, wait_until
from pgctl import as_postgres

TABLE = "bench_writes"
PAUSE_AFTER_FAILURE = 0.005  # seconds between two attempts when no instance takes writes
STATEMENT_TIMEOUT_MS = 5000
RECEIVER_SQL = "SELECT status FROM pg_stat_wal_receiver"


def dsn(port: int, **extra: str | int) -> str:
    """libpq conninfo for the postgres superuser over TCP on 127.0.0.1 (trusted by pg_hba)."""
    parts = {"host": "127.0.0.1", "port": port, "user": "postgres", "dbname": "postgres"}
    parts.update(extra)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def query(port: int, sql: str, timeout: int = 3) -> list[tuple[object, ...]]:
    """Rows of one statement on a new connection; BenchError-free: raises psycopg.Error."""
    with psycopg.connect(dsn(port, connect_timeout=timeout), autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def in_recovery(port: int) -> bool | None:
    """pg_is_in_recovery() of the instance on ``port``; None when it does not answer."""
    try:
        return bool(query(port, "SELECT pg_is_in_recovery()", 2)[0][0])
    except psycopg.Error:
        return None


def streaming_standbys(port: int) -> set[str]:
    """application_name of every standby streaming from the primary on ``port``."""
    try:
        rows = query(
            port, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        )
    except psycopg.Error:
        return set()
    return {str(r[0]) for r in rows}


def receiving(port: int) -> bool:
    """The instance on ``port`` is a standby whose WAL receiver is streaming.

    Asked of the standby itself: pg_basebackup's own WAL stream carries the standby's
    application_name while the copy runs, so the primary's pg_stat_replication cannot
    tell a clone in progress from a standby that streams.
    """
    try:
        rows = query(port, RECEIVER_SQL, 2)
    except psycopg.Error:
        return False
    return bool(rows) and rows[0][0] == "streaming"


def primaries(ports: dict[str, int]) -> list[str]:
    """Members whose PostgreSQL answers and is not in recovery."""
    return [name for name, port in ports.items() if in_recovery(port) is False]


def wait_streaming(ports: dict[str, int], timeout: float, check: Callable[[], None]) -> str:
    """Wait for one primary with every other member streaming from it; its name.

    ``check`` is called on every poll and raises when waiting longer is pointless.
    """

    def healthy() -> str | None:
        check()
        found = primaries(ports)
        if len(found) != 1:
            return None
        others = set(ports) - set(found)
        if not others <= streaming_standbys(ports[found[0]]):
            return None
        return found[0] if all(receiving(ports[name]) for name in others) else None

    return str(wait_until(healthy, timeout, "one primary and every standby streaming", 0.05))


def wait_member_streaming(port: int, timeout: float, step: float) -> float:
    """perf_counter() at which the standby on ``port`` first reports its WAL streaming.

    Asked every ``step`` seconds on one connection, opened again only after an error
    (refused at once while no postmaster listens).
    """
    deadline = time.monotonic() + timeout
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    try:
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = psycopg.connect(dsn(port, connect_timeout=2), autocommit=True)
                rows = conn.execute(RECEIVER_SQL).fetchall()
                if rows and rows[0][0] == "streaming":
                    return time.perf_counter()
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(step)
    finally:
        if conn is not None:
            conn.close()
    raise BenchError(f"timed out after {timeout:g} s waiting for the standby on {port} to stream")


def prepare_data(port: int, scale: int) -> None:
    """The client's table, and pgbench tables of ``scale`` (data for the join figures)."""
    query(
        port,
        f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
    )
    argv = [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), dsn(port)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"pgbench -i failed:\n{done.stderr[-2000:]}")
    query(port, "CHECKPOINT")


def dirty_pages(port: int) -> None:
    """Touch every page of pgbench_accounts, as a primary under load has dirty buffers.

    Done before each copy, ours and the reference alike: the checkpoint that starts a base
    backup then has data to write, which ``-c fast`` writes at once and the default
    (spread) checkpoint paces over ``checkpoint_completion_target``.
    """
    query(port, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0", 10)


def database_mb(port: int) -> float:
    rows = query(port, "SELECT sum(pg_database_size(oid)) FROM pg_database")
    return float(rows[0][0] or 0) / 1e6  # type: ignore[arg-type]


def pg_basebackup_seconds(port: int, target: Path) -> float:
    """Wall time of ``pg_basebackup`` by hand, as postgres, of the primary on ``port``."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    chown_tree(target)
    argv = as_postgres(str(PG_BIN / "pg_basebackup"), "-d", dsn(port), "-D", str(target))
    argv += ["-X", "stream", "-c", "fast"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"pg_basebackup failed:\n{done.stderr[-2000:]}")
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


# -- the writing client ------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One write: connect if needed, then INSERT one row (autocommit)."""

    started: float  # perf_counter()
    ended: float
    ok: bool
    row: int


@dataclass
class Writer:
    """A thread writing one row per transaction to whichever member is the primary."""

    ports: Sequence[int]
    attempts: list[Attempt] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _next_row: int = 1

    def conninfo(self) -> str:
        hosts = ",".join("127.0.0.1" for _ in self.ports)
        ports = ",".join(str(p) for p in self.ports)
        options = f"'-c statement_timeout={STATEMENT_TIMEOUT_MS}'"
        return (
            f"host={hosts} port={ports} user=postgres dbname=postgres connect_timeout=2 "
            f"target_session_attrs=read-write options={options} application_name=bench-writer"
        )

    def start(self, first_row: int) -> None:
        self._next_row = first_row
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        info = self.conninfo()
        while not self._stop.is_set():
            row, started = self._next_row, time.perf_counter()
            try:
                if conn is None:
                    conn = psycopg.connect(info, autocommit=True)
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (row,))
            except psycopg.Error as exc:
                self.attempts.append(Attempt(started, time.perf_counter(), False, row))
                self.error = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
                self._stop.wait(PAUSE_AFTER_FAILURE)
                continue
            self.attempts.append(Attempt(started, time.perf_counter(), True, row))
            self.acked.append(row)
            self._next_row += 1
        if conn is not None:
            conn.close()

    def successes_after(self, moment: float) -> int:
        return sum(1 for a in self.attempts[-2000:] if a.ok and a.started >= moment)

    def wait_writes_after(self, moment: float, count: int, timeout: float) -> None:
        """Wait until ``count`` writes begun after ``moment`` were acknowledged."""
        wait_until(
            lambda: self.successes_after(moment) >= count,
            timeout,
            f"{count} acknowledged writes (last error: {self.error or 'none'})",
        )


@dataclass(frozen=True)
class Outage:
    """What the client saw from ``since`` on."""

    window: float  # first failed write (its start) -> first acknowledged write after it
    first_ok: float  # seconds from ``since`` to the first write acknowledged after a failure
    longest_gap: float  # longest time between two acknowledgements
    failed: int  # failed attempts


def outage(attempts: Sequence[Attempt], since: float, until: float) -> Outage:
    """The client's record between ``since`` and ``until`` (perf_counter() values)."""
    seen = [a for a in attempts if since <= a.started <= until]
    failures = [a for a in seen if not a.ok]
    acks = [a.ended for a in attempts if a.ok and a.ended >= since and a.started <= until]
    gaps = [b - a for a, b in zip([since, *acks], acks, strict=False)]
    if not failures:
        return Outage(0.0, 0.0, max(gaps, default=0.0), 0)
    first_fail = failures[0].started
    after = [a.ended for a in seen if a.ok and a.started > first_fail]
    if not after:
        raise BenchError("the client never wrote again after its first failure")
    return Outage(after[0] - first_fail, after[0] - since, max(gaps, default=0.0), len(failures))


def lost_rows(port: int, acked: Sequence[int]) -> int:
    """Acknowledged rows that the primary on ``port`` does not have.

    The rows acknowledged so far are copied before the query: a row the client gets
    acknowledged while the query runs is not counted as missing.
    """
    acked = list(acked)
    present = {int(r[0]) for r in query(port, f"SELECT id FROM {TABLE}", 10)}  # type: ignore[call-overload]
    return sum(1 for row in acked if row not in present)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
