"""Scrape figures of our metrics exporter against prometheus-postgres-exporter, in one run.

    .venv/bin/python bench/metrics.py [--quick] [--no-install]

Run as root (PostgreSQL and the exporters run as ``postgres``). Debian's
prometheus-postgres-exporter is installed with apt-get when missing (not with
``--no-install``). One PostgreSQL 15 is initialised and run by ``instance-manager run``
in a short temporary directory; on that same database, in the same run, with rounds
interleaved:

* the daemon's own ``/metrics`` (its metrics port), default queries,
  ``metricsQueriesTTL: 0`` (every scrape runs every query): the figures with targets;
* the same metrics server run on its own (a separate process, same settings), for
  information: what the daemon's other work adds;
* ours on its own, default TTL (30 s): cached scrapes;
* postgres_exporter running our default query file alone (``--extend.query-path``, its
  own collectors off): the same queries, the reference of the latency target;
* postgres_exporter with its own defaults (a lighter set than CloudNativePG's), for
  information.

Every exporter connects as ``cnpg_metrics_exporter`` over the Unix socket (peer
authentication). CPU per scrape is the exporter process's CPU time (/proc/PID/stat) over
the measured scrapes, the daemon's whole process for the daemon (whatever else it did
meanwhile counts against it); PostgreSQL's is the backends' CPU. Latency is
the wall time of a sequential GET on a keep-alive connection, body read. Everything
started here is stopped in a ``finally``. Exit: 0 targets met, 1 missed, 2 failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import print_load

ROOT = Path(__file__).resolve().parent.parent
DAEMON = Path(sys.executable).parent / "instance-manager"
EXPORTER = shutil.which("prometheus-postgres-exporter") or "/usr/bin/prometheus-postgres-exporter"
DEFAULT_QUERIES = ROOT / "instance_manager" / "metrics" / "default_queries.yaml"
RUN_AS = "postgres"
CACHED_TARGET_MS = 5.0
LATENCY_TARGET = 0.8  # the daemon's p50 against postgres_exporter's, same queries
CLUSTER = """\
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {{name: bench}}
spec:
  postgresql:
    pg_hba: ["host all all 127.0.0.1/32 trust"]
  monitoring: {{metricsQueriesTTL: "{ttl}"}}
instance:
  pgData: {pgdata}
  scratchDir: {scratch}
  port: {port}
  statusHost: 127.0.0.1
  metricsPort: {metrics_port}
"""
# Our exporter on its own: the daemon's MetricsServer, settings from the file, a primary.
OURS = """\
import asyncio, logging, sys
from pathlib import Path
from instance_manager import log, settings
from instance_manager.metrics.server import MetricsServer
from instance_manager.state import InstanceState
log.setup("bench", logging.WARNING)
s = settings.load(Path(sys.argv[1]), {}, {})
state = InstanceState(postmaster_running=True, is_primary=True)
asyncio.run(MetricsServer(lambda: s, state, lambda: None).run())
"""


class BenchError(Exception):
    """The benchmark could not measure something (not a missed target)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Processes:
    """Everything started here, stopped in reverse order by stop_all()."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        user = pwd.getpwnam(RUN_AS)
        base = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(log.parent)}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**base, **(env or {})},
                cwd=ROOT, user=user.pw_uid, group=user.pw_gid, start_new_session=True,
            )  # fmt: skip
        self.started.append(proc)
        self.logs.append(log)
        return proc.pid

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in reversed(self.started):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def wait_http(port: int, path: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"the process behind port {port} exited")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                if get(conn, path)[0] == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.05)
    raise BenchError(f"no 200 from 127.0.0.1:{port}{path} within {timeout:.0f} s")


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def backends(postmaster: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == postmaster:
                    found.append(int(entry.name))
    return found


@dataclass
class Target:
    label: str
    port: int
    pid: int
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    pg_cpu: float = 0.0
    scrapes: int = 0
    series: int = 0

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def per_scrape_ms(self, seconds: float) -> float:
        return seconds / max(1, self.scrapes) * 1000


def pg_cpu(postmaster: int) -> tuple[float, dict[int, float]]:
    """CPU of the postmaster and of its reaped children, and of each live backend."""
    stat = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(x) for x in stat[11:15]) / os.sysconf("SC_CLK_TCK")
    return own, {pid: cpu_seconds([pid]) for pid in backends(postmaster)}


def pg_cpu_delta(
    before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]
) -> float:
    live = sum(cpu - before[1].get(pid, 0.0) for pid, cpu in after[1].items())
    return after[0] - before[0] + live


def block(target: Target, scrapes: int, postmaster: int) -> None:
    """Sequential scrapes on one keep-alive connection, with the CPU they cost."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        get(conn, "/metrics")  # opens the connection; not counted
        pg_before, cpu_before = pg_cpu(postmaster), cpu_seconds([target.pid])
        body = b""
        for _ in range(scrapes):
            started = time.perf_counter()
            status, body = get(conn, "/metrics")
            target.latencies.append(time.perf_counter() - started)
            if status != 200:
                raise BenchError(f"{target.label}: HTTP {status}")
        target.cpu += cpu_seconds([target.pid]) - cpu_before
        target.pg_cpu += pg_cpu_delta(pg_before, pg_cpu(postmaster))
        target.scrapes += scrapes
        target.series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    finally:
        conn.close()


