"""Foundation figures of the instance manager, each against a reference from the same run.

    .venv/bin/python bench/foundation.py [--quick] [--no-wrk]

Run as root (the daemon drops to ``postgres`` by itself; ``pg_ctl`` runs through runuser).
Everything lives in one short temporary directory under /tmp, removed at the end, and every
process started here is stopped, even on error. Exit status: 0 all targets met, 1 a target
missed, 2 the benchmark itself failed. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DAEMON = Path(sys.executable).parent / "instance-manager"
RUN_AS = "postgres"
POLL_INTERVAL = 0.002  # how often /readyz is asked while the daemon starts
CLUSTER_YAML = """\
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {name: bench}
spec:
  postgresql:
    pg_hba: ["host all all 127.0.0.1/32 trust"]
"""
PG_READY = "database system is ready to accept connections"
PG_DOWN = "database system is shut down"
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
PG_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \w+) \[\d+\] LOG:  (.*)$")


class BenchError(Exception):
    """The benchmark could not measure something (not a missed target)."""


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


# -- directories, ports, processes ----------------------------------------------------


@dataclass(frozen=True)
class Layout:
    root: Path
    pg_port: int
    status_port: int

    @property
    def pgdata(self) -> Path:
        return self.root / "d"

    @property
    def scratch(self) -> Path:
        return self.root / "s"

    @property
    def run_dir(self) -> Path:
        return self.scratch / "run"

    @property
    def config(self) -> Path:
        # In a directory of its own, as a ConfigMap volume: the daemon watches that
        # directory, and its log files next to the settings file would wake it up.
        return self.root / "k" / "c.yaml"


def free_ports(count: int) -> list[int]:
    """Free TCP ports on 127.0.0.1 below 32768 (higher ones are ephemeral)."""
    found: list[int] = []
    start = 21000 + (os.getpid() % 97) * 113
    for candidate in range(start, 32000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        found.append(candidate)
        if len(found) == count:
            return found
    raise BenchError("no free ports")


def make_layout() -> Layout:
    root = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    os.chmod(root, 0o755)
    user = pwd.getpwnam(RUN_AS)
    os.chown(root, user.pw_uid, user.pw_gid)
    pg_port, status_port = free_ports(2)
    lay = Layout(root, pg_port, status_port)
    lay.config.parent.mkdir()
    lay.config.write_text(CLUSTER_YAML)
    return lay


class Processes:
    """Every process started here, so that all of them can be stopped at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def postmaster_pid(pgdata: Path) -> int | None:
    """The live postmaster serving ``pgdata``, from its postmaster.pid."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError, ValueError):
        return None
    return pid if str(pgdata).encode() in cmdline else None


def kill_postmaster(pgdata: Path) -> None:
    """Last resort: an immediate stop (SIGQUIT), then SIGKILL."""
    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.02)


# -- HTTP -------------------------------------------------------------------------------


def http_status(port: int, path: str, timeout: float = 1.0) -> int:
    """Status of one GET on a new connection; 0 when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(port: int, path: str, count: int) -> Latency:
    """``count`` sequential GETs on one keep-alive connection (after a short warm-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    samples: list[float] = []
    try:
        for _ in range(20):
            conn.request("GET", path)
            conn.getresponse().read()
        sock = conn.sock
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            samples.append(time.perf_counter() - started)
            if resp.status != 200:
                raise BenchError(f"{path} answered {resp.status}")
        if conn.sock is not sock:
            raise BenchError(f"{path}: the keep-alive connection was not kept")
    finally:
        conn.close()
    ms = [s * 1000 for s in samples]
    return Latency(percentile(ms, 50), percentile(ms, 99), max(ms))


# -- load generators --------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    rps: float
    errors: int  # non-2xx answers and socket errors
    tool: str


def load_wrk(port: int, path: str, cfg: Config) -> Load:
    argv = ["wrk", "-t2", f"-c{cfg.connections}", f"-d{cfg.load_seconds}s"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=cfg.load_seconds + 30, check=True
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    sock_errors = re.search(r"Socket errors:(.*)", out)
    if sock_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", sock_errors.group(1)))
    return Load(float(rps.group(1)), errors, "wrk -t2")


async def _client(port: int, path: str, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            counts[0 if head.split(b" ", 2)[1] == b"200" else 1] += 1
    finally:
        writer.close()


async def _load_python(port: int, path: str, cfg: Config) -> Load:
    counts = [0, 0]
    started = time.perf_counter()
    stop_at = started + cfg.load_seconds
    await asyncio.gather(*(_client(port, path, stop_at, counts) for _ in range(cfg.connections)))
    elapsed = time.perf_counter() - started
    return Load(sum(counts) / elapsed, counts[1], "asyncio load generator, not wrk")


def load(port: int, path: str, cfg: Config) -> Load:
    if cfg.use_wrk:
        return load_wrk(port, path, cfg)
    return asyncio.run(_load_python(port, path, cfg))


# -- the daemon -------------------------------------------------------------------------


class Daemon:
    """``instance-manager run`` started as root, its JSON log lines in a file."""

    def __init__(self, lay: Layout, procs: Processes, tag: str) -> None:
        self.lay = lay
        self.log_path = lay.root / f"daemon-{tag}.log"
        argv = [str(DAEMON), "run", "--config", str(lay.config), "--pg-data", str(lay.pgdata)]
        argv += ["--scratch-dir", str(lay.scratch), "--pod-name", "bench-1"]
        argv += ["--pg-port", str(lay.pg_port), "--listen-addresses", "127.0.0.1"]
        argv += ["--status-host", "127.0.0.1", "--status-port", str(lay.status_port)]
        argv += ["--plugin-socket-dir", str(lay.root / "p")]
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        with open(self.log_path, "wb") as out:
            self.launched_wall = time.time()
            self.launched = time.perf_counter()
            self.proc = procs.popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.term_wall = 0.0
        self.first_answer = 0.0  # seconds after launch of the first HTTP answer
        self.first_asked = 0.0  # ... and of the request that got it

    def events(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
        return lines

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float) -> float:
        """Seconds from launch until /readyz answers 200, asking every POLL_INTERVAL."""
        deadline = self.launched + timeout
        while time.perf_counter() < deadline:
            asked = time.perf_counter() - self.launched
            status = http_status(self.lay.status_port, "/readyz")
            if status and not self.first_answer:
                self.first_asked, self.first_answer = asked, time.perf_counter() - self.launched
            if status == 200:
                return time.perf_counter() - self.launched
            if self.proc.poll() is not None:
                raise BenchError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(POLL_INTERVAL)
        raise BenchError(f"daemon not ready within {timeout:g} s:\n{self.tail()}")

    def wait_log(self, prefix: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.events():
                if str(line.get("msg", "")).startswith(prefix):
                    return line
            time.sleep(0.02)
        raise BenchError(f"no {prefix!r} in the daemon log:\n{self.tail()}")

    def stop_timed(self) -> float:
        """Seconds from SIGTERM until the daemon process has exited (exit 0 required)."""
        self.term_wall = time.time()
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        elapsed = time.perf_counter() - started
        if code != 0:
            raise BenchError(f"daemon exited {code} on SIGTERM:\n{self.tail()}")
        if postmaster_pid(self.lay.pgdata) is not None:
            raise BenchError("the daemon exited but its postmaster still runs")
        return elapsed

    def timeline(self, names: Mapping[str, str], since: float) -> dict[str, float]:
        """ms after ``since`` (epoch) at which each named message was first logged."""
        found: dict[str, float] = {}
        for line in self.events():
            msg, ts = event_time(line)
            if msg in names and msg not in found:
                found[msg] = (ts - since) * 1000
        return found


def event_time(line: dict[str, Any]) -> tuple[str, float]:
    """A log line's message and epoch time; PostgreSQL's records by their own log_time."""
    record = line.get("record")
    if isinstance(record, dict) and record.get("message") in (PG_READY, PG_DOWN):
        return str(record["message"]), pg_log_time(str(record["log_time"]))
    return str(line.get("msg")), float(line.get("ts", 0))


def pg_log_time(stamp: str) -> float:
    """Epoch seconds of a PostgreSQL log_time such as '2026-01-02 03:04:05.678 UTC'."""
    parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f %Z")
    return parsed.replace(tzinfo=UTC).timestamp()


def prepare_pgdata(lay: Layout, procs: Processes) -> None:
    """Let the daemon initialise PGDATA, finish its bootstrap, and stop cleanly."""
    daemon = Daemon(lay, procs, "init")
    daemon.wait_ready(180)
    daemon.wait_log("bootstrap complete", 60)
    daemon.wait_log("configuration applied", 60)
    daemon.stop_timed()


# -- pg_ctl (the reference) -------------------------------------------------------------


def pg_ctl(lay: Layout, *args: str) -> float:
    """Wall time of one ``pg_ctl`` run as postgres."""
    argv = ["runuser", "-u", RUN_AS, "--", str(PG_BIN / "pg_ctl"), "-D", str(lay.pgdata), *args]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"pg_ctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return elapsed


def pg_ctl_start(lay: Layout) -> float:
    # custom.conf points the logging collector at the daemon's FIFOs: nobody reads them now.
    options = [
        f"-c port={lay.pg_port}",
        "-c listen_addresses=127.0.0.1",
        f"-c unix_socket_directories={lay.run_dir}",
        "-c logging_collector=off",
        "-c log_destination=stderr",
    ]
    log_file = str(lay.root / "pg_ctl.log")
    return pg_ctl(lay, "start", "-w", "-l", log_file, "-o", " ".join(options))


def pg_ctl_stop(lay: Layout) -> float:
    return pg_ctl(lay, "stop", "-m", "fast", "-w")


def pg_ctl_log_time(lay: Layout, message: str, since: float) -> dict[str, float]:
    """ms after ``since`` (epoch) at which PostgreSQL logged ``message`` under pg_ctl."""
    for line in (lay.root / "pg_ctl.log").read_text(errors="replace").splitlines():
        match = PG_LOG_LINE.match(line)
        if match and match.group(2) == message:
            at = pg_log_time(match.group(1))
            if at >= since - 0.001:  # log_time is truncated to the millisecond
                return {message: (at - since) * 1000}
    return {}


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


def daemon_round(lay: Layout, procs: Processes, cfg: Config, i: int, out: Rounds) -> None:
    """Start the daemon, let it idle, SIGTERM it."""
    daemon = Daemon(lay, procs, f"r{i}")
    out.ours_start.append(daemon.wait_ready(60))
    daemon.wait_log("configuration applied")  # post-start work is over: idle from here
    time.sleep(cfg.idle)
    out.ours_stop.append(daemon.stop_timed())
    started = daemon.timeline(START_EVENTS, daemon.launched_wall)
    started[FIRST_ASKED] = daemon.first_asked * 1000
    started[FIRST_ANSWER] = daemon.first_answer * 1000
    out.start_timeline.append(started)
    out.stop_timeline.append(daemon.timeline(STOP_EVENTS, daemon.term_wall))


def pg_ctl_round(lay: Layout, cfg: Config, out: Rounds) -> None:
    """Start PostgreSQL with pg_ctl on the same PGDATA, let it idle, stop it."""
    launched = time.time()
    out.ref_start.append(pg_ctl_start(lay))
    out.ref_start_timeline.append(pg_ctl_log_time(lay, PG_READY, launched))
    time.sleep(cfg.idle)
    stopped = time.time()
    out.ref_stop.append(pg_ctl_stop(lay))
    out.ref_stop_timeline.append(pg_ctl_log_time(lay, PG_DOWN, stopped))


def one_round(lay: Layout, procs: Processes, cfg: Config, i: int, out: Rounds) -> None:
    daemon_round(lay, procs, cfg, i, out)
    pg_ctl_round(lay, cfg, out)
    print(
        f"  round {i + 1}/{cfg.rounds}: start {ms(out.ours_start[-1])} vs "
        f"{ms(out.ref_start[-1])} ms, stop {ms(out.ours_stop[-1])} vs {ms(out.ref_stop[-1])} ms",
        flush=True,
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


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
    lat = {p: latency(port, p, cfg.requests) for p in ("/readyz", "/healthz", "/failsafe")}
    loads = {p: load(port, p, cfg) for p in ("/healthz", "/failsafe")}
    rss_after = daemon_rss_mb(daemon.proc.pid)
    daemon.stop_timed()
    return Serving(rss, rss_after, bare_python_rss_mb(procs), idle_cpu, lat, loads)


# -- report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    metric: str
    ours: float
    ref: float
    ref_name: str
    unit: str
    target: str
    passed: bool | None  # None: no target, shown for information


def lifecycle_rows(rounds: Rounds) -> list[Row]:
    med = statistics.median
    start = med(rounds.ours_start) * 1000, med(rounds.ref_start) * 1000
    stop = med(rounds.ours_stop) * 1000, med(rounds.ref_stop) * 1000
    return [
        Row(
            "start-to-ready (median)",
            *start,
            "pg_ctl start -w",
            "ms",
            "<= ref + 250 ms",
            start[0] <= start[1] + 250,
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
            "<= 60 MiB",
            s.rss_mb <= 60,
        ),
    ]


def num(value: float, sign: str = "") -> str:
    return f"{value:{sign}.0f}" if abs(value) >= 100 else f"{value:{sign}.2f}"


def table_cells(r: Row) -> tuple[str, ...]:
    verdict = "info" if r.passed is None else ("PASS" if r.passed else "MISS")
    return (
        r.metric,
        f"{num(r.ours)} {r.unit}",
        f"{num(r.ref)} ({r.ref_name})",
        num(r.ours - r.ref, "+"),
        f"{r.ours / r.ref:.2f}x" if r.ref else "-",
        r.target,
        verdict,
    )


def print_table(rows: Sequence[Row]) -> None:
    header = ("metric", "ours", "reference", "ours-ref", "ratio", "target", "result")
    table = [header, *(table_cells(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


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


def run(cfg: Config, lay: Layout, procs: Processes) -> list[Row]:
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


def on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, shorter runs")
    parser.add_argument("--no-wrk", action="store_true", help="use the asyncio load generator")
    return parser.parse_args(argv)


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the daemon drops to postgres, pg_ctl runs via runuser")
    for needed in (DAEMON, PG_BIN / "pg_ctl"):
        if not os.access(needed, os.X_OK):
            raise BenchError(f"{needed} not found")


def main(argv: Sequence[str] | None = None) -> int:
    cfg = make_config(parse_args(argv))
    signal.signal(signal.SIGTERM, on_sigterm)
    procs = Processes()
    lay: Layout | None = None
    try:
        preflight()
        lay = make_layout()
        print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, dir {lay.root}")
        if not cfg.use_wrk:
            print(
                f"NOTE: {cfg.no_wrk_reason}: throughput is measured with the asyncio load "
                "generator instead (it shares the CPUs with the daemon)"
            )
        rows = run(cfg, lay, procs)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"foundation: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
        if lay is not None:
            kill_postmaster(lay.pgdata)
            shutil.rmtree(lay.root, ignore_errors=True)
    print("\nResults")
    print_table(rows)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
