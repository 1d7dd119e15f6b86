"""Pieces of bench/wal.py: the fake plugin, SQL, WAL production, timing of commands.

Nothing here decides what is measured; wal.py does.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from harness import REPO, BenchError, Daemon, Layout, Processes, stop_process, wait_until
from pgctl import pg_log_time

PLUGIN = "fake.example.io"
PYTHON = os.path.realpath(sys.executable)  # the interpreter that runs SCRATCH/bin/manager.pyc
SEGMENT_MB = 16  # initdb --wal-segsize: PostgreSQL's default, as the floor (~90 segments/s)


def cluster_yaml(max_parallel: int) -> str:
    return f"""\
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {{name: bench}}
spec:
  bootstrap: {{initdb: {{walSegmentSize: {SEGMENT_MB}}}}}
  plugins: [{{name: {PLUGIN}, isWALArchiver: true}}]
  wal: {{maxParallel: {max_parallel}}}
  postgresql:
    enableAlterSystem: true  # the drain figure switches archive_command with ALTER SYSTEM
    pg_hba: ["host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
"""


def manager_argv(lay: Layout, *args: str) -> list[str]:
    """The per-segment client as PostgreSQL's commands run it: the compiled copy the
    daemon installed, on the interpreter that compiled it (postgres/config.wal_client)."""
    return [PYTHON, "-IS", str(lay.scratch / "bin" / "manager.pyc"), *args]


def archive_command(lay: Layout, path: Path) -> str:
    """The running PostgreSQL's archive_command for the WAL file ``path``, as its archiver
    hands it to /bin/sh: the marker test in the shell, then the client."""
    with connect(lay.pg_port) as conn:
        command = str(conn.execute("SHOW archive_command").fetchone()[0])  # type: ignore[index]
    return command.replace("%f", path.name).replace("%p", str(path))


def spool_marker(lay: Layout, name: str) -> Path:
    """The marker the daemon leaves for a segment archived ahead (settings.archive_spool)."""
    return lay.scratch / "wal-archive-spool" / name


# -- the fake plugin ----------------------------------------------------------------------


class Plugin:
    """``python -m tests.fake_plugin``, restarted with another storage or latency as needed."""

    def __init__(self, procs: Processes, socket_dir: Path, log: Path) -> None:
        self.procs = procs
        self.socket_dir = socket_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.socket_dir / PLUGIN

    def start(self, storage: Path, latency: float, discard: bool = False) -> None:
        """``discard``: a no-op plugin that answers OK without storing the segment."""
        self.stop()
        argv = [sys.executable, "-m", "tests.fake_plugin", "--socket-dir", str(self.socket_dir)]
        argv += ["--storage", str(storage), "--name", PLUGIN, "--latency", str(latency)]
        argv += ["--discard"] if discard else []
        with open(self.log, "ab") as out:
            self.proc = self.procs.popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._usable, 30, "the fake plugin's socket")

    def _usable(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"the fake plugin exited {self.proc.returncode}; see {self.log}")
        try:
            mode = self.socket.stat().st_mode
        except FileNotFoundError:
            return False
        # It is chmod'ed 0777 after the bind, for the daemon that runs as postgres.
        return stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o777

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


# -- SQL, WAL -------------------------------------------------------------------------------


def connect(port: int, timeout: int = 5) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
        autocommit=True,
        connect_timeout=timeout,
    )


def archiver_counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(archived_count, failed_count) of pg_stat_archiver."""
    row = conn.execute("SELECT archived_count, failed_count FROM pg_stat_archiver").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def ready_count(pgdata: Path) -> int:
    """Segments waiting for archive_command: the .ready files."""
    status = pgdata / "pg_wal" / "archive_status"
    return sum(1 for e in os.scandir(status) if e.name.endswith(".ready"))


def produce(conn: psycopg.Connection[Any], segments: int, deadline: float) -> int:
    """A tiny insert and a WAL switch, ``segments`` times or until ``deadline``."""
    conn.execute("CREATE TABLE IF NOT EXISTS w (i int)")
    for n in range(segments):
        conn.execute("INSERT INTO w VALUES (1); SELECT pg_switch_wal()")
        if time.perf_counter() >= deadline:
            return n + 1
    return segments


@dataclass(frozen=True)
class Window:
    """One archive-rate window: production from t0, the backlog empty at ``total_s``."""

    produced: int
    archived: int  # archived_count delta
    failed: int  # failed_count delta
    produce_s: float
    total_s: float

    @property
    def rate(self) -> float:
        return self.archived / self.total_s

    @property
    def production_rate(self) -> float:
        return self.produced / self.produce_s

    def line(self) -> str:
        return (
            f"{self.archived} segments archived in {self.total_s:.2f} s = {self.rate:.1f}/s "
            f"(produced {self.produced} at {self.production_rate:.0f}/s, "
            f"{self.failed} archive failures)"
        )


def archive_window(pgdata: Path, port: int, segments: int, max_seconds: float) -> Window:
    """Produce WAL as fast as one session can; time until every segment is archived."""
    wait_until(lambda: ready_count(pgdata) == 0, 120, "an empty archive backlog")
    with connect(port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS w (i int)")
        archived0, failed0 = archiver_counts(conn)
        started = time.perf_counter()
        produced = produce(conn, segments, started + max_seconds)
        produced_at = time.perf_counter()
        wait_until(lambda: ready_count(pgdata) == 0, 300, "the archive backlog", step=0.002)
        drained_at = time.perf_counter()

        def counted() -> tuple[int, int] | None:
            # The .ready file is renamed a moment before the counter moves.
            counts = archiver_counts(conn)
            return counts if counts[0] - archived0 >= produced else None

        archived, failed = wait_until(counted, 5, "pg_stat_archiver to count the segments")
    return Window(
        produced,
        archived - archived0,
        failed - failed0,
        produced_at - started,
        drained_at - started,
    )


def promotion_time(daemon: Daemon, port: int, timeout: float) -> float:
    """Seconds from the daemon's launch until ``pg_is_in_recovery()`` is false."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        daemon.check_alive()
        try:
            with connect(port, 2) as conn:
                while time.perf_counter() < deadline:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        return time.perf_counter() - daemon.launched
                    time.sleep(0.01)
        except psycopg.OperationalError:
            time.sleep(0.01)  # not accepting connections yet
    raise BenchError(f"not promoted within {timeout:g} s:\n{daemon.tail()}")


@dataclass(frozen=True)
class Restored:
    """What PostgreSQL logged as restored: how many files, first and last (s after launch)."""

    files: int
    first_s: float
    last_s: float

    @property
    def span_rate(self) -> float:
        """Files per second between the first and the last, start-up and promotion aside."""
        return (self.files - 1) / (self.last_s - self.first_s) if self.files > 1 else 0.0


def restored_files(daemon: Daemon) -> Restored:
    """PostgreSQL's "restored log file" records, through the daemon's log."""
    times = []
    for line in daemon.events():
        record = line.get("record")
        if isinstance(record, dict) and str(record.get("message", "")).startswith("restored log"):
            times.append(pg_log_time(str(record["log_time"])) - daemon.launched_wall)
    if not times:
        raise BenchError(f"PostgreSQL restored nothing:\n{daemon.tail()}")
    return Restored(len(times), min(times), max(times))


# -- timing commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class CallTime:
    median_ms: float
    mean_ms: float
    stddev_ms: float
    min_ms: float
    runs: int
    tool: str


Prepare = dict[str, list[str]]  # command name -> what runs before each of its runs


def time_commands(
    commands: dict[str, list[str]], runs: int, out: Path, prepare: Prepare | None = None
) -> dict[str, CallTime]:
    """Wall time per run of each command: hyperfine when present, else a loop here.
    ``prepare`` runs (untimed) before each run of the commands it names."""
    prepare = prepare or {}
    if shutil.which("hyperfine"):
        return _hyperfine(commands, runs, out, prepare)
    return {name: _by_hand(argv, runs, prepare.get(name)) for name, argv in commands.items()}


HYPERFINE_ROUNDS = 5  # the runs of every command are spread over this many rounds


def _hyperfine(
    commands: dict[str, list[str]], runs: int, out: Path, prepare: Prepare
) -> dict[str, CallTime]:
    """hyperfine in rounds, each running every command: a busy spell of the machine
    falls on all of them, not on whichever command it was timing then."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    per_round = max(2, runs // HYPERFINE_ROUNDS)
    for n in range(HYPERFINE_ROUNDS):
        argv = ["hyperfine", "--shell=none", "--style", "none", "--warmup", "20" if n == 0 else "3"]
        argv += ["--runs", str(per_round), "--export-json", str(out)]
        if prepare:  # once per command, in order: /bin/true where none is asked for
            for name in commands:
                argv += ["--prepare", shlex.join(prepare.get(name, ["/bin/true"]))]
        for name, command in commands.items():
            argv += ["--command-name", name, shlex.join(command)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise BenchError(f"hyperfine failed:\n{done.stdout}{done.stderr}")
        for result in json.loads(out.read_text())["results"]:
            times[result["command"]] += [t * 1000 for t in result["times"]]
    return {
        name: _call_time(t, f"hyperfine, {HYPERFINE_ROUNDS} rounds") for name, t in times.items()
    }


def _call_time(times: list[float], tool: str) -> CallTime:
    return CallTime(
        statistics.median(times),
        statistics.fmean(times),
        statistics.stdev(times),
        min(times),
        len(times),
        tool,
    )


def _by_hand(argv: list[str], runs: int, prepare: list[str] | None) -> CallTime:
    def once() -> float:
        if prepare:
            subprocess.run(prepare, check=True)
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (time.perf_counter() - started) * 1000

    for _ in range(20):
        once()
    times = [once() for _ in range(runs)]
    return _call_time(times, "subprocess.run loop (no hyperfine)")


RUSAGE_PROBE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_kb(argv: list[str], runs: int = 5) -> tuple[int, str]:
    """The largest peak RSS (KiB) of ``runs`` runs, and how it was measured."""
    peaks = []
    for _ in range(runs):
        if os.access("/usr/bin/time", os.X_OK):
            probe, tool = ["/usr/bin/time", "-f", "%M", *argv], "/usr/bin/time -f %M"
        else:
            probe, tool = [PYTHON, "-I", "-S", "-c", RUSAGE_PROBE, *argv], "getrusage"
        done = subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60)
        output = done.stderr if tool.startswith("/usr") else done.stdout
        peaks.append(int(output.split()[-1]))
    return max(peaks), tool


def round_trip_ms(sock: Path, path: Path, runs: int, marker: Path | None = None) -> float:
    """Median time of one archive request straight on the daemon's socket (no new process);
    with ``marker``, that marker is left before each request (a segment archived ahead)."""
    request = f"archive\0{path}\n".encode()  # thin.py's protocol
    times = []
    for _ in range(runs + 5):
        if marker is not None:
            marker.touch()
        started = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(sock))
            conn.sendall(request)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
        times.append((time.perf_counter() - started) * 1000)
        if reply != b"ok\n":
            raise BenchError(f"archive of {path} through {sock} failed: {reply!r}")
    return statistics.median(times[5:])