@dataclass
class Layout:
    work: Path
    pg_port: int = field(default_factory=free_port)
    status_port: int = field(default_factory=free_port)

    def cluster(self, path: Path, ttl: str, metrics_port: int) -> Path:
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            CLUSTER.format(
                ttl=ttl, pgdata=self.work / "d", scratch=self.work / "s", port=self.pg_port,
                metrics_port=metrics_port,
            )
        )  # fmt: skip
        return path

    def dsn(self) -> str:
        return (
            f"host={self.work / 's' / 'run'} port={self.pg_port} user=cnpg_metrics_exporter "
            "dbname=postgres sslmode=disable"
        )


def start_postgres(lay: Layout, procs: Processes) -> tuple[int, Target]:
    """The daemon (its /metrics uncached: TTL 0) and its postmaster's PID."""
    metrics_port = free_port()
    config = lay.cluster(lay.work / "k" / "c.yaml", "0", metrics_port)
    argv = [str(DAEMON), "run", "--config", str(config), "--pod-name", "bench-1"]
    argv += ["--listen-addresses", "127.0.0.1", "--status-port", str(lay.status_port)]
    pid = procs.start(argv, lay.work / "daemon.log")
    wait_http(lay.status_port, "/readyz", 120, lambda: procs.started[0].poll() is None)
    wait_http(metrics_port, "/metrics", 60, lambda: procs.started[0].poll() is None)
    postmaster = int((lay.work / "d" / "postmaster.pid").read_text().split()[0])
    return postmaster, Target("ours, in the daemon", metrics_port, pid)


def ensure_exporter(install: bool) -> None:
    """Debian's prometheus-postgres-exporter, installed with apt-get when missing."""
    if Path(EXPORTER).exists():
        return
    if not install:
        raise BenchError(f"{EXPORTER} not found (apt-get install prometheus-postgres-exporter)")
    print("Installing prometheus-postgres-exporter (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "prometheus-postgres-exporter",
        ],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    # Debian may start the packaged service (port 9187); ours are separate processes.
    if shutil.which("systemctl"):
        stop = ["systemctl", "disable", "--now", "prometheus-postgres-exporter"]
        subprocess.run(stop, capture_output=True, timeout=60)


def reference_queries(lay: Layout) -> Path:
    """Our default queries in postgres_exporter's dialect: the queries for this server's
    version (it has no runonserver), keys prefixed with cnpg_ so that the metric names are
    ours and do not collide with its built-in pg_* families."""
    import yaml

    from instance_manager.metrics.versions import parse_range

    major = int((lay.work / "d" / "PG_VERSION").read_text().strip())
    converted = {}
    for name, query in yaml.safe_load(DEFAULT_QUERIES.read_text()).items():
        wanted = query.get("runonserver")
        if wanted and (major, 0, 0) not in parse_range(wanted):
            continue
        item = {"query": query["query"], "metrics": query["metrics"]}
        if query.get("primary"):
            item["master"] = True
        converted[f"cnpg_{query.get('name') or name}"] = item
    path = lay.work / "e" / "reference-queries.yaml"
    path.write_text(yaml.safe_dump(converted))
    return path


