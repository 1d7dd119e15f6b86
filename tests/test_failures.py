"""Failures never leave PostgreSQL unsupervised.

A reload that fails is reported and retried while PostgreSQL keeps running. Any other
failure stops a postmaster that still runs (staged, as for SIGTERM) before the daemon exits
non-zero. The metrics server starts again after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.daemon import (
    Daemon,
    Instance,
    base_spec,
    chown_tree,
    controldata_state,
    http_get,
    kill_postgres,
    postmaster_pid,
    wait_for,
)

Start = Callable[..., Daemon]
RELOAD_FAILED = "configuration reload failed; retrying"
STOPPING = "stopping PostgreSQL after a failure"


def with_params(**params: str) -> dict[str, Any]:
    spec = base_spec()
    spec["postgresql"]["parameters"].update(params)
    return spec


def show(inst: Instance, name: str) -> str:
    with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SHOW {name}".encode()).fetchone()
    assert row is not None
    return str(row[0])


def alive(pid: int | None) -> bool:
    return pid is not None and os.path.exists(f"/proc/{pid}")


def pg_status(inst: Instance) -> dict[str, Any]:
    code, body = http_get(inst.url("/pg/status"), 10.0)
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def metric(inst: Instance, name: str) -> float:
    code, body = http_get(f"http://127.0.0.1:{inst.metrics_port}/metrics", 15.0)
    assert code == 200, body
    for line in body.splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or head.startswith(name + "{"):
            return float(value)
    raise AssertionError(f"{name} not exposed")


def assert_no_postmaster(inst: Instance, pid: int | None) -> None:
    assert postmaster_pid(inst.pgdata) is None, "postmaster.pid left behind"
    assert not alive(pid), f"postmaster {pid} still runs"


def take_every_connection(inst: Instance) -> list[psycopg.Connection[Any]]:
    """Open sessions until PostgreSQL refuses one: every slot is then taken."""
    clients: list[psycopg.Connection[Any]] = []
    for _ in range(20):
        try:
            clients.append(psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5))
        except psycopg.OperationalError as exc:
            assert "too many clients" in str(exc)
            return clients
    raise AssertionError("max_connections was never reached")


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` cannot be replaced, written or removed, even by root (a read-only file)."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_reload_with_every_connection_taken_keeps_postgres_and_retries(
    instance: Instance, daemons: Start
) -> None:
    instance.write_config(with_params(max_connections="8"))
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    pid = postmaster_pid(instance.pgdata)
    clients = take_every_connection(instance)
    try:
        instance.write_config(with_params(max_connections="8", work_mem="7MB"))
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_log(RELOAD_FAILED)
        assert "too many clients" in failed["error"]
        daemon.wait_log(RELOAD_FAILED, count=2)  # retried
        assert daemon.proc.poll() is None and alive(pid)
        status = pg_status(instance)
        assert "too many clients" in status["configurationReloadError"]
        assert status["configurationReloadFailures"] >= 2
        assert metric(instance, "cnpg_collector_config_reload_failed") == 1.0
        assert metric(instance, "cnpg_collector_config_reload_failures_total") >= 2
    finally:
        for client in clients:
            client.close()
    daemon.wait_log("configuration applied", count=2, timeout=60)
    assert show(instance, "work_mem") == "7MB"
    assert "configurationReloadError" not in pg_status(instance)
    assert metric(instance, "cnpg_collector_config_reload_failed") == 0.0
    assert daemon.find("lifecycle crashed") == []
    assert daemon.stop() == 0


@pytest.mark.slow
def test_unwritable_config_file_on_reload_is_retried_until_writable(
    instance: Instance, daemons: Start
) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    pid = postmaster_pid(instance.pgdata)
    with immutable(instance.pgdata / "custom.conf"):
        instance.write_config(with_params(work_mem="7MB"))
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_log(RELOAD_FAILED)
        assert "custom.conf" in failed["error"]
        assert daemon.proc.poll() is None and alive(pid)
        assert "custom.conf" in pg_status(instance)["configurationReloadError"]
    daemon.wait_log("configuration applied", count=2, timeout=60)
    assert show(instance, "work_mem") == "7MB"
    assert daemon.stop() == 0


@pytest.mark.slow
def test_unwritable_config_file_at_start_stops_the_running_postmaster(
    instance: Instance, daemons: Start
) -> None:
    """The daemon died and left PostgreSQL running; the next one cannot write the
    configuration: it stops that postmaster (which it was about to adopt) and exits."""
    first = daemons(instance)
    first.wait_ready()
    pid = postmaster_pid(instance.pgdata)
    first.kill()  # SIGKILL: the postmaster keeps running
    assert alive(pid)
    instance.write_config(with_params(work_mem="7MB"))
    with immutable(instance.pgdata / "custom.conf"):
        second = daemons(instance)
        assert second.wait_exit(60) != 0
    assert second.find(STOPPING)[0]["pid"] == pid
    wait_for(lambda: not alive(pid), 10, "the postmaster to exit")
    assert_no_postmaster(instance, pid)
    assert controldata_state(instance.pgdata) == "shut down"


@pytest.mark.slow
def test_failing_post_init_sql_stops_postgres_before_exiting(
    tmp_root: Path, daemons: Start
) -> None:
    inst = Instance(tmp_root)
    inst.write_config(base_spec(bootstrap={"initdb": {"postInitSQL": ["SELECT 1/0"]}}))
    daemon = daemons(inst)
    assert daemon.wait_exit(120) != 0
    stopping = daemon.find(STOPPING)
    assert stopping and "division by zero" in stopping[0]["error"]
    assert [line["mode"] for line in daemon.find("PostgreSQL stopped")] == ["smart"]
    assert_no_postmaster(inst, stopping[0]["pid"])
    assert controldata_state(inst.pgdata) == "shut down"


def crash_with_an_overflowed_snapshot(inst: Instance, daemons: Start) -> None:
    """Leave PGDATA crashed in the middle of a transaction with more subtransactions than
    a snapshot can list: a standby started on it never reaches hot standby."""
    daemon = daemons(inst)
    daemon.wait_ready()
    with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5) as admin:
        admin.execute("CREATE TABLE t (i int)")
        busy = psycopg.connect(inst.conninfo(), connect_timeout=5)
        for i in range(100):
            busy.execute(f"SAVEPOINT s{i}".encode())
            busy.execute("INSERT INTO t VALUES (1)")
        admin.execute("CHECKPOINT")  # logs the running transactions, overflowed
    daemon.kill()
    kill_postgres(inst.pgdata)  # SIGQUIT: a crash, the transaction stays open in the WAL
    busy.close()
    (inst.pgdata / "standby.signal").touch()
    chown_tree(inst.pgdata)


@pytest.mark.slow
def test_startup_timeout_stops_postgres_before_exiting(instance: Instance, daemons: Start) -> None:
    crash_with_an_overflowed_snapshot(instance, daemons)
    instance.write_config(base_spec(startDelay=3))
    daemon = daemons(instance)
    assert daemon.wait_exit(60) != 0
    stopping = daemon.find(STOPPING)
    assert stopping and "did not accept connections within 3 s" in stopping[0]["error"]
    assert daemon.find("PostgreSQL stopped")
    wait_for(lambda: not alive(stopping[0]["pid"]), 10, "the postmaster to exit")
    assert_no_postmaster(instance, stopping[0]["pid"])


@pytest.mark.slow
def test_metrics_server_restarts_after_a_failure(instance: Instance, daemons: Start) -> None:
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", instance.metrics_port))
    taken.listen()
    try:
        daemon = daemons(instance)
        daemon.wait_ready()
        failed = daemon.wait_log("metrics server failed; restarting")
        assert str(instance.metrics_port) in failed["error"]
    finally:
        taken.close()
    daemon.wait_log("metrics server listening", timeout=30)
    assert metric(instance, "cnpg_collector_up") == 1.0
    assert http_get(instance.url("/readyz"))[0] == 200
    assert daemon.stop() == 0
