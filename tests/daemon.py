"""Test helpers: run the real daemon against real PostgreSQL 15, and clean up after it.

The suite runs as root; the daemon drops to the ``postgres`` account by itself, so every
directory handed to it is created here and given to that account.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# The test virtualenv by its real path: in a clone in a 0700 home, .venv is a symlink to
# /opt/instance-manager/... that the postgres account cannot follow through the home.
VENV_BIN = Path(sys.executable).parent.resolve()
# For a child that runs as postgres or drops root: the installed package, not the clone's
# source tree (run it with cwd="/" so that `python -m`/`-c` does not import from the clone).
PYTHON = str(VENV_BIN / "python")
RUN_AS = "postgres"


def pg_user() -> pwd.struct_passwd:
    return pwd.getpwnam(RUN_AS)


def chown_tree(path: Path) -> None:
    user = pg_user()
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


_used_ports: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below 32768 (higher ones are ephemeral)."""
    for candidate in range(20000 + (os.getpid() % 50) * 200, 32000):
        if candidate in _used_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _used_ports.add(candidate)
        return candidate
    raise RuntimeError("no free port")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def controldata_state(pgdata: Path) -> str:
    out = subprocess.run(
        [str(PG_BIN / "pg_controldata"), "-D", str(pgdata)],
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Database cluster state:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(out)


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """A process with that PID exists (signal 0)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def postgres_runs(pgdata: Path) -> bool:
    """The postmaster of ``pgdata`` (by its pidfile) is running."""
    return pid_alive(postmaster_pid(pgdata))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Instance:
    """Directories and ports of one test instance."""

    root: Path
    pg_port: int = field(default_factory=free_port)
    status_port: int = field(default_factory=free_port)
    local_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    spec: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"  # where the test reaches its status port and PostgreSQL

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def scratch(self) -> Path:
        return self.root / "c"

    @property
    def config_file(self) -> Path:
        return self.root / "cluster.yaml"

    @property
    def socket_dir(self) -> Path:
        return self.scratch / "run"

    def write_config(self, spec: dict[str, Any] | None = None) -> None:
        if spec is not None:
            self.spec = spec
        doc = {
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "test"},
            "spec": self.spec,
        }
        self.config_file.write_text(yaml.safe_dump(doc))

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.status_port}{path}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.pg_port} user=postgres dbname={dbname}"


# Rules the tests need: the suite connects over TCP as root, without a password.
TEST_HBA = ["host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]


def base_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "postgresql": {"pg_hba": list(TEST_HBA), "parameters": {"max_connections": "20"}},
        "smartShutdownTimeout": 5,
        "stopDelay": 30,
        "startDelay": 60,
    }
    spec.update(overrides)
    return spec


class Daemon:
    """`instance-manager run` as a child of the test, output captured as JSON lines."""

    def __init__(
        self,
        inst: Instance,
        *extra: str,
        prefix: tuple[str, ...] = (),
        program: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.inst = inst
        self.log_path = inst.root / f"daemon-{time.monotonic_ns()}.log"
        argv = [
            *prefix,
            str(program or VENV_BIN / "instance-manager"),
            "run",
            "--config",
            str(inst.config_file),
            "--pg-data",
            str(inst.pgdata),
            "--scratch-dir",
            str(inst.scratch),
            "--pod-name",
            "test-1",
            "--pg-port",
            str(inst.pg_port),
            "--listen-addresses",
            "127.0.0.1",
            "--status-host",
            "127.0.0.1",
            "--status-port",
            str(inst.status_port),
            "--plugin-socket-dir",
            str(inst.root / "plugins"),
            "--local-port",
            str(inst.local_port),
            "--metrics-port",
            str(inst.metrics_port),
            *extra,
        ]
        self._out = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        environ = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        environ.update(env or {})  # e.g. Kubernetes mode's (tests/kube_cluster_kit.py)
        self.proc = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, env=environ, cwd=inst.root
        )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"msg": raw, "logger": "raw"})
        return out

    def messages(self) -> list[str]:
        return [str(line.get("msg")) for line in self.lines()]

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("msg") == msg]

    def wait_log(self, msg: str, timeout: float = 30.0, count: int = 1) -> dict[str, Any]:
        found: list[dict[str, Any]] = wait_for(
            lambda: len(self.find(msg)) >= count and self.find(msg), timeout, repr(msg)
        )
        return found[count - 1]

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.tail()}")
            return http_get(self.inst.url("/readyz"), 1.0)[0] == 200

        wait_for(ready, timeout, "/readyz to answer 200")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit:\n{self.tail()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        code = self.wait_exit()
        self._out.close()
        return code

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._out.closed:
            self._out.close()


def kill_postgres(pgdata: Path) -> None:
    """Last-resort cleanup: stop whatever postmaster still serves ``pgdata``."""
    pid = postmaster_pid(pgdata)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def copy_pgdata(template: Path, dest: Path) -> None:
    subprocess.run(["cp", "-a", str(template), str(dest)], check=True)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def bootstrap_template(root: Path, spec: dict[str, Any]) -> Path:
    """A PGDATA under ``root`` bootstrapped by `instance-manager run` with ``spec``, then
    stopped cleanly: the template tests and benchmarks copy."""
    inst = Instance(root)
    inst.write_config(spec)
    daemon = Daemon(inst)
    try:
        daemon.wait_ready(120)
        daemon.wait_log("bootstrap complete")
        assert daemon.stop() == 0, daemon.tail()
    finally:
        daemon.kill()
        kill_postgres(inst.pgdata)
    return inst.pgdata
