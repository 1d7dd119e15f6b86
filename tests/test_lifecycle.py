"""The daemon against real PostgreSQL 15: bootstrap, restart, adoption, crashes, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.daemon import (
    PG_BIN,
    Daemon,
    Instance,
    base_spec,
    controldata_state,
    http_get,
    postmaster_pid,
    wait_for,
)

Start = Callable[..., Daemon]


def query(inst: Instance, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
    with psycopg.connect(inst.conninfo(dbname), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description else []


def test_fresh_bootstrap_creates_roles_database_and_config(tmp_root: Path, daemons: Start) -> None:
    inst = Instance(tmp_root)
    inst.write_config(
        base_spec(
            bootstrap={"initdb": {"database": "shop", "owner": "clerk", "dataChecksums": True}}
        )
    )
    daemon = daemons(inst)
    daemon.wait_ready(120)
    daemon.wait_log("bootstrap complete")
    roles = {r[0] for r in query(inst, "SELECT rolname FROM pg_roles")}
    assert {"streaming_replica", "cnpg_metrics_exporter", "clerk"} <= roles
    owner = query(inst, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname='shop'")
    assert owner == [("clerk",)]
    assert query(inst, "SHOW data_checksums") == [("on",)]
    custom = (inst.pgdata / "custom.conf").read_text().splitlines()
    assert custom[-1].startswith("cnpg.config_sha256 = '")
    conf = (inst.pgdata / "postgresql.conf").read_text()
    assert conf.count("include 'custom.conf'") == 1
    assert conf.count("include 'override.conf'") == 1
    assert daemon.stop() == 0
    assert controldata_state(inst.pgdata) == "shut down"


def test_restart_on_existing_pgdata_keeps_includes_once(instance: Instance, daemons: Start) -> None:
    for _ in range(2):
        daemon = daemons(instance)
        daemon.wait_ready()
        assert daemon.stop() == 0, daemon.tail()
    conf = (instance.pgdata / "postgresql.conf").read_text()
    assert conf.count("include 'custom.conf'") == 1
    assert controldata_state(instance.pgdata) == "shut down"


def test_adopts_a_running_postmaster(instance: Instance, daemons: Start) -> None:
    first = daemons(instance)
    first.wait_ready()
    pid = postmaster_pid(instance.pgdata)
    first.kill()  # SIGKILL: the daemon dies, its postmaster keeps running
    assert pid is not None and os.path.exists(f"/proc/{pid}")
    second = daemons(instance)
    second.wait_ready()
    adopted = second.wait_log("adopting the running postmaster")
    assert adopted["pid"] == pid
    assert second.stop() == 0
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the adopted postmaster to exit")
    assert controldata_state(instance.pgdata) == "shut down"


def test_removes_a_stale_pidfile(instance: Instance, daemons: Start) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (instance.pgdata / "postmaster.pid").write_text(
        f"{dead.pid}\n{instance.pgdata}\n0\n{instance.pg_port}\n/tmp\n*\n0 0\nready\n"
    )
    daemon = daemons(instance)
    daemon.wait_ready()
    assert daemon.find("removing a stale pidfile")
    assert postmaster_pid(instance.pgdata) != dead.pid
    assert daemon.stop() == 0


def test_postmaster_kill_exit_policy_exits_nonzero(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance, "--on-postmaster-exit", "exit")
    daemon.wait_ready()
    pid = postmaster_pid(instance.pgdata)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert daemon.wait_exit(30) == 1
    crash = daemon.find("postmaster exited unexpectedly")[0]
    assert crash["status"] == "killed by signal 9 (SIGKILL)"
    assert isinstance(crash["last_log_lines"], list) and crash["last_log_lines"]


def test_postmaster_kill_restart_policy_restarts_and_probes_flip(
    instance: Instance, daemons: Start
) -> None:
    daemon = daemons(instance, "--on-postmaster-exit", "restart")
    daemon.wait_ready()
    old = postmaster_pid(instance.pgdata)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    # While PostgreSQL is down the readiness probe must fail.
    wait_for(lambda: http_get(instance.url("/readyz"))[0] == 500, 10, "/readyz to fail")
    status, body = http_get(instance.url("/readyz"))
    assert status == 500 and body
    # An unexpected outage is not "expected": the startup probe fails rather than Skipped.
    wait_for(
        lambda: http_get(instance.url("/startupz"))[1].startswith("startup check failed"),
        10,
        "/startupz to fail",
    )
    daemon.wait_log("restarting PostgreSQL after back-off")
    daemon.wait_ready(60)
    new = postmaster_pid(instance.pgdata)
    assert new is not None and new != old
    assert query(instance, "SELECT 1") == [(1,)]
    assert daemon.stop() == 0


@pytest.mark.slow
def test_smart_stop_held_by_a_client_falls_back_to_fast(instance: Instance, daemons: Start) -> None:
    instance.write_config(base_spec(smartShutdownTimeout=2, stopDelay=30))
    daemon = daemons(instance)
    daemon.wait_ready()
    with psycopg.connect(instance.conninfo(), autocommit=True) as client:
        client.execute("SELECT 1")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
        elapsed = time.monotonic() - started
    stages = [(line["mode"], line["outcome"]) for line in daemon.find("shutdown stage ended")]
    assert stages == [("smart", "timeout"), ("fast", "exited")]
    assert elapsed >= 2
    assert controldata_state(instance.pgdata) == "shut down"


def test_second_sigterm_escalates_one_stage(instance: Instance, daemons: Start) -> None:
    instance.write_config(base_spec(smartShutdownTimeout=60, stopDelay=120))
    daemon = daemons(instance)
    daemon.wait_ready()
    with psycopg.connect(instance.conninfo(), autocommit=True) as client:
        client.execute("SELECT 1")
        daemon.signal(signal.SIGTERM)
        daemon.wait_log("requesting shutdown")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
    stages = [(line["mode"], line["outcome"]) for line in daemon.find("shutdown stage ended")]
    assert stages == [("smart", "escalated"), ("fast", "exited")]


def test_csv_log_records_arrive_as_json(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    query(instance, "DO $$ BEGIN RAISE LOG 'marker-from-test'; END $$")

    def record() -> list[dict[str, object]]:
        return [
            line
            for line in daemon.lines()
            if line.get("logger") == "postgres"
            and isinstance(line.get("record"), dict)
            and line["record"].get("message") == "marker-from-test"  # type: ignore[union-attr]
        ]

    found = wait_for(record, 10, "the CSV record")[0]
    assert found["msg"] == "record"
    assert found["logging_pod"] == "test-1"
    assert found["record"]["error_severity"] == "LOG"
    assert daemon.stop() == 0


def test_postgres_runs_unprivileged(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    pid = postmaster_pid(instance.pgdata)
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid != 0
    assert Path(PG_BIN / "postgres").resolve() == Path(os.readlink(f"/proc/{pid}/exe"))
    assert daemon.stop() == 0
