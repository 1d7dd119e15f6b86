"""pgBackRest through the plugin sidecar against pgBackRest used directly, in one run.

    .venv/bin/python bench/pgbackrest.py [--quick]

Run as root, like the other benchmarks (the daemon and the sidecar run as postgres).

Archive rate: one WAL backlog is made once (``pgbench -i`` with archiving paused, 16 MB
segments) and copied for every configuration. Each run starts PostgreSQL with archiving
still paused (``archive_command = ''`` in postgresql.auto.conf), turns it on with a reload
and times until no ``.ready`` file is left. The rate counts from the moment the first
segment is archived: what comes before is paid once per start on either side (the
daemon's first connection to the plugin, the plugin's empty-archive check of a new
cluster and its first segment pushed alone; pgBackRest's fork of its asynchronous
process), and is printed per run as "first after". Direct: ``archive_command = 'pgbackrest ...
archive-push %p'`` under pg_ctl. Plugin: the daemon's thin client, the daemon (look-ahead
``wal.maxParallel``), the sidecar, ``pgbackrest archive-push``. ``async``: pgBackRest's
``archive-async`` with ``process-max=2`` on either side: by hand, pgBackRest's foreground
``archive-push`` forks one asynchronous push of every ready segment and waits for its
status file; through the plugin, the sidecar runs that asynchronous push itself and
answers each call from its status files. The three async configurations are measured in
rotation (ABC, CBA, ...) for ``async_rounds`` rounds and compared by their medians; the
others once per ``rate_rounds``. Target: the plugin with look-ahead 8 at least as fast as
pgBackRest's own async mode (look-ahead 1 is shown: PostgreSQL's calls, one process each,
then come one after the other and can fall behind the push). Both sides pay once for
their first segment; the plugin's is pushed alone after its empty-archive check.

Backup and restore: the plugin's Backup and RestoreJobHooks.Restore calls against the same
pgbackrest commands typed by hand (``backup --type=full --start-fast --no-archive-check``,
``restore --type=preserve --set=...``) on the same instance, a CHECKPOINT before each
backup, the sides in ABBA order; medians. Exit status: 0 every target met, 1 a target missed, 2
the benchmark failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    Layout,
    Row,
    Session,
    prepare_pgdata,
    run_bench,
)
from pgbackrestkit import (
    ASYNC_KINDS,
    MODES,
    PAUSED,
    PLUGIN_BACKUP,
    STANZA,
    Instance,
    Mode,
    cluster_doc,
    failed_count,
    fresh_dir,
    pgbench_init,
    ready_count,
    set_auto_conf,
    sql,
)
from pgctl import pg_ctl_start, pg_ctl_stop

from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.plugins._gen import backup_pb2, restore_job_pb2, restore_job_pb2_grpc
from instance_manager.plugins.connection import Plugin


@dataclass(frozen=True)
class Config:
    backlog_scale: int  # pgbench -i scale of the WAL backlog
    data_scale: int  # pgbench -i scale of the database backed up and restored
    rounds: int  # backup and restore rounds per side
    rate_rounds: int  # archive-rate runs per configuration (median)
    async_rounds: int  # runs of each async configuration, in rotation (median)


# -- archive rate ---------------------------------------------------------------------------


def make_pgdata(session: Session, root: Path, scale: int) -> Path:
    """A stopped PGDATA holding a pgbench database whose WAL waits to be archived."""
    lay = session.layout(root, json.dumps(cluster_doc()))
    prepare_pgdata(lay, session.procs)
    set_auto_conf(lay, PAUSED)
    pg_ctl_start(lay)
    pgbench_init(lay, scale)
    sql(lay, "CHECKPOINT")
    sql(lay, "SELECT pg_switch_wal()")
    pg_ctl_stop(lay)
    return lay.pgdata


def drain(session: Session, pgdata: Path, mode: Mode) -> float:
    """Segments archived per second once the first one is (the first segment's latency,
    a one-time cost, is printed apart), from the reload that turns archiving on."""
    inst = Instance.start(session, pgdata.parent.parent / mode.name, pgdata, mode)
    try:
        backlog, failed0 = ready_count(inst.lay.pgdata), failed_count(inst.lay)
        started = time.perf_counter()
        inst.resume_archiving()
        first = inst.wait_drained(failed0)
        ended = time.perf_counter()
    finally:
        inst.stop()
    shutil.rmtree(inst.lay.root, ignore_errors=True)
    seconds, rate = ended - started, (backlog - 1) / max(ended - first, 1e-3)
    print(f"{mode.name:18} {backlog} segments in {seconds:6.2f} s = {backlog / seconds:5.1f}/s; "
          f"first after {first - started:5.3f} s, then {rate:5.1f}/s", flush=True)  # fmt: skip
    return rate


# -- backup and restore ---------------------------------------------------------------------


def on_plugin(lay: Layout, body: Callable[[Any], Any]) -> float:
    """Seconds ``body(channel)`` takes on a handshaken channel to the sidecar."""

    async def main() -> float:
        plugin = Plugin(PLUGIN_NAME, lay.plugins / PLUGIN_NAME)
        try:
            async with plugin.channel() as ch:
                started = time.perf_counter()
                await body(ch)
                return time.perf_counter() - started
        finally:
            await plugin.close()

    return asyncio.run(main())


def plugin_backup(inst: Instance, name: str) -> float:
    request = backup_pb2.BackupRequest(
        cluster_definition=inst.lay.config.read_bytes(),
        backup_definition=json.dumps({"metadata": {"name": name}}).encode(),
        parameters={"type": "full", "startFast": "true"},
    )
    return on_plugin(inst.lay, lambda ch: ch.backup.Backup(request))


def plugin_restore(inst: Instance, target: Path) -> float:
    source = {"stanza": STANZA, "repo1-path": str(inst.repo), "pg1-path": str(target)}
    doc = cluster_doc()
    plugin = {"name": PLUGIN_NAME, "parameters": source}
    doc["spec"] |= {"externalClusters": [{"name": "o", "plugin": plugin}],
                    "bootstrap": {"recovery": {"source": "o"}}}  # fmt: skip
    request = restore_job_pb2.RestoreRequest(cluster_definition=json.dumps(doc).encode())

    def restore(ch: Any) -> Any:
        return restore_job_pb2_grpc.RestoreJobHooksStub(ch.channel).Restore(request)

    return on_plugin(inst.lay, restore)


@dataclass
class Timings:
    backup: tuple[list[float], list[float]]  # (plugin, by hand)
    restore: tuple[list[float], list[float]]


Measure = Callable[[], float]


def abba(rounds: int, plugin: Measure, by_hand: Measure) -> tuple[list[float], list[float]]:
    """Both sides ``rounds`` times each, in ABBA order: drift in the load hits both alike."""
    ours: list[float] = []
    ref: list[float] = []
    for n in range(rounds):
        for side in (0, 1) if n % 2 == 0 else (1, 0):
            if side == 0:
                ours.append(plugin())
            else:
                ref.append(by_hand())
    return ours, ref


def backup_restore(session: Session, root: Path, pgdata: Path, rounds: int) -> Timings:
    """The plugin's calls and the same pgbackrest commands by hand, on one instance."""
    inst = Instance.start(session, root / "br", pgdata, Mode("br", "gz", parallel=1))
    try:
        inst.resume_archiving()
        inst.wait_drained(failed_count(inst.lay))
        plugin_backup(inst, "warm-up")  # the first checkpoint writes everything

        def checkpointed(measure: Measure) -> Measure:
            def timed() -> float:
                sql(inst.lay, "CHECKPOINT")  # each backup's own checkpoint then writes as little
                return measure()

            return timed

        backups = abba(
            rounds,
            checkpointed(lambda: plugin_backup(inst, "b")),
            checkpointed(lambda: inst.run(*PLUGIN_BACKUP)[0]),
        )
        label = json.loads(inst.run("info", "--output=json")[1])[0]["backup"][-1]["label"]
        target = root / "restored"

        def restore_by_hand() -> float:
            where = {"pg1-path": str(fresh_dir(target))}
            return inst.run("restore", "--type=preserve", f"--set={label}", **where)[0]

        restores = abba(rounds, lambda: plugin_restore(inst, fresh_dir(target)), restore_by_hand)
    finally:
        inst.stop()
    return Timings(backups, restores)


