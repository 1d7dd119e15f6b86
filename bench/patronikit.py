"""Patroni's side of bench/cluster.py: etcd and three Patroni 4 nodes on 127.0.0.1.

Patroni 4 comes from PyPI into a virtualenv of its own (``/opt/bench-patroni/venv``),
etcd from Debian's ``etcd-server``; :func:`ensure_installed` installs whatever is missing.
etcd runs as root on a temporary data directory, each Patroni node as ``postgres`` on
PostgreSQL 15, with every port below 32768. The DCS timings are the smallest Patroni
accepts (``ttl`` 20 s, ``loop_wait`` 1 s, ``retry_timeout`` 5 s), the setting under which
its failover is fastest; replicas are cloned with ``pg_basebackup --checkpoint=fast``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from harness import PG_BIN, RUN_AS, BenchError, Session, free_ports, postmaster_pid, wait_until

VENV = Path("/opt/bench-patroni/venv")
PATRONI = VENV / "bin" / "patroni"
PATRONICTL = VENV / "bin" / "patronictl"
ETCD = Path("/usr/bin/etcd")
SCOPE = "bench"
PG_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
]


def ensure_installed(install: bool) -> None:
    """etcd (Debian's etcd-server) and Patroni 4 (PyPI, own venv); BenchError when missing."""
    if not os.access(ETCD, os.X_OK):
        if not install:
            raise BenchError(
                f"{ETCD} not found (apt-get install etcd-server, or drop --no-install)"
            )
        print("Installing etcd-server (apt-get) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run_checked(["apt-get", "update", "-qq"], env)
        run_checked(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "etcd-server"], env
        )
    if not patroni_runs():
        if not install:
            raise BenchError(f"{PATRONI} not found (see bench/README.md, or drop --no-install)")
        print(f"Installing Patroni 4 into {VENV} (pip) ...", flush=True)
        os.umask(0o022)  # the postgres account runs Patroni from this venv
        shutil.rmtree(VENV, ignore_errors=True)
        run_checked(["/usr/bin/python3", "-m", "venv", str(VENV)], None)
        pip = [str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        run_checked([*pip, "patroni[etcd3]>=4,<5", "psycopg2-binary"], None)


def patroni_runs() -> bool:
    """Patroni starts as postgres (its venv's interpreter must be readable by that account)."""
    if not os.access(PATRONI, os.X_OK):
        return False
    argv = ["runuser", "-u", RUN_AS, "--", str(PATRONI), "--version"]
    return subprocess.run(argv, capture_output=True, timeout=120).returncode == 0


def run_checked(argv: list[str], env: dict[str, str] | None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")


def patroni_version() -> str:
    done = subprocess.run([str(PATRONI), "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def http_json(port: int, path: str) -> Any:
    """The JSON body of a GET on 127.0.0.1:port, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return json.loads(exc.read())
        return None
    except (OSError, ValueError):
        return None


def start_etcd(session: Session, root: Path) -> int:
    """One etcd member on 127.0.0.1; its client port."""
    client, peer = free_ports(2)
    data = root / "etcd"
    peer_url, client_url = f"http://127.0.0.1:{peer}", f"http://127.0.0.1:{client}"
    argv = [str(ETCD), "--name", "bench", "--data-dir", str(data)]
    argv += ["--listen-client-urls", client_url, "--advertise-client-urls", client_url]
    argv += ["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url]
    argv += ["--initial-cluster", f"bench={peer_url}", "--log-level", "warn"]
    with open(root / "etcd.log", "wb") as out:
        session.procs.popen(argv, stdout=out, stderr=subprocess.STDOUT)
    health = lambda: (http_json(client, "/health") or {}).get("health") == "true"  # noqa: E731
    wait_until(health, 30, "etcd to be healthy", 0.05)
    return client


@dataclass
class Node:
    name: str
    root: Path
    pg_port: int
    api_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.root / "d"

    @property
    def config(self) -> Path:
        return self.root / "patroni.yml"


class PatroniCluster:
    """Three Patroni nodes p1..p3 sharing one etcd; p1 bootstraps."""

    label = "Patroni"

    def __init__(self, session: Session, root: Path, etcd_port: int, count: int = 3) -> None:
        self.session, self.root, self.etcd_port = session, root, etcd_port
        self.nodes: dict[str, Node] = {}
        for i in range(1, count + 1):
            pg_port, api_port = free_ports(2)
            node = Node(f"p{i}", root / f"p{i}", pg_port, api_port)
            node.root.mkdir(mode=0o755)
            user = pwd.getpwnam(RUN_AS)
            os.chown(node.root, user.pw_uid, user.pw_gid)
            node.config.write_text(yaml.safe_dump(self.node_config(node), sort_keys=False))
            self.nodes[node.name] = node

    @property
    def ports(self) -> dict[str, int]:
        return {name: node.pg_port for name, node in self.nodes.items()}

    def node_config(self, node: Node) -> dict[str, Any]:
        return {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True},
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.pgdata),
                "bin_dir": str(PG_BIN),
                "pgpass": str(node.root / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "bench"},
                    "replication": {"username": "replicator", "password": "bench"},
                },
                "parameters": {"unix_socket_directories": str(node.root)},
                "pg_hba": PG_HBA,
                "basebackup": [{"checkpoint": "fast"}],
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
            },
        }

    # -- processes ---------------------------------------------------------------------

    def start_node(self, name: str) -> None:
        node = self.nodes[name]
        user = pwd.getpwnam(RUN_AS)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(node.root), "LC_ALL": "C.UTF-8"}
        with open(node.root / "patroni.log", "ab") as out:
            node.proc = self.session.procs.popen(
                [str(PATRONI), str(node.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=node.root,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
            )

    def start(self, timeout: float) -> None:
        """p1 bootstraps, then the others clone from it."""
        first = next(iter(self.nodes))
        self.start_node(first)
        wait_until(lambda: self.leader() == first, timeout, "Patroni to bootstrap", 0.1)
        for name in list(self.nodes)[1:]:
            self.start_node(name)

    def leader(self) -> str | None:
        for node in self.nodes.values():
            body = http_json(node.api_port, "/cluster")
            if isinstance(body, dict):
                for member in body.get("members", []):
                    if member.get("role") == "leader" and member.get("state") == "running":
                        return str(member["name"])
        return None

    def settled(self) -> bool:
        """Patroni itself reports a running leader and every replica streaming."""
        body = None
        for node in self.nodes.values():
            body = http_json(node.api_port, "/cluster")
            if isinstance(body, dict):
                break
        if not isinstance(body, dict):
            return False
        members = body.get("members", [])
        leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        replicas = [
            m for m in members if m.get("role") != "leader" and m.get("state") == "streaming"
        ]
        return (
            len(members) == len(self.nodes)
            and len(leaders) == 1
            and len(replicas) == len(members) - 1
        )

    def check_alive(self) -> None:
        """BenchError when a Patroni node that should run has exited."""
        for name, node in self.nodes.items():
            if node.proc is not None and node.proc.poll() is not None:
                code = node.proc.returncode
                raise BenchError(f"Patroni {name} exited {code}:\n{self.log_tail(name)}")

    def wait_settled(self, timeout: float) -> None:
        wait_until(self.settled, timeout, "Patroni to report every replica streaming", 0.1)

    def kill(self, name: str) -> None:
        """kill -9 of the node's Patroni, then of its postmaster."""
        node = self.nodes[name]
        if node.proc is not None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
            node.proc = None
        pid = postmaster_pid(node.pgdata)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_node(self, name: str) -> str:
        """SIGTERM to the node's Patroni; what went wrong, if anything (then kill -9)."""
        node = self.nodes[name]
        if node.proc is None:
            return ""
        node.proc.terminate()
        try:
            node.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill(name)
            return f"Patroni {name} still ran 60 s after SIGTERM (killed)"
        node.proc = None
        if postmaster_pid(node.pgdata) is not None:
            self.kill(name)
            return f"Patroni {name} exited and left its postmaster running (killed)"
        return ""

    def wipe(self, name: str) -> None:
        shutil.rmtree(self.nodes[name].pgdata, ignore_errors=True)

    # -- commands ----------------------------------------------------------------------

    def patronictl(self, *args: str) -> str:
        argv = [str(PATRONICTL), "-c", str(next(iter(self.nodes.values())).config), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "failed, details" in done.stdout:
            raise BenchError(f"patronictl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def switchover(self, leader: str, to: str) -> None:
        self.patronictl("switchover", "--leader", leader, "--candidate", to, "--force")

    def failover(self, to: str) -> None:
        self.patronictl("failover", "--candidate", to, "--force")

    def timeline(self, name: str) -> list[str]:
        """Not parsed for Patroni: its log is in the node's directory."""
        del name
        return []

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.nodes[name].root / "patroni.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
