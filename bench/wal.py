"""WAL archiving and restore through the daemon, each figure against a reference in one run.

    .venv/bin/python bench/wal.py [--quick]

Run as root, like bench/foundation.py. A fake CNPG-I plugin (tests/fake_plugin.py) stands
in for the object store. Everything lives under one short directory in /tmp, removed at
the end; every process started here is stopped, even on error. Exit status: 0 all targets
met, 1 a target missed, 2 the benchmark itself failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from harness import PG_BIN, Daemon, Layout, Row, Session, chown_tree, prepare_pgdata, run_bench
from pgctl import as_postgres, pg_ctl_start, pg_ctl_stop
from walkit import (
    PYTHON,
    SEGMENT_MB,
    CallTime,
    Plugin,
    Restored,
    Window,
    archive_window,
    cluster_yaml,
    peak_rss_kb,
    promotion_time,
    restored_files,
    round_trip_ms,
    thin_argv,
    time_commands,
)

THIN_IMPORTS = "import _socket, posix, sys"  # what thin.py imports
WARM_UP_SEGMENTS = 40  # past wal_keep_size (CloudNativePG's 512MB = 32 segments of 16 MiB)
SLOW_PLUGIN = 0.1  # seconds per Archive call: a realistic upload
RESTORE_PLUGIN = 0.05  # seconds per Restore call


@dataclass(frozen=True)
class Config:
    calls: int  # runs per command for the per-call figure
    rounds: int  # archive-rate windows per side at latency 0
    segments: int  # WAL segments per window at latency 0 (or max_seconds)
    slow_segments: int  # per window with the slow plugin
    restore_segments: int  # archived after the base backup, then restored
    max_seconds: float = 10.0  # production stops here even if short of the segments


def make_config(quick: bool) -> Config:
    if quick:
        return Config(calls=60, rounds=1, segments=60, slow_segments=30, restore_segments=30)
    return Config(calls=300, rounds=3, segments=200, slow_segments=100, restore_segments=100)


@dataclass
class Bench:
    cfg: Config
    session: Session
    top: Path
    primary: Layout
    plugin: Plugin
    started: int = 0

    def daemon(self, lay: Layout, max_parallel: int) -> Daemon:
        """The daemon on ``lay`` with ``wal.maxParallel``, ready and done with its start."""
        lay.write_config(cluster_yaml(max_parallel))
        self.started += 1
        daemon = Daemon(lay, self.session.procs, f"{self.started}-mp{max_parallel}")
        daemon.wait_ready(120)
        daemon.wait_log("configuration applied", 60)
        return daemon


def setup(session: Session, cfg: Config) -> Bench:
    top = session.make_root("wb")
    plugins = top / "p"
    primary = session.layout(top / "a", cluster_yaml(1), plugin_dir=plugins)
    plugin = Plugin(session.procs, plugins, top / "plugin.log")
    plugin.start(top / "store", 0, discard=True)  # the no-op plugin of the rate targets
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, dir {top}")
    print(f"Preparing PGDATA (initdb --wal-segsize={SEGMENT_MB}, through the daemon) ...")
    prepare_pgdata(primary, session.procs)
    return Bench(cfg, session, top, primary, plugin)


# -- a, d: the thin client ------------------------------------------------------------------


@dataclass(frozen=True)
class Calls:
    times: dict[str, CallTime]
    rss_kb: dict[str, int]
    rss_tool: str
    round_trip_ms: dict[str, float]


def measure_calls(b: Bench) -> Calls:
    """Per-call time and peak RSS of the thin client, against a running daemon."""
    small_dir = b.primary.pgdata / "pg_wal"  # the daemon archives nothing from elsewhere
    small = small_dir / "000000010000000000000002.00000028.backup"  # a real small WAL file
    small.write_bytes(b"START WAL LOCATION: 0/2000028\n" * 10)
    segment = small_dir / "bench-one-segment"  # not a WAL name: it must not overwrite one
    segment.write_bytes(os.urandom(SEGMENT_MB << 20))
    daemon = b.daemon(b.primary, 1)
    thin = thin_argv("wal-archive", "--socket", str(b.primary.wal_socket), str(small))
    bare = [PYTHON, "-I", "-S", "-c"]
    commands = {"thin": thin, "python": [*bare, "pass"], "imports": [*bare, THIN_IMPORTS]}
    commands["true"] = ["/bin/true"]
    if shutil.which("pgbackrest"):
        commands["pgbackrest"] = ["pgbackrest", "version"]
    print(f"Per call: {', '.join(commands)}, {b.cfg.calls} runs each ...", flush=True)
    times = time_commands(commands, b.cfg.calls, b.top / "hyperfine.json")
    rss = {"thin": peak_rss_kb(thin), "python": peak_rss_kb(commands["python"])}
    trips = {
        "small file": round_trip_ms(b.primary.wal_socket, small, 50),
        f"{SEGMENT_MB} MiB file": round_trip_ms(b.primary.wal_socket, segment, 50),
    }
    daemon.stop_timed()
    small.unlink()
    segment.unlink()
    return Calls(times, {k: v[0] for k, v in rss.items()}, rss["thin"][1], trips)


# -- b, c: archive rates --------------------------------------------------------------------


@dataclass
class Rates:
    ours: list[Window] = field(default_factory=list)  # latency 0, maxParallel 1
    ref: list[Window] = field(default_factory=list)  # archive_command = /bin/true
    ours_mp8: list[Window] = field(default_factory=list)  # latency 0, maxParallel 8
    slow: dict[int, Window] = field(default_factory=dict)  # latency 0.1: maxParallel -> window


def daemon_window(b: Bench, max_parallel: int, segments: int) -> Window:
    daemon = b.daemon(b.primary, max_parallel)
    lay = b.primary
    window = archive_window(lay.pgdata, lay.pg_port, segments, b.cfg.max_seconds)
    daemon.stop_timed()
    return window


def true_window(b: Bench, segments: int = 0, max_seconds: float = 0) -> Window:
    """The reference: the same PGDATA under pg_ctl, archive_command = /bin/true."""
    lay = b.primary
    pg_ctl_start(lay, "archive_mode=on", "archive_command=/bin/true")
    try:
        count, seconds = segments or b.cfg.segments, max_seconds or b.cfg.max_seconds
        return archive_window(lay.pgdata, lay.pg_port, count, seconds)
    finally:
        pg_ctl_stop(lay)


def measure_rates(b: Bench) -> Rates:
    out = Rates()
    print(f"Archive rate, plugin latency 0: {b.cfg.rounds} rounds, ours vs /bin/true", flush=True)
    # Until wal_keep_size (512 MB) is reached, every segment is a new, zero-filled file;
    # from there on, old ones are recycled. Get there first, as a long-lived primary has.
    warm_up = true_window(b, WARM_UP_SEGMENTS, 60)
    print(f"  warm-up, not counted: /bin/true {warm_up.line()}", flush=True)
    for i in range(b.cfg.rounds):
        out.ours.append(daemon_window(b, 1, b.cfg.segments))
        out.ref.append(true_window(b))
        print(f"  round {i + 1}: ours  {out.ours[-1].line()}")
        print(f"  round {i + 1}: /bin/true {out.ref[-1].line()}", flush=True)
    out.ours_mp8.append(daemon_window(b, 8, b.cfg.segments))
    print(f"  maxParallel 8: {out.ours_mp8[-1].line()}")
    print(f"Archive rate, plugin latency {SLOW_PLUGIN} s: maxParallel 1 vs 8", flush=True)
    b.plugin.start(b.top / "store", SLOW_PLUGIN, discard=True)  # pure upload latency
    for max_parallel in (1, 8):
        out.slow[max_parallel] = daemon_window(b, max_parallel, b.cfg.slow_segments)
        print(f"  maxParallel {max_parallel}: {out.slow[max_parallel].line()}", flush=True)
    return out


# -- e: restore -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Restore:
    needed: int  # archived segments from the backup's start on
    seconds: dict[int, float]  # maxParallel -> daemon launch to promotion
    restored: dict[int, Restored]  # maxParallel -> what PostgreSQL restored, when

    def rate(self, max_parallel: int) -> float:
        return self.needed / self.seconds[max_parallel]


def make_backup(b: Bench) -> int:
    """A base backup (no WAL), then WAL archived after it; the segments recovery needs."""
    b.plugin.start(b.top / "store", 0)
    daemon = b.daemon(b.primary, 8)
    lay = b.primary
    base = b.top / "base"
    argv = [str(PG_BIN / "pg_basebackup"), "-D", str(base), "-h", "127.0.0.1"]
    argv += ["-p", str(lay.pg_port), "-U", "postgres", "-X", "none", "-c", "fast"]
    subprocess.run(as_postgres(*argv), check=True, capture_output=True, timeout=300)
    archive_window(lay.pgdata, lay.pg_port, b.cfg.restore_segments, 60)
    daemon.stop_timed()
    label = (base / "backup_label").read_text()
    first = label.split("(file ", 1)[1].split(")", 1)[0]
    return sum(
        1
        for p in (b.top / "store").iterdir()
        if len(p.name) == 24 and p.name.startswith("00000001") and p.name >= first
    )


def restore_once(b: Bench, restored: Layout, max_parallel: int) -> tuple[float, Restored]:
    """Recover a fresh copy of the base backup from a fresh copy of the archive."""
    for stale in (restored.pgdata, restored.scratch, b.top / "store-r"):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.copytree(b.top / "store", b.top / "store-r")
    shutil.copytree(b.top / "base", restored.pgdata, symlinks=True)
    (restored.pgdata / "recovery.signal").touch()
    chown_tree(restored.root)
    b.plugin.start(b.top / "store-r", RESTORE_PLUGIN)
    restored.write_config(cluster_yaml(max_parallel))
    daemon = Daemon(restored, b.session.procs, f"restore-mp{max_parallel}")
    seconds = promotion_time(daemon, restored.pg_port, 600)
    files = restored_files(daemon)
    daemon.stop_timed()
    return seconds, files


def measure_restore(b: Bench) -> Restore:
    print(f"Restore: base backup + {b.cfg.restore_segments} segments ...", flush=True)
    needed = make_backup(b)
    restored = b.session.layout(b.top / "r", cluster_yaml(1), plugin_dir=b.plugin.socket_dir)
    seconds, files = {}, {}
    for max_parallel in (1, 8):
        seconds[max_parallel], files[max_parallel] = restore_once(b, restored, max_parallel)
        print(
            f"  maxParallel {max_parallel}: promoted {seconds[max_parallel]:.2f} s after launch, "
            f"{files[max_parallel].files} files restored, {needed / seconds[max_parallel]:.1f} "
            "seg/s",
            flush=True,
        )
    return Restore(needed, seconds, files)


# -- report ---------------------------------------------------------------------------------


def rate(windows: Sequence[Window]) -> float:
    return statistics.median(w.rate for w in windows)


def call_rows(c: Calls) -> list[Row]:
    thin = c.times["thin"].median_ms
    rows = [
        Row("thin client archive, per call", thin, c.times["true"].median_ms, "/bin/true", "ms",
            "<= 10 ms", thin <= 10),
    ]  # fmt: skip
    if "pgbackrest" in c.times:
        ref = c.times["pgbackrest"].median_ms
        rows.append(Row("thin client vs pgBackRest start", thin, ref, "pgbackrest version", "ms",
                        "-", None))  # fmt: skip
    rss, bare = c.rss_kb["thin"] / 1024, c.rss_kb["python"] / 1024
    rows.append(Row("thin client peak RSS", rss, bare, "python -I -S -c pass", "MiB", "-", None))
    return rows


def rate_rows(r: Rates, rs: Restore) -> list[Row]:
    ours, ref, mp8 = rate(r.ours), rate(r.ref), rate(r.ours_mp8)
    slow1, slow8 = r.slow[1].rate, r.slow[8].rate
    fast1, fast8 = rs.rate(1), rs.rate(8)
    seg = "seg/s"
    return [
        Row("archive rate, latency 0", ours, ref, "/bin/true", seg, ">= 0.55x ref",
            ours >= 0.55 * ref),
        Row("archive rate, latency 0, maxParallel 8", mp8, ref, "/bin/true", seg, "-", None),
        Row(f"archive, latency {SLOW_PLUGIN} s, maxPar 8 vs 1", slow8, slow1, "maxParallel 1",
            seg, ">= 3.00x ref", slow8 >= 3 * slow1),
        Row(f"restore, latency {RESTORE_PLUGIN} s, maxPar 8 vs 1", fast8, fast1, "maxParallel 1",
            seg, "> 1.00x ref (prefetch faster)", fast8 > fast1),
    ]  # fmt: skip


def print_details(c: Calls, r: Rates, rs: Restore) -> None:
    print("\nDetails")
    labels = {
        "thin": "thin client archive (small file)",
        "python": "python -I -S -c pass",
        "imports": f"python -I -S -c '{THIN_IMPORTS}'",
        "true": "/bin/true",
        "pgbackrest": "pgbackrest version",
    }
    for key, t in c.times.items():
        print(
            f"  {labels[key]:<34} median {t.median_ms:6.2f}  mean {t.mean_ms:6.2f} "
            f"± {t.stddev_ms:.2f}  min {t.min_ms:6.2f} ms  ({t.runs} runs, {t.tool})"
        )
    for what, value in c.round_trip_ms.items():
        print(f"  daemon round trip, archive of a {what}, no new process: {value:.2f} ms")
    print(f"  peak RSS (KiB, {c.rss_tool}): {c.rss_kb}")
    for name, windows in (("ours", r.ours), ("/bin/true", r.ref), ("ours mp8", r.ours_mp8)):
        production = statistics.median(w.production_rate for w in windows)
        print(f"  WAL production while archiving with {name}: {production:.0f} seg/s (median)")
    print(f"  restore: {rs.needed} archived segments needed after the base backup")
    for max_parallel, seconds in rs.seconds.items():
        got = rs.restored[max_parallel]
        print(
            f"  restore maxParallel {max_parallel}: launch-to-promotion {seconds:.2f} s; "
            f"{got.files} files restored from {got.first_s:.2f} s to {got.last_s:.2f} s after "
            f"launch = {got.span_rate:.1f} files/s in between"
        )


# -- main -------------------------------------------------------------------------------


def run(cfg: Config, session: Session) -> list[Row]:
    b = setup(session, cfg)
    calls = measure_calls(b)
    rates = measure_rates(b)
    restore = measure_restore(b)
    b.plugin.stop()
    print_details(calls, rates, restore)
    return call_rows(calls) + rate_rows(rates, restore)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and segments")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = make_config(parse_args(argv).quick)
    started = time.perf_counter()
    code = run_bench("wal", lambda session: run(cfg, session), False, (psycopg.Error,))
    print(f"\n(took {time.perf_counter() - started:.0f} s)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
