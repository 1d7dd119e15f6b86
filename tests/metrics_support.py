"""Helpers of the metrics tests: a PostgreSQL run by the daemon, settings and connections
for an in-process exporter, and a small parser of the text exposition.

The test process runs as root, so the in-process exporter connects over TCP to
127.0.0.1 (the test pg_hba trusts it) as cnpg_metrics_exporter; the daemon's own path,
the Unix socket with peer authentication, is tested by running the exporter as the
postgres account.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from instance_manager import settings as settings_mod
from instance_manager.metrics.connections import EXPORTER_USER, Connection, Connector
from instance_manager.metrics.server import MetricsServer
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from tests.conftest import make_root
from tests.daemon import (
    Daemon,
    Instance,
    base_spec,
    copy_pgdata,
    free_port,
    kill_postgres,
    rmtree,
)
from tests.waiting import eventually


@contextmanager
def running_postgres(template: Path, **spec: Any) -> Iterator[tuple[Instance, Daemon]]:
    """A copy of the template PGDATA served by the daemon; stopped and removed afterwards."""
    root = make_root()
    inst = Instance(root)
    copy_pgdata(template, inst.pgdata)
    inst.write_config(base_spec(**spec))
    daemon = Daemon(inst)
    try:
        daemon.wait_ready()
        yield inst, daemon
        if daemon.proc.poll() is None:
            daemon.stop()
    finally:
        daemon.kill()
        kill_postgres(inst.pgdata)
        rmtree(root)


def sql(inst: Instance, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    """Run a statement as the superuser (over TCP, trusted)."""
    with psycopg.connect(inst.conninfo(dbname), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(statement.encode())
        return cur.fetchall() if cur.description else []


def tcp_connector(inst: Instance) -> Connector:
    async def connect(dbname: str) -> Connection:
        return await psycopg.AsyncConnection.connect(
            host="127.0.0.1",
            port=inst.pg_port,
            user=EXPORTER_USER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=3,
        )

    return connect


def write_settings(
    inst: Instance,
    path: Path,
    *,
    monitoring: dict[str, Any] | None = None,
    files: list[Path] | None = None,
    metrics_port: int | None = None,
    spec: dict[str, Any] | None = None,
    **instance: Any,
) -> Callable[[], Settings]:
    """Write a Cluster file for an in-process exporter; the callable re-reads it."""
    doc = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "metrics-test"},
        "spec": {**(spec or {}), "monitoring": monitoring or {}},
        "instance": {
            "pgData": str(inst.pgdata),
            "scratchDir": str(inst.scratch),
            "port": inst.pg_port,
            "statusHost": "127.0.0.1",
            "metricsPort": metrics_port or free_port(),
            "metricsQueriesFiles": [str(f) for f in files or []],
            "pluginSocketDir": str(inst.root / "plugins"),
            **instance,
        },
    }
    path.write_text(yaml.safe_dump(doc))

    def load() -> Settings:
        return settings_mod.load(path, {}, {})

    return load


def primary_state() -> InstanceState:
    return InstanceState(postmaster_running=True, is_primary=True)


@dataclass
class Exposition:
    """A parsed scrape: sample (name, sorted labels) -> value, and name -> type."""

    text: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def value(self, metric: str, /, **labels: str) -> float:
        return self.samples[(metric, tuple(sorted(labels.items())))]

    def get(self, metric: str, /, **labels: str) -> float | None:
        return self.samples.get((metric, tuple(sorted(labels.items()))))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Exposition:
    out = Exposition(text)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out.types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, raw_labels, value = match.groups()
        labels = tuple(
            sorted(
                (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                for k, v in _LABEL.findall(raw_labels or "")
            )
        )
        key = (name, labels)
        assert key not in out.samples, f"duplicate sample {key}"
        out.samples[key] = float(value)
    return out


class ServerTask:
    """MetricsServer.run() as a task of the test's loop."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ServerTask:
        task = self.task = asyncio.create_task(self.server.run())
        await eventually(lambda: self.server.port is not None or task.done(), 5, "the server")
        if task.done():
            task.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/metrics"
