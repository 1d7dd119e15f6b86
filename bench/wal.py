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
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from harness import PG_BIN, Daemon, Layout, Row, Session, chown_tree, prepare_pgdata, run_bench
from pgctl import as_postgres, pg_ctl_start, pg_ctl_stop
from waldrain import Hold, PgBackRest, drain, set_archive_command, set_parameter
from walkit import (
    PYTHON,
    SEGMENT_MB,
    Plugin,
    Restored,
    Window,
    archive_command,
    archive_window,
    cluster_yaml,
    manager_argv,
    peak_rss_kb,
    promotion_time,
    restored_files,
    round_trip_ms,
    spool_marker,
    time_commands,
)
from walreport import (
    RESTORE_PLUGIN,
    SLOW_PLUGIN,
    THIN_IMPORTS,
    Calls,
    Drains,
    Rates,
    Restore,
    call_rows,
    drain_rows,
    print_details,
    rate_rows,
)

WARM_UP_SEGMENTS = 40  # past wal_keep_size (CloudNativePG's 512MB = 32 segments of 16 MiB)


@dataclass(frozen=True)
class Config:
    calls: int  # runs per command for the per-call figure
    rounds: int  # archive-rate windows per side at latency 0
    segments: int  # WAL segments per window at latency 0 (or max_seconds)
    slow_segments: int  # per window with the slow plugin
    restore_segments: int  # archived after the base backup, then restored
    drain_segments: int  # the backlog of one drain
    drain_rounds: int  # drains per archive_command
    max_seconds: float = 10.0  # production stops here even if short of the segments


def make_config(quick: bool) -> Config:
    if quick:
        return Config(60, 1, 60, 30, 30, drain_segments=100, drain_rounds=1)
    return Config(300, 3, 200, 100, 100, drain_segments=200, drain_rounds=3)


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
    print(f"directory {top}")
    print(f"Preparing PGDATA (initdb --wal-segsize={SEGMENT_MB}, through the daemon) ...")
    prepare_pgdata(primary, session.procs)
    return Bench(cfg, session, top, primary, plugin)


# -- a, d: the thin client ------------------------------------------------------------------


def measure_calls(b: Bench) -> Calls:
    """Per-call time and peak RSS of SCRATCH/bin/manager, against a running daemon."""
    small_dir = b.primary.pgdata / "pg_wal"  # the daemon archives nothing from elsewhere
    small = small_dir / "000000010000000000000002.00000028.backup"  # a real small WAL file
    small.write_bytes(b"START WAL LOCATION: 0/2000028\n" * 10)
    segment = small_dir / "bench-one-segment"  # not a WAL name: it must not overwrite one
    segment.write_bytes(os.urandom(SEGMENT_MB << 20))
    daemon = b.daemon(b.primary, 1)
    thin = manager_argv(b.primary, "wal-archive", str(small))
    shell = ["/bin/sh", "-c", archive_command(b.primary, small)]  # what PostgreSQL runs
    marker = spool_marker(b.primary, small.name)
    bare = [PYTHON, "-I", "-S", "-c"]
    commands = {"thin": thin, "ahead": shell, "shell": shell, "python": [*bare, "pass"]}
    commands |= {"imports": [*bare, THIN_IMPORTS], "true": ["/bin/true"]}
    if shutil.which("pgbackrest"):
        commands["pgbackrest"] = ["pgbackrest", "version"]
    print(f"Per call: {', '.join(commands)}, {b.cfg.calls} runs each ...", flush=True)
    # "ahead": as if archived ahead, the marker the shell finds; the others go to the plugin.
    unmarked = ["rm", "-f", str(marker)]
    prepare = {"thin": unmarked, "ahead": ["touch", str(marker)], "shell": unmarked}
    times = time_commands(commands, b.cfg.calls, b.top / "hyperfine.json", prepare)
    marker.unlink(missing_ok=True)
    rss = {"thin": peak_rss_kb(thin), "python": peak_rss_kb(commands["python"])}
    trips = {
        "small file": round_trip_ms(b.primary.wal_socket, small, 50),
        f"{SEGMENT_MB} MiB file": round_trip_ms(b.primary.wal_socket, segment, 50),
        "segment archived ahead": round_trip_ms(b.primary.wal_socket, small, 50, marker),
    }
    daemon.stop_timed()
    small.unlink()
    segment.unlink()
    return Calls(times, {k: v[0] for k, v in rss.items()}, rss["thin"][1], trips)


# -- f: the backlog drain -------------------------------------------------------------------


def measure_drain(b: Bench) -> Drains:
    out, lay, n = Drains(), b.primary, b.cfg.drain_segments
    print(f"Backlog drain: {n} segments, {b.cfg.drain_rounds} rounds per command", flush=True)
    hold = Hold(b.top / "hold")
    pgbackrest = PgBackRest(b.top, lay) if shutil.which("pgbackrest") else None
    daemon = b.daemon(lay, 1)
    set_parameter(lay.pg_port, "wal_init_zero", "off")  # kept in postgresql.auto.conf
    try:
        if pgbackrest is not None:
            pgbackrest.setup()
        for i in range(b.cfg.drain_rounds):
            out.ours.append(drain(lay, hold, None, n))
            print(f"  round {i + 1}: ours, maxParallel 1  {out.ours[-1].line()}", flush=True)
            out.true.append(drain(lay, hold, "/bin/true", n))
            print(f"  round {i + 1}: /bin/true  {out.true[-1].line()}", flush=True)
            if pgbackrest is not None:
                out.pgbackrest.append(drain(lay, hold, pgbackrest.command, n))
                pgbackrest.empty()
                print(f"  round {i + 1}: pgbackrest  {out.pgbackrest[-1].line()}", flush=True)
    finally:
        set_archive_command(lay.pg_port, None)
    daemon.stop_timed()
    daemon = b.daemon(lay, 8)
    try:
        for i in range(b.cfg.drain_rounds):
            out.ours_mp8.append(drain(lay, hold, None, n))
            print(f"  round {i + 1}: ours, maxParallel 8  {out.ours_mp8[-1].line()}", flush=True)
    finally:
        set_archive_command(lay.pg_port, None)
        set_parameter(lay.pg_port, "wal_init_zero", None)
    daemon.stop_timed()
    return out


# -- b, c: archive rates --------------------------------------------------------------------


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


# -- main -------------------------------------------------------------------------------


def run(cfg: Config, session: Session) -> list[Row]:
    b = setup(session, cfg)
    calls = measure_calls(b)
    drains = measure_drain(b)
    rates = measure_rates(b)
    restore = measure_restore(b)
    b.plugin.stop()
    print_details(calls, drains, rates, restore)
    return call_rows(calls) + drain_rows(drains) + rate_rows(rates, restore)


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