# -- the report -------------------------------------------------------------------------------


def rate_rows(rates: dict[str, float]) -> list[Row]:
    rows = []
    for c in ("gz", "lz4"):
        for ours, ref, factor in (("plugin1", "direct", 0.0), ("plugin8", "direct", 2.0),
                                  ("plugin1-async", "direct-async", 0.0),
                                  ("plugin8-async", "direct-async", 1.0),
                                  ("plugin8-async", "direct", 0.0)):  # fmt: skip
            mine, theirs = rates[f"{ours}-{c}"], rates[f"{ref}-{c}"]
            target = f">= {factor:g}x" if factor else ""
            passed = mine >= factor * theirs if factor else None
            rows.append(Row(f"archive {c}: {ours}", mine, theirs, ref, "seg/s", target, passed))
    return rows


def time_rows(t: Timings) -> list[Row]:
    rows = []
    for what, (ours, ref) in (("backup (full)", t.backup), ("restore", t.restore)):
        mine, hand = statistics.median(ours), statistics.median(ref)
        passed = mine <= 1.05 * hand
        rows.append(Row(f"{what} wall time", mine, hand, "by hand", "s", "<= 1.05x", passed))
        print(f"{what}: plugin {[round(x, 2) for x in ours]}, by hand {[round(x, 2) for x in ref]}")
    return rows


