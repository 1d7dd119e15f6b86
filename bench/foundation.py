"""Foundation figures of the instance manager, each against a reference from the same run.

    .venv/bin/python bench/foundation.py [--quick] [--no-wrk]

Run as root (the daemon drops to ``postgres`` by itself; ``pg_ctl`` runs through runuser).
Everything lives in one short temporary directory under /tmp, removed at the end, and every
process started here is stopped, even on error. Exit status: 0 all targets met, 1 a target
missed, 2 the benchmark itself failed. See bench/README.md for what each figure means.
The shared machinery is in bench/harness.py (directories, processes, the daemon, the
table), bench/pgctl.py (pg_ctl, PostgreSQL's log times) and bench/httpload.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    PG_BIN,
    Daemon,
    Layout,
    Processes,
    Row,
    Session,
    compile_package,
    ms,
    prepare_pgdata,
    run_bench,
)
from httpload import Latency, Load, latency, load
from pgctl import (
    PG_DOWN,
    PG_READY,
    daemon_timeline,
    pg_ctl_log_time,
    pg_ctl_start,
    pg_ctl_stop,
)

CLUSTER_YAML = """\
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {name: bench}
spec:
  postgresql:
    pg_hba: ["host all all 127.0.0.1/32 trust"]
"""
FIRST_ANSWER = "first answer"
FIRST_ASKED = "first answered request sent"

# Log messages whose time after launch (or after SIGTERM) is shown, with their labels.
# PostgreSQL's own records are timed by their log_time (1 ms resolution), not by when
# the daemon got round to printing them.
START_EVENTS = {
    "postmaster start up": "pg_controldata done",
    "postmaster started": "postgres spawned",
    PG_READY: "postgres ready (its log_time)",
    "PostgreSQL is accepting connections": "daemon sees it ready",
    "status server listening": "status server listening",
    FIRST_ASKED: "first answered /readyz request sent (our poll)",
    FIRST_ANSWER: "first /readyz answer, any status (our poll)",
    "configuration applied": "post-start work done (configuration applied)",
}
STOP_EVENTS = {
    "checkpoint before shutdown done": "checkpoint done",
    PG_DOWN: "postgres shut down (its log_time)",
    "PostgreSQL stopped": "daemon sees it stopped",
    "instance manager stopped": "last log line",
}


@dataclass(frozen=True)
class Config:
    rounds: int
    idle: float  # seconds an instance stays idle before it is stopped
    rss_idle: float  # seconds the daemon idles before its RSS is read
    requests: int  # sequential requests per latency figure
    load_seconds: int
    connections: int
    use_wrk: bool
    no_wrk_reason: str


def make_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    reason = "--no-wrk given" if args.no_wrk else ""
    if not reason and shutil.which("wrk") is None:
        reason = "wrk not found on PATH"
    return Config(
        rounds=3 if quick else 7,
        idle=0.5 if quick else 1.0,
        rss_idle=2.0 if quick else 4.0,
        requests=500 if quick else 2000,
        load_seconds=2 if quick else 5,
        connections=16,
        use_wrk=not reason,
        no_wrk_reason=reason,
    )


# -- measurements -----------------------------------------------------------------------


@dataclass
class Rounds:
    ours_start: list[float] = field(default_factory=list)
    ours_stop: list[float] = field(default_factory=list)
    ref_start: list[float] = field(default_factory=list)
    ref_stop: list[float] = field(default_factory=list)
    start_timeline: list[dict[str, float]] = field(default_factory=list)
    stop_timeline: list[dict[str, float]] = field(default_factory=list)
    ref_start_timeline: list[dict[str, float]] = field(default_factory=list)
    ref_stop_timeline: list[dict[str, float]] = field(default_factory=list)

    def ready_gaps(self) -> list[tuple[float, float]]:
        """Per round: (first 200 from /readyz, PostgreSQL's own ready log time), ms after
        launch; rounds whose log lacks the record are left out."""
        return [
            (ours * 1000, timeline[PG_READY])
            for ours, timeline in zip(self.ours_start, self.start_timeline, strict=True)
            if PG_READY in timeline
        ]


def daemon_round(lay: Layout, procs: Processes, cfg: Config, i: int, out: Rounds) -> None:
    """Start the daemon, let it idle, SIGTERM it."""
    daemon = Daemon(lay, procs, f"r{i}")
    out.ours_start.append(daemon.wait_ready(60))
    daemon.wait_log("configuration applied")  # post-start work is over: idle from here
    time.sleep(cfg.idle)
    out.ours_stop.append(daemon.stop_timed())
    started = daemon_timeline(daemon, START_EVENTS, daemon.launched_wall)
    started[FIRST_ASKED] = daemon.first_asked * 1000
    started[FIRST_ANSWER] = daemon.first_answer * 1000
    out.start_timeline.append(started)
    out.stop_timeline.append(daemon_timeline(daemon, STOP_EVENTS, daemon.term_wall))


def pg_ctl_round(lay: Layout, cfg: Config, out: Rounds) -> None:
    """Start PostgreSQL with pg_ctl on the same PGDATA, let it idle, stop it."""
    launched = time.time()
    # /bin/true: without the daemon our archive_command fails and would stretch the stop.
    out.ref_start.append(pg_ctl_start(lay, "archive_command=/bin/true"))
    out.ref_start_timeline.append(pg_ctl_log_time(lay, PG_READY, launched))
    time.sleep(cfg.idle)
    stopped = time.time()
    out.ref_stop.append(pg_ctl_stop(lay))
    out.ref_stop_timeline.append(pg_ctl_log_time(lay, PG_DOWN, stopped))


def one_round(lay: Layout, procs: Processes, cfg: Config, i: int, out: Rounds) -> None:
    daemon_round(lay, procs, cfg, i, out)
    pg_ctl_round(lay, cfg, out)
    timeline = out.start_timeline[-1]
    pg_ready = timeline.get(PG_READY)
    seen = timeline.get("PostgreSQL is accepting connections")
    gap = "?" if pg_ready is None else f"{out.ours_start[-1] * 1000 - pg_ready:+.0f}"
    noticed = "?" if pg_ready is None or seen is None else f"{seen - pg_ready:+.0f}"
    print(
        f"  round {i + 1}/{cfg.rounds}: start {ms(out.ours_start[-1])} vs "
        f"{ms(out.ref_start[-1])} ms (ready {gap} ms after postgres's own ready, "
        f"noticed {noticed}), "
        f"stop {ms(out.ours_stop[-1])} vs {ms(out.ref_stop[-1])} ms",
        flush=True,
    )


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_rss_mb(pid: int) -> float:
    """VmRSS of the daemon plus any non-PostgreSQL process it started, in MiB."""
    total = vm_rss_kb(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/{child}/exe").startswith(str(PG_BIN)):
                total += vm_rss_kb(child)
    return total / 1024


def bare_python_rss_mb(procs: Processes) -> float:
    """Reference: the same interpreter doing nothing."""
    proc = procs.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        return vm_rss_kb(proc.pid) / 1024
    finally:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Serving:
    rss_mb: float
    rss_after_load_mb: float
    ref_rss_mb: float
    idle_cpu_pct: float
    lat: dict[str, Latency]
    loads: dict[str, Load]


def measure_serving(lay: Layout, procs: Processes, cfg: Config) -> Serving:
    """One daemon: idle RSS, sequential latency, then throughput."""
    daemon = Daemon(lay, procs, "serve")
    daemon.wait_ready(60)
    daemon.wait_log("configuration applied")
    cpu_before = cpu_seconds(daemon.proc.pid)
    time.sleep(cfg.rss_idle)
    idle_cpu = (cpu_seconds(daemon.proc.pid) - cpu_before) / cfg.rss_idle * 100
    rss = daemon_rss_mb(daemon.proc.pid)
    port = lay.status_port
    load_args = (cfg.load_seconds, cfg.connections, cfg.use_wrk)
    lat = {p: latency(port, p, cfg.requests) for p in ("/readyz", "/healthz", "/failsafe")}
    loads = {p: load(port, p, *load_args) for p in ("/healthz", "/failsafe")}
    rss_after = daemon_rss_mb(daemon.proc.pid)
    daemon.stop_timed()
    return Serving(rss, rss_after, bare_python_rss_mb(procs), idle_cpu, lat, loads)


# -- report -----------------------------------------------------------------------------


def lifecycle_rows(rounds: Rounds) -> list[Row]:
    med = statistics.median
    start = med(rounds.ours_start) * 1000, med(rounds.ref_start) * 1000
    stop = med(rounds.ours_stop) * 1000, med(rounds.ref_stop) * 1000
    pairs = zip(rounds.ours_start, rounds.ref_start, strict=True)
    worst = max(((o * 1000, r * 1000) for o, r in pairs), key=lambda p: p[0] - p[1])
    gaps = rounds.ready_gaps()
    worst_gap = max(gaps, key=lambda p: p[0] - p[1]) if gaps else (float("nan"),) * 2
    return [
        Row(
            "start-to-ready (median)",
            *start,
            "pg_ctl start -w",
            "ms",
            "<= ref + 100 ms",
            start[0] <= start[1] + 100,
        ),
        Row(
            "start-to-ready, worst round",
            *worst,
            "its pg_ctl start -w",
            "ms",
            "<= ref + 100 ms",
            worst[0] <= worst[1] + 100,
        ),
        Row(
            "ready vs postgres, worst round",
            *worst_gap,
            "its own ready log_time",
            "ms",
            "<= ref + 20 ms",
            bool(gaps) and worst_gap[0] <= worst_gap[1] + 20,
        ),
        Row(
            "SIGTERM-to-exit (median)",
            *stop,
            "pg_ctl stop -m fast",
            "ms",
            "<= ref + 100 ms",
            stop[0] <= stop[1] + 100,
        ),
    ]


def serving_rows(s: Serving) -> list[Row]:
    ready, health, floor = s.lat["/readyz"], s.lat["/healthz"], s.lat["/failsafe"]
    rps, rps_ref = s.loads["/healthz"].rps, s.loads["/failsafe"].rps
    ok_rps = rps >= 3000 and s.loads["/healthz"].errors == 0
    fs = "/failsafe"
    return [
        Row("/readyz p50", ready.p50_ms, floor.p50_ms, fs, "ms", "-", None),
        Row("/readyz p99", ready.p99_ms, floor.p99_ms, fs, "ms", "<= 5 ms", ready.p99_ms <= 5),
        Row("/healthz p50", health.p50_ms, floor.p50_ms, fs, "ms", "-", None),
        Row("/healthz p99", health.p99_ms, floor.p99_ms, fs, "ms", "-", None),
        Row("/healthz req/s, 16 conns", rps, rps_ref, fs, "req/s", ">= 3000, 0 errors", ok_rps),
        Row(
            "daemon RSS, idle",
            s.rss_mb,
            s.ref_rss_mb,
            "bare python",
            "MiB",
            "<= 45 MiB",
            s.rss_mb <= 45,
        ),
    ]


def print_timeline(
    title: str, runs: Sequence[dict[str, float]], names: Mapping[str, str], end: float
) -> None:
    points = [(end, "end of the measured figure")]
    for name, label in names.items():
        values = [run[name] for run in runs if name in run]
        if values:
            points.append((statistics.median(values), label))
    print(f"  {title}, median ms:")
    for at, label in sorted(points):
        print(f"    {at:6.0f}  {label}")


def print_details(rounds: Rounds, s: Serving) -> None:
    print("\nDetails")
    for label, samples in (
        ("start-to-ready, ours", rounds.ours_start),
        ("pg_ctl start -w", rounds.ref_start),
        ("SIGTERM-to-exit, ours", rounds.ours_stop),
        ("pg_ctl stop -m fast -w", rounds.ref_stop),
    ):
        print(f"  {label:<24} ms: " + " ".join(ms(x) for x in samples))
    gaps = " ".join(f"{ours - pg:+.0f}" for ours, pg in rounds.ready_gaps())
    print(f"  ready - postgres ready   ms: {gaps} (first 200 minus its log_time)")
    med = statistics.median
    start_end, stop_end = med(rounds.ours_start) * 1000, med(rounds.ours_stop) * 1000
    print_timeline("daemon start, after launch", rounds.start_timeline, START_EVENTS, start_end)
    print_timeline("daemon stop, after SIGTERM", rounds.stop_timeline, STOP_EVENTS, stop_end)
    ref_start, ref_stop = med(rounds.ref_start) * 1000, med(rounds.ref_stop) * 1000
    print_timeline("pg_ctl start, after launch", rounds.ref_start_timeline, START_EVENTS, ref_start)
    print_timeline("pg_ctl stop, after launch", rounds.ref_stop_timeline, STOP_EVENTS, ref_stop)
    for path, lat in s.lat.items():
        print(f"  {path:<9} p50 {lat.p50_ms:.3f}  p99 {lat.p99_ms:.3f}  max {lat.max_ms:.3f} ms")
    for path, result in s.loads.items():
        print(f"  {path:<9} {result.rps:.0f} req/s, {result.errors} errors ({result.tool})")
    mb = s.rss_mb * 1.048576
    print(f"  daemon RSS at idle: {s.rss_mb:.1f} MiB = {mb:.1f} MB (decimal)")
    print(f"  daemon RSS after the load: {s.rss_after_load_mb:.1f} MiB")
    print(f"  daemon CPU while idle: {s.idle_cpu_pct:.1f} % of one core")


# -- main -------------------------------------------------------------------------------


def run(cfg: Config, session: Session) -> list[Row]:
    lay = session.layout(session.make_root("fb"), CLUSTER_YAML)
    procs = session.procs
    print(f"directory {lay.root}")
    if not cfg.use_wrk:
        print(
            f"NOTE: {cfg.no_wrk_reason}: throughput is measured with the asyncio load "
            "generator instead (it shares the CPUs with the daemon)"
        )
    compile_package()
    print("Preparing PGDATA (the daemon runs initdb once) ...", flush=True)
    prepare_pgdata(lay, procs)
    print(f"Start/stop rounds ({cfg.rounds}): daemon vs pg_ctl on the same PGDATA", flush=True)
    rounds = Rounds()
    for i in range(cfg.rounds):
        one_round(lay, procs, cfg, i, rounds)
    print("Serving: idle RSS, sequential latency, throughput ...", flush=True)
    serving = measure_serving(lay, procs, cfg)
    print_details(rounds, serving)
    return lifecycle_rows(rounds) + serving_rows(serving)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, shorter runs")
    parser.add_argument("--no-wrk", action="store_true", help="use the asyncio load generator")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = make_config(parse_args(argv))
    return run_bench("foundation", lambda session: run(cfg, session))


if __name__ == "__main__":
    raise SystemExit(main())
