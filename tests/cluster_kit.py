"""Three daemons sharing one Cluster document: a real standalone cluster on one machine.

``three_instances`` gives a ``Trio``: members ``pg-1``, ``pg-2``, ``pg-3`` (each an
``Instance`` with its own PGDATA, scratch directory and ports), one shared document
``<root>/doc/cluster.yaml`` in a directory owned by postgres (the daemons write their
reports beside it), and one fake CNPG-I plugin process (tests/fake_plugin.py) that all
three archive to and restore from. ``pg-1`` starts from a copy of the session's template
PGDATA (the first peer in sorted order is the target primary of a new cluster); the
others start empty and join. Nothing is started until a test calls ``start``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.daemon import (
    VENV_BIN,
    Daemon,
    Instance,
    chown_tree,
    copy_pgdata,
    kill_postgres,
    postmaster_pid,
    wait_for,
)
from tests.test_wal import PluginProcess, plugin_spec

NAMES = ("pg-1", "pg-2", "pg-3")
INSTANCE_MANAGER = str(VENV_BIN / "instance-manager")


class Trio:
    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.members = {name: Instance(root / name) for name in NAMES}
        for inst in self.members.values():
            inst.root.mkdir()
        copy_pgdata(template, self.members["pg-1"].pgdata)
        (root / "doc").mkdir()
        self.document = root / "doc" / "cluster.yaml"
        self.spec = plugin_spec(switchoverDelay=30, instances=len(NAMES))
        self.status: dict[str, Any] = {}
        self.annotations: dict[str, str] = {}  # metadata.annotations (fencing)
        self.instance_options: dict[str, Any] = {}  # beside the peers (statusPortTLS)
        self.write_document()
        chown_tree(root)
        self.plugin = PluginProcess(root).start()
        self.daemons: dict[str, Daemon] = {}

    # -- the document --
    def peers(self) -> dict[str, Any]:
        return {
            name: {"host": "127.0.0.1", "port": inst.pg_port, "statusPort": inst.status_port}
            for name, inst in self.members.items()
        }

    def write_document(self) -> None:
        doc = {
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "trio", "annotations": self.annotations},
            "spec": self.spec,
            "status": self.status,
            "instance": {"peers": self.peers(), **self.instance_options},
        }
        tmp = self.document.with_name(".cluster.yaml.tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.document)

    # -- daemons --
    def start(self, name: str, *extra: str) -> Daemon:
        inst = self.members[name]
        daemon = Daemon(
            inst,
            "--config", str(self.document),
            "--pod-name", name,
            "--plugin-socket-dir", str(self.plugin.socket_dir),
            *extra,
        )  # fmt: skip
        self.daemons[name] = daemon
        return daemon

    def start_all(self) -> None:
        for name in NAMES:
            self.start(name)

    def kill(self, name: str) -> None:
        """kill -9 of the daemon and of its postmaster."""
        self.daemons[name].kill()
        pid = postmaster_pid(self.members[name].pgdata)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- observing --
    def report(self, name: str) -> dict[str, Any]:
        path = self.root / "doc" / "cluster.yaml.status" / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def current_primary(self) -> str | None:
        claims = [
            (r.get("currentPrimaryTimestamp") or "", n)
            for n in NAMES
            if (r := self.report(n)).get("currentPrimary") == n
        ]
        return max(claims)[1] if claims else None

    def sql(self, name: str, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        inst = self.members[name]
        with psycopg.connect(inst.conninfo(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement.encode())
            return cur.fetchall() if cur.description else []

    def streaming_to(self, primary: str) -> set[str]:
        try:
            rows = self.sql(
                primary,
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
            )
        except psycopg.Error:
            return set()
        return {str(r[0]) for r in rows}

    def wait_streaming(self, primary: str, standbys: set[str], timeout: float = 120) -> None:
        wait_for(
            lambda: standbys <= self.streaming_to(primary),
            timeout,
            f"{sorted(standbys)} streaming from {primary}",
        )

    def cli(self, *args: str) -> list[str]:
        return [INSTANCE_MANAGER, *args, "--config", str(self.document)]

    def tails(self) -> str:
        return "\n\n".join(f"== {n}\n{d.tail(30)}" for n, d in self.daemons.items())

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        for inst in self.members.values():
            kill_postgres(inst.pgdata)
        self.plugin.stop()


@pytest.fixture
def three_instances(tmp_root: Path, template_pgdata: Path) -> Iterator[Trio]:
    trio = Trio(tmp_root, template_pgdata)
    try:
        yield trio
    finally:
        trio.close()


class Writer:
    """Inserts rows into ``load`` on whichever instance is the primary, one id at a time,
    and records each id whose COMMIT was acknowledged."""

    def __init__(self, trio: Trio) -> None:
        import threading

        self.trio = trio
        self.committed: list[int] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _connect(self) -> psycopg.Connection[Any] | None:
        for inst in self.trio.members.values():
            try:
                conn = psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=2)
            except psycopg.Error:
                continue
            if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                return conn
            conn.close()
        return None

    def _run(self) -> None:
        next_id = 1
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = self._connect()
                if conn is None:
                    self._stop.wait(0.02)
                    continue
            try:
                conn.execute("INSERT INTO load (id) VALUES (%s)", [next_id])
            except psycopg.Error:
                self.failures += 1
                conn.close()
                conn = None
                next_id += 1  # its fate is unknown: never reused
                continue
            self.committed.append(next_id)
            next_id += 1
        if conn is not None:
            conn.close()
