"""What the benchmarks share: directories, ports, processes, the daemon, pg_ctl, the table.

Everything a benchmark starts goes through a :class:`Session`, whose ``close`` stops it
all (child processes, then any postmaster still named in a ``postmaster.pid`` under its
directories) and removes the directories; :func:`run_bench` calls it in a ``finally``,
on errors, Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DAEMON = Path(sys.executable).parent / "instance-manager"
REPO = Path(__file__).resolve().parent.parent
RUN_AS = "postgres"
POLL_INTERVAL = 0.002  # how often /readyz is asked while the daemon starts


class BenchError(Exception):
    """The benchmark could not measure something (not a missed target)."""


# -- directories, ports -----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One instance: its directories under ``root``, its two ports."""

    root: Path
    pg_port: int
    status_port: int
    plugin_dir: Path | None = None  # --plugin-socket-dir; root/p when not given

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
    def wal_socket(self) -> Path:
        from instance_manager.postgres.config import wal_socket_in

        return wal_socket_in(self.scratch)

    @property
    def plugins(self) -> Path:
        return self.plugin_dir or self.root / "p"

    @property
    def config(self) -> Path:
        # In a directory of its own, as a ConfigMap volume: the daemon watches that
        # directory, and its log files next to the settings file would wake it up.
        return self.root / "k" / "c.yaml"

    def write_config(self, text: str) -> None:
        self.config.parent.mkdir(exist_ok=True)
        self.config.write_text(text)


_given_ports: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Free TCP ports on 127.0.0.1 below 32768 (higher ones are ephemeral)."""
    found: list[int] = []
    start = 21000 + (os.getpid() % 97) * 113
    for candidate in range(start, 32000):
        if candidate in _given_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        found.append(candidate)
        _given_ports.add(candidate)
        if len(found) == count:
            return found
    raise BenchError("no free ports")


def give_to_postgres(path: Path) -> None:
    user = pwd.getpwnam(RUN_AS)
    os.chown(path, user.pw_uid, user.pw_gid)


def chown_tree(path: Path) -> None:
    user = pwd.getpwnam(RUN_AS)
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


# -- processes --------------------------------------------------------------------------


class Processes:
    """Every process started here, so that all of them can be stopped at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
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


class Session:
    """The directories and processes of one benchmark run, all undone by ``close``."""

    def __init__(self) -> None:
        self.procs = Processes()
        self.roots: list[Path] = []

    def make_root(self, prefix: str) -> Path:
        """A short directory under /tmp, given to postgres, removed by ``close``."""
        root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.roots.append(root)
        os.chmod(root, 0o755)
        give_to_postgres(root)
        return root

    def layout(self, root: Path, cluster_yaml: str, plugin_dir: Path | None = None) -> Layout:
        """An instance in ``root`` (made if needed), with two free ports and its config."""
        root.mkdir(mode=0o755, exist_ok=True)
        give_to_postgres(root)
        pg_port, status_port = free_ports(2)
        lay = Layout(root, pg_port, status_port, plugin_dir)
        lay.write_config(cluster_yaml)
        return lay

    def close(self) -> None:
        self.procs.stop_all()
        for root in self.roots:
            for pidfile in root.glob("**/postmaster.pid"):
                kill_postmaster(pidfile.parent)
            shutil.rmtree(root, ignore_errors=True)


# -- HTTP, timing -------------------------------------------------------------------------


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


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def wait_until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    """The first truthy result of ``check``; BenchError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


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
        argv += ["--plugin-socket-dir", str(lay.plugins)]
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
            self.check_alive()
            time.sleep(POLL_INTERVAL)
        raise BenchError(f"daemon not ready within {timeout:g} s:\n{self.tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")

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


def compile_package() -> None:
    """Byte-compile the package into its __pycache__ (ignored by git), as an installed
    package is: the daemon, once it is ``postgres``, cannot write bytecode itself, and a
    stale or missing .pyc would be compiled from source at every start it times."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [sys.executable, "-m", "compileall", "-q", str(REPO / "instance_manager")]
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)


def prepare_pgdata(lay: Layout, procs: Processes) -> None:
    """Let the daemon initialise PGDATA, finish its bootstrap, and stop cleanly."""
    daemon = Daemon(lay, procs, "init")
    daemon.wait_ready(180)
    daemon.wait_log("bootstrap complete", 60)
    daemon.wait_log("configuration applied", 60)
    daemon.stop_timed()


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


def num(value: float, sign: str = "") -> str:
    return f"{value:{sign}.0f}" if abs(value) >= 100 else f"{value:{sign}.2f}"


def table_cells(r: Row, diff: bool) -> tuple[str, ...]:
    verdict = "info" if r.passed is None else ("PASS" if r.passed else "MISS")
    return (
        r.metric,
        f"{num(r.ours)} {r.unit}",
        f"{num(r.ref)} ({r.ref_name})",
        *((num(r.ours - r.ref, "+"),) if diff else ()),
        f"{r.ours / r.ref:.2f}x" if r.ref else "-",
        r.target,
        verdict,
    )


def print_table(rows: Sequence[Row], diff: bool = True) -> None:
    """The final table; ``diff`` adds an ours-ref column."""
    header = ("metric", "ours", "reference", *(("ours-ref",) if diff else ()), "ratio")
    header += ("target", "result")
    table = [header, *(table_cells(r, diff) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


# -- main -------------------------------------------------------------------------------


def print_load(when: str) -> None:
    """The 1-minute load average: every benchmark prints it at its start and its end."""
    load = os.getloadavg()[0]
    print(f"1-minute load at {when}: {load:.2f} ({os.cpu_count()} CPUs)", flush=True)


def on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def preflight(*needed: Path) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the daemon drops to postgres, pg_ctl runs via runuser")
    for path in (DAEMON, PG_BIN / "pg_ctl", *needed):
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} not found")


def run_bench(
    name: str,
    body: Callable[[Session], list[Row]],
    diff: bool = True,
    errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``body``, undo everything it started, print the table; the exit status.

    0: every target met; 1: a target missed; 2: the benchmark failed (``BenchError``,
    a subprocess or OS error, or one of ``errors``), with a message on stderr.
    """
    signal.signal(signal.SIGTERM, on_sigterm)
    failures: tuple[type[BaseException], ...] = (BenchError, subprocess.SubprocessError, OSError)
    session = Session()
    print_load("start")
    try:
        preflight()
        rows = body(session)
    except failures + errors as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        print_load("end")
        return 2
    finally:
        session.close()
    print("\nResults")
    print_table(rows, diff)
    print_load("end")
    return 0 if all(r.passed is not False for r in rows) else 1
