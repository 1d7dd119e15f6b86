"""The chaos cluster: tests/cluster_kit.Trio with each instance in its own network namespace.

Each member listens on its namespace address (``tests/chaos/netbridge.py``); the peers in the
document name those addresses, so replication, pg_rewind and the isolation check's
``/failsafe`` calls cross the bridge and a cut is a real partition. The test reaches
PostgreSQL over each instance's Unix socket (filesystem paths cross namespaces), as a client
on the same host would: the writers still reach a cut primary. The fake plugin's storage is a
small tmpfs (``store/``) that the repository-full fault fills. Synchronous replication with
``dataDurability: required`` makes an acknowledged commit durable on a standby, so a failover
to the most advanced standby keeps every acknowledged row.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.chaos.netbridge import Bridge
from tests.cluster_kit import NAMES, Trio
from tests.daemon import TEST_HBA, Daemon, Instance, kill_postgres, postmaster_pid, wait_for

PLUGIN_TIMEOUT = 2.0  # instance.pluginTimeout: the SIGSTOP fault outlasts it


@dataclass
class NetInstance(Instance):
    """An Instance reached through its namespace address (HTTP) and its Unix socket (SQL)."""

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.pg_port} user=postgres dbname={dbname}"


def mount_tmpfs(path: Path, megabytes: int) -> None:
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "chaos-store", str(path)],
        check=True,
        capture_output=True,
    )


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


class ChaosTrio(Trio):
    def __init__(self, root: Path, template: Path, net: Bridge, store_mb: int) -> None:
        self.net = net
        self.store_mb = store_mb
        mount_tmpfs(root / "store", store_mb)
        super().__init__(root, template)
        self.members = {
            name: NetInstance(
                root=inst.root,
                pg_port=inst.pg_port,
                status_port=inst.status_port,
                local_port=inst.local_port,
                metrics_port=inst.metrics_port,
                host=net.address(name),
            )
            for name, inst in self.members.items()
        }
        hba = [*TEST_HBA, f"host all all {net.subnet}.0/24 trust"]
        hba.append(f"host replication all {net.subnet}.0/24 trust")
        self.spec["postgresql"]["pg_hba"] = hba
        self.spec["postgresql"]["pg_ident"] = ["local root postgres"]
        self.spec["postgresql"]["synchronous"] = {
            "method": "any",
            "number": 1,
            "dataDurability": "required",
        }
        self.spec["switchoverDelay"] = 10
        self.instance_options["pluginTimeout"] = PLUGIN_TIMEOUT
        self.write_document()
        # Every daemon started, restarted ones included, with its start time (the RSS check).
        self.started_at: list[tuple[str, Daemon, float]] = []

    def peers(self) -> dict[str, Any]:
        return {
            name: {"host": self.net.address(name), "port": i.pg_port, "statusPort": i.status_port}
            for name, i in self.members.items()
        }

    def start(self, name: str, *extra: str) -> Daemon:
        inst = self.members[name]
        address = self.net.address(name)
        daemon = Daemon(
            inst,
            "--config", str(self.document),
            "--pod-name", name,
            "--plugin-socket-dir", str(self.plugin.socket_dir),
            "--listen-addresses", address,
            "--status-host", address,
            *extra,
            prefix=self.net.prefix(name),
        )  # fmt: skip
        self.daemons[name] = daemon
        self.started_at.append((name, daemon, time.monotonic()))
        return daemon

    # -- the plugin process --
    def plugin_pid(self) -> int | None:
        proc = self.plugin.proc
        return None if proc is None or proc.poll() is not None else proc.pid

    def restart_plugin(self) -> None:
        """Start the plugin again after it died (its stale socket removed first)."""
        (self.plugin.socket_dir / "fake.example.io").unlink(missing_ok=True)
        self.plugin.start()

    # -- observing --
    def connect(self, name: str, timeout: int = 3) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.members[name].conninfo(), autocommit=True, connect_timeout=timeout
        )

    def writable(self) -> list[str]:
        """The members that answer SQL and are not in recovery."""
        out = []
        for name in NAMES:
            try:
                with self.connect(name, 2) as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                        out.append(name)
            except psycopg.Error:
                continue
        return out

    def receive_lsn(self, name: str) -> int:
        """How far a standby has received WAL (0 when it cannot tell)."""
        try:
            with self.connect(name, 2) as conn:
                row = conn.execute(
                    "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
                    " - '0/0'::pg_lsn"
                ).fetchone()
        except psycopg.Error:
            return 0
        return int(row[0]) if row and row[0] is not None else 0

    def healthy(self) -> str | None:
        """The primary's name once every daemon is ready and both standbys stream from it."""
        primary = self.current_primary()
        if primary is None:
            return None
        for name, daemon in self.daemons.items():
            if daemon.proc.poll() is not None:
                raise AssertionError(f"daemon {name} exited {daemon.proc.returncode}")
            if not self.report(name).get("ready"):
                return None
        others = set(NAMES) - {primary}
        if not others <= self.streaming_to(primary):
            return None
        return primary if self.writable() == [primary] else None

    def wait_healthy(self, timeout: float = 240) -> str:
        try:
            found: str = wait_for(self.healthy, timeout, "a healthy cluster")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tails()}") from None
        return found

    def kill_postmaster(self, name: str) -> bool:
        pid = postmaster_pid(self.members[name].pgdata)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        proc = self.plugin.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
        for _, daemon, _ in self.started_at:
            daemon.kill()
        for inst in self.members.values():
            kill_postgres(inst.pgdata)
        self.plugin.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            postmaster_pid(i.pgdata) for i in self.members.values()
        ):
            time.sleep(0.1)
        umount(self.root / "store")
