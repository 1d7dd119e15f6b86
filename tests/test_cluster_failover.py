"""Standalone cluster: failover after kill -9, the former primary's rewind, and a re-clone."""

from __future__ import annotations

import subprocess

import pytest

from tests.cluster_kit import Trio
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import PG_BIN, RUN_AS, rmtree, wait_for
from tests.test_cluster_switchover import started

pytestmark = pytest.mark.slow


def switch_segments(trio: Trio, name: str, count: int) -> list[str]:
    """Write a little and switch WAL ``count`` times on ``name``; the closed segments."""
    closed = []
    for i in range(count):
        trio.sql(name, f"CREATE TABLE IF NOT EXISTS w (i int); INSERT INTO w VALUES ({i})")
        closed.append(str(trio.sql(name, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))
    return closed


def test_failover_after_kill_and_the_old_primary_rewinds(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    trio.sql("pg-1", "CREATE TABLE before_failover AS SELECT 1 AS i")
    wait_for(
        lambda: trio.sql("pg-2", "SELECT to_regclass('before_failover') IS NOT NULL")[0][0],
        30,
        "the table on pg-2",
    )
    # Segments pg-1 cannot archive (the plugin is down) when it dies: its demotion
    # archives them before pg_rewind (CloudNativePG 1.25).
    trio.plugin.stop()
    unarchived = switch_segments(trio, "pg-1", 2)
    trio.kill("pg-1")
    trio.plugin.start()
    out = subprocess.run(
        trio.cli("failover", "--to", "pg-2", "--timeout", "120"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr + trio.tails()
    assert "pg-2 accepts connections as primary" in out.stdout
    trio.sql("pg-2", "CREATE TABLE after_failover AS SELECT 2 AS i")
    trio.wait_streaming("pg-2", {"pg-3"})
    # The former primary comes back: pg_rewind, then it streams from the new primary.
    daemon = trio.start("pg-1")
    trio.wait_streaming("pg-2", {"pg-1", "pg-3"})
    assert daemon.find("pg_rewind done"), daemon.tail()
    drained = daemon.find("ready WAL archived before the rewind")
    assert drained and drained[0]["count"] >= len(unarchived)
    stored = {p.name for p in trio.plugin.storage.iterdir()}
    assert set(unarchived) <= stored
    messages = daemon.messages()
    assert messages.index("ready WAL archived before the rewind") < messages.index("pg_rewind done")
    assert not daemon.find("pg_rewind cannot help: cloning again")
    wait_for(
        lambda: trio.sql("pg-1", "SELECT to_regclass('after_failover') IS NOT NULL")[0][0],
        30,
        "the new primary's table on pg-1",
    )
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(True,)]
    assert trio.current_primary() == "pg-2"


def test_a_data_directory_pg_rewind_cannot_fix_is_cloned_again(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    assert trio.daemons["pg-3"].stop() == 0
    assert (trio.report("pg-3")["role"], trio.report("pg-3")["ready"]) == ("unknown", False)
    pgdata = trio.members["pg-3"].pgdata
    rmtree(pgdata)
    # Another system: same name, no standby.signal, a different system identifier.
    subprocess.run(
        ["runuser", "-u", RUN_AS, "--", str(PG_BIN / "initdb"), "-D", str(pgdata), "-A", "trust"],
        check=True,
        capture_output=True,
    )
    daemon = trio.start("pg-3")
    daemon.wait_log("clone complete", timeout=120)
    daemon.wait_ready()
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
    assert daemon.find("pg_rewind cannot help: cloning again"), daemon.tail()
    moved = [p for p in pgdata.parent.iterdir() if p.name.startswith("pgdata.old-")]
    assert len(moved) == 1
    ids = {
        str(trio.sql(n, "SELECT system_identifier FROM pg_control_system()")[0][0])
        for n in ("pg-1", "pg-3")
    }
    assert len(ids) == 1
