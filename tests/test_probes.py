"""Probe strategies against real PostgreSQL: a primary run by the daemon, and a standby."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from instance_manager import settings as settings_mod
from instance_manager.cluster_model import ProbeWithStrategy
from instance_manager.postgres.sql import Session
from instance_manager.state import InstanceState
from instance_manager.web.probes import Checker, Result
from tests.daemon import PG_BIN, Daemon, Instance, base_spec, free_port, http_get, wait_for
from tests.waiting import eventually

Start = Callable[..., Daemon]


@pytest.mark.parametrize("kind", ["query", "streaming", "pg_isready"])
def test_primary_is_ready_with_every_strategy(
    instance: Instance, daemons: Start, kind: str
) -> None:
    instance.write_config(
        base_spec(probes={"readiness": {"type": kind}, "startup": {"type": kind}})
    )
    daemon = daemons(instance)
    daemon.wait_ready()
    assert http_get(instance.url("/readyz")) == (200, "OK")
    assert http_get(instance.url("/startupz")) == (200, "OK")
    assert http_get(instance.url("/healthz")) == (200, "OK")
    assert http_get(instance.url("/failsafe")) == (200, "OK")
    assert daemon.stop() == 0


@dataclass
class Standby:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    def conninfo(self) -> str:
        return f"host={self.root / 'run'} port={self.port} user=postgres dbname=postgres"

    def checker(self) -> Checker:
        s = settings_mod.load(
            None,
            {},
            {"pgData": str(self.root / "data"), "scratchDir": str(self.root), "port": self.port},
        )
        state = InstanceState(postmaster_running=True)
        return Checker(lambda: s, state, Session(s))


def as_postgres() -> dict[str, Any]:
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def start_standby(root: Path, primary_port: int, conninfo_port: int) -> Standby:
    data, run = root / "data", root / "run"
    run.mkdir()
    os.chown(run, *_ids())
    subprocess.run(
        [str(PG_BIN / "pg_basebackup"), "-D", str(data), "-h", "127.0.0.1",
         "-p", str(primary_port), "-U", "postgres", "-X", "stream", "-c", "fast"],
        check=True, capture_output=True, **as_postgres(),
    )  # fmt: skip
    (data / "pg_hba.conf").write_text("local all all trust\n")
    (data / "override.conf").write_text(
        f"primary_conninfo = 'host=127.0.0.1 port={conninfo_port} user=postgres'\n"
    )
    (data / "standby.signal").touch()
    for name in ("pg_hba.conf", "override.conf", "standby.signal"):
        os.chown(data / name, *_ids())
    port = free_port()
    proc = subprocess.Popen(
        [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"port={port}",
         "-c", "listen_addresses=", "-c", f"unix_socket_directories={run}",
         "-c", "logging_collector=off", "-c", "archive_mode=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_postgres(),
    )  # fmt: skip
    standby = Standby(root, port, proc)
    wait_for(lambda: _accepts(standby), 60, "the standby to accept connections")
    return standby


def _ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def _accepts(standby: Standby) -> bool:
    try:
        with psycopg.connect(standby.conninfo(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def primary(instance: Instance, daemons: Start) -> Iterator[Instance]:
    daemon = daemons(instance)
    daemon.wait_ready()
    yield instance
    daemon.stop()


@pytest.fixture
def standby_factory(primary: Instance) -> Iterator[Callable[[int], Standby]]:
    started: list[Standby] = []

    def start(conninfo_port: int) -> Standby:
        root = primary.root / f"sb{len(started)}"
        root.mkdir()
        os.chown(root, *_ids())
        standby = start_standby(root, primary.pg_port, conninfo_port)
        started.append(standby)
        return standby

    yield start
    for standby in started:
        standby.proc.terminate()
        standby.proc.wait(30)


def streaming(max_lag: str | None = None) -> ProbeWithStrategy:
    return ProbeWithStrategy(type="streaming", maximumLag=max_lag)


async def test_streaming_standby_passes_then_fails_when_lagging(
    primary: Instance, standby_factory: Callable[[int], Standby]
) -> None:
    standby = standby_factory(primary.pg_port)
    checker = standby.checker()

    async def connected() -> bool:
        return (await checker.check(streaming(), startup=False)).ok

    await eventually(connected, 10, "the standby to stream")
    assert (await checker.check(streaming("1Gi"), startup=False)).ok
    # Pause replay, then write WAL on the primary: the received-but-unreplayed gap grows.
    with psycopg.connect(standby.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with psycopg.connect(primary.conninfo(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE lag AS SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g"
        )

    async def lagging() -> Result | None:
        result = await checker.check(streaming("1Ki"), startup=False)
        return None if result.ok else result

    result = await eventually(lagging, 10, "the lag to exceed 1 KiB")
    assert result.message.startswith("streaming replica lagging; detectedLag=")
    assert "configuredLag=1024" in result.message
    assert (await checker.check(streaming(), startup=False)).ok  # no limit: connected is enough
    await checker.session.close()


async def test_standby_without_a_wal_receiver_is_not_ready(
    primary: Instance, standby_factory: Callable[[int], Standby]
) -> None:
    closed_port = free_port()  # nothing listens there: the WAL receiver cannot connect
    standby = standby_factory(closed_port)
    checker = standby.checker()
    result = await checker.check(streaming(), startup=False)
    assert not result.ok
    assert result.message == "replica not connected via streaming replication"
    # pg_isready only asks whether the server answers: a standby does.
    assert (await checker.check(ProbeWithStrategy(), startup=False)).ok
    await checker.session.close()
