"""Standalone cluster: rolling restarts on three real instances (cluster/rolling.py).

A parameter that needs a restart goes standbys first (name order), the primary last, in
place or by a switchover; a lowered hot-standby-sensitive parameter goes primary first.
The order is read from ``pg_postmaster_start_time()`` of each instance.
"""

from __future__ import annotations

import datetime as dt
import subprocess

import psycopg
import pytest

from tests.cluster_kit import NAMES, Trio, Writer
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import wait_for

pytestmark = pytest.mark.slow
ROLL_TIMEOUT = 240


def started(trio: Trio) -> None:
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        for name in ("pg-2", "pg-3"):
            wait_for(lambda n=name: trio.report(n).get("ready"), 60, f"{name} ready")
    except AssertionError:
        raise AssertionError(trio.tails()) from None


def show(trio: Trio, name: str, parameter: str) -> str | None:
    try:
        return str(trio.sql(name, f"SHOW {parameter}")[0][0])
    except (psycopg.Error, IndexError):
        return None


def start_times(trio: Trio) -> dict[str, dt.datetime]:
    return {n: trio.sql(n, "SELECT pg_postmaster_start_time()")[0][0] for n in NAMES}


def change(trio: Trio, **parameters: str) -> None:
    trio.spec["postgresql"]["parameters"].update(parameters)
    trio.write_document()


def wait_applied(trio: Trio, parameter: str, value: str) -> None:
    try:
        for name in NAMES:
            wait_for(
                lambda n=name: show(trio, n, parameter) == value,
                ROLL_TIMEOUT,
                f"{parameter} = {value} on {name}",
            )
        for name in NAMES:
            wait_for(
                lambda n=name: trio.report(n).get("pendingRestart") is False,
                60,
                f"{name} reports nothing pending",
            )
    except AssertionError:
        raise AssertionError(trio.tails()) from None


def order(times: dict[str, dt.datetime], since: dt.datetime) -> list[str]:
    restarted = [n for n in NAMES if times[n] > since]
    assert restarted == list(NAMES), (times, since)
    return sorted(restarted, key=lambda n: times[n])


def writes_go_on(writer: Writer) -> None:
    before = len(writer.committed)
    wait_for(lambda: len(writer.committed) >= before + 20, 60, "writes after the restarts")


def test_rolling_restart_in_place_then_a_decrease_primary_first(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    trio.sql("pg-1", "CREATE TABLE load (id bigint PRIMARY KEY)")
    with Writer(trio) as writer:
        since = max(start_times(trio).values())
        change(trio, shared_buffers="64MB")
        wait_applied(trio, "shared_buffers", "64MB")
        assert order(start_times(trio), since) == ["pg-2", "pg-3", "pg-1"]
        writes_go_on(writer)
        assert trio.current_primary() == "pg-1"

        since = max(start_times(trio).values())
        change(trio, max_connections="15")  # base_spec has 20
        wait_applied(trio, "max_connections", "15")
        assert order(start_times(trio), since) == ["pg-1", "pg-2", "pg-3"]
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        writes_go_on(writer)
    assert trio.current_primary() == "pg-1"
    for name in NAMES:
        assert trio.daemons[name].find("postmaster exited unexpectedly") == [], trio.tails()


def test_rolling_restart_by_switchover(three_instances: Trio) -> None:
    trio = three_instances
    trio.spec["primaryUpdateMethod"] = "switchover"
    trio.write_document()
    started(trio)
    trio.sql("pg-1", "CREATE TABLE load (id bigint PRIMARY KEY)")
    with Writer(trio) as writer:
        since = max(start_times(trio).values())
        change(trio, shared_buffers="64MB")
        wait_applied(trio, "shared_buffers", "64MB")
        new = trio.current_primary()
        assert new in ("pg-2", "pg-3"), trio.tails()
        wait_for(lambda: trio.report("pg-1").get("role") == "replica", 60, "pg-1 a standby")
        times = start_times(trio)
        assert order(times, since)[-1] == "pg-1"  # the former primary restarted last
        assert times["pg-2"] < times["pg-3"]
        trio.wait_streaming(new, {n for n in NAMES if n != new})
        writes_go_on(writer)
    rows = {int(r[0]) for r in trio.sql(new, "SELECT id FROM load")}
    assert not set(writer.committed) - rows, "acknowledged writes lost in the switchover"
    logged = trio.daemons["pg-1"].find("rolling restart")
    assert any(line.get("action") == "switchover" for line in logged), trio.tails()


def test_supervised_primary_waits_for_a_switchover(three_instances: Trio) -> None:
    trio = three_instances
    trio.spec["primaryUpdateStrategy"] = "supervised"
    trio.write_document()
    started(trio)
    change(trio, shared_buffers="64MB")
    for name in ("pg-2", "pg-3"):
        wait_for(lambda n=name: show(trio, n, "shared_buffers") == "64MB", ROLL_TIMEOUT, name)
    wait_for(
        lambda: any(
            line.get("action") == "supervised"
            for line in trio.daemons["pg-1"].find("rolling restart")
        ),
        60,
        "pg-1 waiting for user action",
    )
    assert trio.report("pg-1")["pendingRestart"] is True
    assert show(trio, "pg-1", "shared_buffers") != "64MB"
    wait_for(lambda: trio.report("pg-2").get("ready"), 60, "pg-2 ready")
    out = subprocess.run(
        trio.cli("switchover", "--to", "pg-2", "--timeout", "120"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr + trio.tails()
    wait_applied(trio, "shared_buffers", "64MB")
    assert trio.current_primary() == "pg-2"
    trio.wait_streaming("pg-2", {"pg-1", "pg-3"})
