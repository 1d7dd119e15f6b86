"""A single instance (no peers) applies a parameter that needs a restart by restarting in
place; ``primaryUpdateStrategy: supervised`` leaves it pending for a person."""

from __future__ import annotations

import signal
from collections.abc import Callable

import psycopg
import pytest

from tests.daemon import Daemon, Instance, base_spec, postmaster_pid, wait_for

pytestmark = pytest.mark.slow
Start = Callable[..., Daemon]


def show(inst: Instance, name: str) -> str | None:
    try:
        with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(f"SHOW {name}".encode()).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else str(row[0])


def change(inst: Instance, daemon: Daemon, **overrides: object) -> None:
    spec = base_spec(**overrides)
    spec["postgresql"]["parameters"]["shared_buffers"] = "64MB"
    inst.write_config(spec)
    daemon.signal(signal.SIGHUP)


def test_a_single_instance_restarts_itself_in_place(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    before = postmaster_pid(instance.pgdata)
    change(instance, daemon)
    restart = daemon.wait_log("restarting in place to apply parameters")
    assert "shared_buffers" in restart["pending_restart"]
    wait_for(lambda: show(instance, "shared_buffers") == "64MB", 60, "shared_buffers applied")
    assert postmaster_pid(instance.pgdata) != before
    daemon.wait_ready()
    assert daemon.find("postmaster exited unexpectedly") == []
    assert daemon.stop() == 0


def test_supervised_leaves_the_restart_to_a_person(instance: Instance, daemons: Start) -> None:
    instance.write_config(base_spec(primaryUpdateStrategy="supervised"))
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    before = postmaster_pid(instance.pgdata)
    change(instance, daemon, primaryUpdateStrategy="supervised")
    daemon.wait_log("parameters wait for a restart: supervised, waiting for user action")
    assert postmaster_pid(instance.pgdata) == before
    assert show(instance, "shared_buffers") != "64MB"
    assert daemon.find("restarting in place to apply parameters") == []
    assert daemon.stop() == 0