def start_exporters(lay: Layout, procs: Processes) -> list[Target]:
    targets = []
    for label, ttl in (("ours, separate server", "0"), ("ours, cached", "30s")):
        port = free_port()
        config = lay.cluster(lay.work / "e" / f"{port}.yaml", ttl, port)
        pid = procs.start([sys.executable, "-c", OURS, str(config)], lay.work / f"{port}.log")
        targets.append(Target(label, port, pid))
    same = [f"--extend.query-path={reference_queries(lay)}", "--disable-default-metrics"]
    same += ["--disable-settings-metrics", "--no-collector.database", "--no-collector.bgwriter"]
    for label, extra in (("postgres_exporter, same queries", same), ("postgres_exporter", [])):
        port = free_port()
        argv = [EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=error", *extra]
        pid = procs.start(argv, lay.work / f"{port}.log", {"DATA_SOURCE_NAME": lay.dsn()})
        targets.append(Target(label, port, pid))
    for target, proc in zip(targets, procs.started[-len(targets) :], strict=True):
        wait_http(target.port, "/metrics", 60, lambda p=proc: p.poll() is None)  # type: ignore[misc]
    return targets


@dataclass(frozen=True)
class Row:
    metric: str
    ours: float
    ref: float | None = None
    target: str = ""
    ok: bool | None = None

    def cells(self) -> list[str]:
        ratio = f"{self.ours / self.ref:.2f}" if self.ref else "-"
        result = "info" if self.ok is None else ("PASS" if self.ok else "MISS")
        ref = "-" if self.ref is None else f"{self.ref:.2f}"
        return [self.metric, f"{self.ours:.2f}", ref, ratio, self.target or "-", result]


def rows(daemon: Target, ours: Target, cached: Target, same: Target, theirs: Target) -> list[Row]:
    p50, ref50 = daemon.p(0.5), same.p(0.5)
    ms = Target.per_scrape_ms
    cpu, ref_cpu = ms(daemon, daemon.cpu), ms(same, same.cpu)
    return [
        Row("daemon /metrics p50, uncached (ms)", p50, ref50, f"<= {LATENCY_TARGET:.1f}x ref",
            p50 <= LATENCY_TARGET * ref50),
        Row("daemon /metrics p99, uncached (ms)", daemon.p(0.99), same.p(0.99)),
        Row("daemon CPU per scrape (ms)", cpu, ref_cpu, "<= ref", cpu <= ref_cpu),
        Row("PostgreSQL CPU per scrape (ms)", ms(daemon, daemon.pg_cpu), ms(same, same.pg_cpu)),
        Row("series per scrape", daemon.series, same.series),
        Row("separate server p50, uncached (ms)", ours.p(0.5), ref50),
        Row("separate server CPU per scrape (ms)", ms(ours, ours.cpu), ref_cpu),
        Row("daemon p50 vs its own defaults (ms)", p50, theirs.p(0.5)),
        Row("daemon p99 vs its own defaults (ms)", daemon.p(0.99), theirs.p(0.99)),
        Row("daemon CPU vs its own defaults (ms)", cpu, ms(theirs, theirs.cpu)),
        Row("series vs its own defaults", daemon.series, theirs.series),
        Row("cached scrape p50 (ms)", cached.p(0.5), None, f"<= {CACHED_TARGET_MS:.0f} ms",
            cached.p(0.5) <= CACHED_TARGET_MS),
        Row("cached scrape p99 (ms)", cached.p(0.99)),
        Row("cached scrape exporter CPU (ms)", ms(cached, cached.cpu)),
    ]  # fmt: skip


def print_table(table: list[Row]) -> None:
    header = ["metric", "ours", "reference", "ratio", "target", "result"]
    lines = [header] + [row.cells() for row in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def measure(targets: list[Target], postmaster: int, rounds: int, scrapes: int) -> None:
    for target in targets:  # warm-up: connections opened, statements prepared, caches filled
        block(target, 10, postmaster)
        target.latencies.clear()
        target.cpu = target.pg_cpu = target.scrapes = 0  # type: ignore[assignment]
    for i in range(rounds):
        for target in targets:
            block(target, scrapes, postmaster)
        summary = ", ".join(f"{t.label} {t.p(0.5):.1f}" for t in targets)
        print(f"  round {i + 1}/{rounds}, p50 so far (ms): {summary}", flush=True)


def run(args: argparse.Namespace) -> int:
    ensure_exporter(not args.no_install)
    work = Path(tempfile.mkdtemp(prefix="mb", dir="/tmp"))
    user = pwd.getpwnam(RUN_AS)
    os.chown(work, user.pw_uid, user.pw_gid)
    procs = Processes()
    try:
        lay = Layout(work)
        print("starting PostgreSQL (instance-manager run, initdb) ...", flush=True)
        postmaster, daemon = start_postgres(lay, procs)
        targets = [daemon, *start_exporters(lay, procs)]
        rounds, scrapes = (3, 30) if args.quick else (5, 60)
        print(f"measuring: {rounds} rounds x {scrapes} scrapes per exporter", flush=True)
        measure(targets, postmaster, rounds, scrapes)
        table = rows(*targets)
    except BaseException:
        for log in procs.logs:
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").splitlines()[-5:]
                if tail:
                    print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(table)
    return 0 if all(row.ok is not False for row in table) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and scrapes")
    parser.add_argument("--no-install", action="store_true", help="never apt-get")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    started = time.perf_counter()
    print_load("start")
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench/metrics.py: {exc}", file=sys.stderr)
        return 2
    finally:
        print_load("end")
        print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