def rate_runs(cfg: Config, session: Session, backlog: Path) -> dict[str, list[float]]:
    """Archive rates by mode: the async ones in rotation, the others in ABBA order."""
    runs: dict[str, list[float]] = {mode.name: [] for mode in MODES}
    chosen = [m for m in MODES if m.name.rsplit("-", 1)[0] in ASYNC_KINDS]
    others = [m for m in MODES if m not in chosen]
    for n in range(cfg.rate_rounds):
        for mode in others if n % 2 == 0 else others[::-1]:
            runs[mode.name].append(drain(session, backlog, mode))
    for n in range(cfg.async_rounds):
        for mode in chosen if n % 2 == 0 else chosen[::-1]:
            runs[mode.name].append(drain(session, backlog, mode))
    for mode in chosen:
        print(f"{mode.name}: {[round(r, 2) for r in runs[mode.name]]} seg/s", flush=True)
    return runs


def run(cfg: Config, session: Session) -> list[Row]:
    if not shutil.which("pgbackrest"):
        raise BenchError("pgbackrest not found (apt-get install pgbackrest)")
    root = session.make_root("pb")
    backlog = make_pgdata(session, root / "base", cfg.backlog_scale)
    print(f"backlog: {ready_count(backlog)} segments of 16 MB", flush=True)
    runs = rate_runs(cfg, session, backlog)
    shutil.rmtree(backlog.parent, ignore_errors=True)
    data = make_pgdata(session, root / "data", cfg.data_scale)
    times = backup_restore(session, root, data, cfg.rounds)
    rates = {name: statistics.median(values) for name, values in runs.items()}
    return rate_rows(rates) + time_rows(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller backlog and database")
    args = parser.parse_args(argv)
    cfg = Config(40, 5, 2, 1, 2) if args.quick else Config(100, 10, 6, 1, 3)
    return run_bench("pgbackrest", lambda session: run(cfg, session))


if __name__ == "__main__":
    raise SystemExit(main())
