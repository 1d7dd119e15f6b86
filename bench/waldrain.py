"""The backlog drain of bench/wal.py: how fast each archive_command empties a backlog.

Nothing writes WAL while a backlog drains. To build one, PostgreSQL's archiver is held on
a FIFO: ``archive_command`` is set (``ALTER SYSTEM``, reload) to ``cat FIFO``, which
blocks on the first segment while N more are produced. Then ``archive_command`` is set to
the command measured, and the FIFO is opened and closed: ``cat`` exits 0, the archiver
reads its new setting before the next file (PostgreSQL checks for a reload before each
one) and archives the rest with it. While the backlog is built, ``wal_init_zero`` is off:
a backlog cannot reuse old segments, and zero-filling 16 MiB new ones is slow to no
purpose here. The drain time runs from that release until no
``.ready`` file is left; every command measured drains the same backlog on the same
PGDATA, under the same running daemon.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from harness import BenchError, Layout, give_to_postgres, wait_until
from pgctl import as_postgres
from psycopg import sql
from walkit import archiver_counts, connect, ready_count

STANZA = "bench"


@dataclass(frozen=True)
class Drain:
    """One drain: ``segments`` .ready files at the release, empty ``seconds`` later."""

    segments: int
    seconds: float
    failed: int  # pg_stat_archiver.failed_count delta

    @property
    def rate(self) -> float:
        return self.segments / self.seconds

    @property
    def per_segment_ms(self) -> float:
        return self.seconds / self.segments * 1000

    def line(self) -> str:
        return (
            f"{self.segments} segments in {self.seconds:.3f} s = {self.rate:.1f} seg/s, "
            f"{self.per_segment_ms:.2f} ms each ({self.failed} archive failures)"
        )


class Hold:
    """A FIFO that ``cat`` blocks on: PostgreSQL's archiver held on one segment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path, 0o600)
        give_to_postgres(path)

    @property
    def command(self) -> str:
        return f"cat {self.path} > /dev/null"

    def holding(self) -> bool:
        """Some process (the archiver's shell or its cat) has the FIFO on its command line."""
        needle = str(self.path).encode()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        if needle in f.read():
                            return True
                except OSError:
                    continue
        return False

    def release(self) -> bool:
        """Open and close the writing end: the blocked cat reads EOF and exits 0."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return False
            raise
        os.close(fd)
        return True


def set_archive_command(port: int, command: str | None) -> None:
    """``ALTER SYSTEM`` (None: RESET, back to the daemon's own), reloaded everywhere."""
    set_parameter(port, "archive_command", command)


def set_parameter(port: int, name: str, value: str | None) -> None:
    """``ALTER SYSTEM SET name`` (None: RESET), reloaded everywhere.

    The postmaster signals its children in the handler that re-reads the files and forks
    nothing meanwhile, so a backend that sees the new load time comes after the signal
    to the archiver."""
    with connect(port) as conn:
        before = _load_time(conn)
        if value is None:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
        else:
            statement = sql.SQL("ALTER SYSTEM SET {} = {}")
            conn.execute(statement.format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")

    def reloaded() -> bool:
        with connect(port) as fresh:
            return bool(_load_time(fresh) != before)

    wait_until(reloaded, 30, "PostgreSQL to reload its configuration")


def _load_time(conn: psycopg.Connection[Any]) -> Any:
    row = conn.execute("SELECT pg_conf_load_time()").fetchone()
    assert row is not None
    return row[0]


def produce(conn: psycopg.Connection[Any], segments: int) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS w (i int)")
    for _ in range(segments):
        conn.execute("INSERT INTO w VALUES (1); SELECT pg_switch_wal()")


def drain(lay: Layout, hold: Hold, command: str | None, segments: int) -> Drain:
    """Build a backlog of ``segments`` (+1 held), then time ``command`` emptying it."""
    pgdata, port = lay.pgdata, lay.pg_port
    wait_until(lambda: ready_count(pgdata) == 0, 120, "an empty archive backlog")
    set_archive_command(port, hold.command)
    with connect(port) as conn:
        produce(conn, segments + 1)
        wait_until(hold.holding, 30, "the archiver to block on the FIFO")
        set_archive_command(port, command)
        archived0, failed0 = archiver_counts(conn)
        backlog = ready_count(pgdata)  # the held segment is still .ready
        started = time.perf_counter()
        wait_until(hold.release, 10, "the archiver's cat to open the FIFO", step=0.001)
        wait_until(lambda: ready_count(pgdata) == 0, 600, "the backlog to drain", step=0.002)
        seconds = time.perf_counter() - started

        def counted() -> tuple[int, int] | None:
            counts = archiver_counts(conn)  # .ready is renamed before the counter moves
            return counts if counts[0] - archived0 >= backlog else None

        archived, failed = wait_until(counted, 5, "pg_stat_archiver to count the segments")
    if archived - archived0 != backlog:
        raise BenchError(f"{archived - archived0} segments archived, {backlog} expected")
    return Drain(backlog, seconds, failed - failed0)


class PgBackRest:
    """``pgbackrest archive-push`` into the cheapest repository it has: a local directory,
    no compression, emptied after every drain (nothing is kept)."""

    def __init__(self, top: Path, lay: Layout) -> None:
        self.root = top / "pgbr"
        self.lay = lay
        self.conf = self.root / "pgbackrest.conf"

    @property
    def command(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"

    def setup(self) -> None:
        """The configuration and the stanza (PostgreSQL must be running)."""
        for sub in ("repo", "lock", "log", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"[global]\nrepo1-path={self.root / 'repo'}\nlock-path={self.root / 'lock'}\n"
            f"log-path={self.root / 'log'}\nspool-path={self.root / 'spool'}\n"
            "log-level-console=warn\nlog-level-file=off\ncompress-type=none\n\n"
            f"[{STANZA}]\npg1-path={self.lay.pgdata}\npg1-port={self.lay.pg_port}\n"
            f"pg1-socket-path={self.lay.run_dir}\npg1-user=postgres\n"
        )
        for path in (self.root, *self.root.rglob("*")):
            give_to_postgres(path)
        argv = as_postgres("pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}")
        done = subprocess.run([*argv, "stanza-create"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"pgbackrest stanza-create failed:\n{done.stdout}{done.stderr}")

    def empty(self) -> None:
        """Remove the archived segments (archive.info stays)."""
        for timeline_dir in (self.root / "repo" / "archive" / STANZA).glob("*-*/*"):
            if timeline_dir.is_dir():
                shutil.rmtree(timeline_dir)
