"""Our side of bench/cluster.py: three daemons in standalone cluster mode on 127.0.0.1.

The three daemons share one Cluster document (``k/cluster.yaml``) whose ``instance.peers``
names every instance; each daemon's own options come from its flags. The first peer in
sorted order (n1) runs initdb, the others join by cloning it. Switchover and failover are
the CLI playing the operator: ``instance-manager switchover --to NAME --config DOC`` and
``instance-manager failover --to NAME --config DOC``, which edit ``status.targetPrimary``
and wait until the change is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from harness import DAEMON, BenchError, Session, chown_tree, free_ports, postmaster_pid

PG_HBA = [
    "host all all 127.0.0.1/32 trust",
    "host replication postgres 127.0.0.1/32 trust",
]
COMMAND_TIMEOUT = 300
STOP_TIMEOUT = 60.0  # seconds a daemon is given to exit on SIGTERM before kill -9


def cli_available() -> str:
    """Empty when ``instance-manager switchover`` and ``failover`` exist, else why not."""
    for command in ("switchover", "failover"):
        done = subprocess.run(
            [str(DAEMON), command, "--help"], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            return f"`instance-manager {command}` does not exist yet"
    return ""


@dataclass
class Member:
    name: str
    root: Path
    pg_port: int
    status_port: int
    metrics_port: int
    local_port: int
    proc: subprocess.Popen[bytes] | None = None
    launches: int = 0
    launched_wall: float = 0.0  # time.time() of the last launch

    @property
    def pgdata(self) -> Path:
        return self.root / "d"


class OurCluster:
    """Three daemons n1..n3 sharing one Cluster document."""

    label = "ours"

    def __init__(self, session: Session, root: Path, count: int = 3) -> None:
        self.session, self.root = session, root
        self.members: dict[str, Member] = {}
        for i in range(1, count + 1):
            pg, status, metrics, local = free_ports(4)
            member = Member(f"n{i}", root / f"n{i}", pg, status, metrics, local)
            member.root.mkdir(mode=0o755)
            chown_tree(member.root)
            self.members[member.name] = member
        self.document = root / "k" / "cluster.yaml"
        self.document.parent.mkdir(mode=0o755)
        chown_tree(self.document.parent)
        self.document.write_text(yaml.safe_dump(self.document_body(), sort_keys=False))

    @property
    def ports(self) -> dict[str, int]:
        return {name: m.pg_port for name, m in self.members.items()}

    def document_body(self) -> dict[str, Any]:
        peers = {
            m.name: {"host": "127.0.0.1", "port": m.pg_port, "statusPort": m.status_port}
            for m in self.members.values()
        }
        return {
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "bench"},
            "spec": {"instances": len(peers), "postgresql": {"pg_hba": PG_HBA}},
            "instance": {"peers": peers},
        }

    # -- processes ---------------------------------------------------------------------

    def start_member(self, name: str) -> None:
        m = self.members[name]
        m.launches += 1
        argv = [str(DAEMON), "run", "--config", str(self.document), "--pod-name", name]
        argv += ["--pg-data", str(m.pgdata), "--scratch-dir", str(m.root / "s")]
        argv += ["--pg-port", str(m.pg_port), "--listen-addresses", "127.0.0.1"]
        argv += ["--status-host", "127.0.0.1", "--status-port", str(m.status_port)]
        argv += ["--metrics-port", str(m.metrics_port), "--local-port", str(m.local_port)]
        argv += ["--plugin-socket-dir", str(m.root / "p")]
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        m.launched_wall = time.time()
        with open(m.root / f"daemon-{m.launches}.log", "wb") as out:
            m.proc = self.session.procs.popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=m.root
            )

    def start(self, timeout: float) -> None:
        """Every daemon at once: n1 runs initdb, the others wait for it and join."""
        del timeout  # the caller waits for the streaming standbys
        for name in self.members:
            self.start_member(name)

    def check_alive(self) -> None:
        """BenchError when a daemon that should run has exited."""
        for name, m in self.members.items():
            if m.proc is not None and m.proc.poll() is not None:
                code = m.proc.returncode
                raise BenchError(f"{name}'s daemon exited {code}:\n{self.log_tail(name)}")

    def wait_settled(self, timeout: float) -> None:
        """Every daemon runs (their PostgreSQL were seen streaming by the caller)."""
        del timeout
        self.check_alive()

    def kill(self, name: str) -> None:
        """kill -9 of the member's daemon, then of its postmaster."""
        m = self.members[name]
        if m.proc is not None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
            m.proc = None
        pid = postmaster_pid(m.pgdata)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_node(self, name: str) -> str:
        """SIGTERM to the member's daemon; what went wrong, if anything (then kill -9)."""
        m = self.members[name]
        if m.proc is None:
            return ""
        m.proc.terminate()
        try:
            code = m.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            tail = self.log_tail(name, 6)
            self.kill(name)
            return f"{name}'s daemon still ran {STOP_TIMEOUT:g} s after SIGTERM (killed):\n{tail}"
        m.proc = None
        if postmaster_pid(m.pgdata) is not None:
            self.kill(name)
            return f"{name}'s daemon exited {code} and left its postmaster running (killed)"
        if code:
            return f"{name}'s daemon exited {code} on SIGTERM:\n{self.log_tail(name, 6)}"
        return ""

    def start_node(self, name: str) -> None:
        self.start_member(name)

    def wipe(self, name: str) -> None:
        """An empty PGDATA, as a new pod's volume."""
        pgdata = self.members[name].pgdata
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(mode=0o700)
        chown_tree(pgdata)

    # -- commands ----------------------------------------------------------------------

    def command(self, *args: str) -> str:
        argv = [str(DAEMON), *args, "--config", str(self.document)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if done.returncode != 0:
            raise BenchError(
                f"instance-manager {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def switchover(self, leader: str, to: str) -> None:
        del leader  # the document knows it
        self.command("switchover", "--to", to)

    def failover(self, to: str) -> None:
        self.command("failover", "--to", to)

    def timeline(self, name: str) -> list[str]:
        """The daemon's own log messages since its last launch, each the first time, in ms."""
        m = self.members[name]
        seen: dict[str, float] = {}
        text = ""
        with contextlib.suppress(OSError):
            text = (m.root / f"daemon-{m.launches}.log").read_text(errors="replace")
        for raw in text.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                line = json.loads(raw)
                msg = str(line["msg"])
                if line.get("logger") != "postgres" and msg not in seen:
                    seen[msg] = (float(line["ts"]) - m.launched_wall) * 1000
        return [f"{at:7.0f} ms  {msg}" for msg, at in sorted(seen.items(), key=lambda kv: kv[1])]

    def log_tail(self, name: str, lines: int = 20) -> str:
        m = self.members[name]
        try:
            text = (m.root / f"daemon-{m.launches}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
