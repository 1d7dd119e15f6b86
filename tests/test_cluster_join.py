"""Standalone cluster: standbys join by cloning the primary and stream from it."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster_kit import Trio
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import chown_tree, http_get, wait_for
from tests.test_cluster_switchover import started

pytestmark = pytest.mark.slow


def test_two_standbys_join_and_stream(three_instances: Trio) -> None:
    trio = three_instances
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        for daemon in trio.daemons.values():
            daemon.wait_ready()
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    assert trio.current_primary() == "pg-1"
    trio.sql("pg-1", "CREATE TABLE joined (i int); INSERT INTO joined VALUES (42)")
    for name in ("pg-2", "pg-3"):
        wait_for(
            lambda n=name: trio.sql(n, "SELECT to_regclass('joined') IS NOT NULL")[0][0],
            30,
            f"the table on {name}",
        )
        assert trio.sql(name, "SELECT i FROM joined") == [(42,)]
        assert trio.sql(name, "SELECT pg_is_in_recovery()") == [(True,)]
        slot = trio.sql(name, "SELECT slot_name FROM pg_stat_wal_receiver")
        assert slot == [(f"_cnpg_{name.replace('-', '_')}",)]
        assert trio.daemons[name].find("clone complete")
        url = trio.members[name].url("/pg/status")

        def role(url: str = url) -> str:
            code, body = http_get(url)
            assert code == 200, body
            return str(json.loads(body)["cluster"]["role"])

        wait_for(lambda: role() == "replica", 10, f"{name}'s role in /pg/status")
        shown = json.loads(http_get(url)[1])["cluster"]
        assert (shown["role"], shown["currentPrimary"], shown["targetPrimary"]) == (
            "replica",
            "pg-1",
            "pg-1",
        )
        assert shown["join"]["phase"] == "done" and shown["join"]["percent"] == 100

        def receiver(url: str = url) -> str:
            replication = json.loads(http_get(url)[1])["cluster"]["replication"] or [{}]
            return str(replication[0].get("status"))

        # The reconciler refreshes the WAL receiver's state on its next pass.
        wait_for(lambda: receiver() == "streaming", 10, f"{name}'s WAL receiver in /pg/status")
    for name in ("pg-2", "pg-3"):
        wait_for(lambda n=name: trio.report(n).get("ready"), 30, f"{name} reported ready")
        assert trio.report(name)["role"] == "replica"
    assert trio.report("pg-1")["role"] == "primary"
    slots = trio.sql("pg-1", "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1")
    assert slots == [("_cnpg_pg_2", True), ("_cnpg_pg_3", True)]
    # At rest each instance rewrites its report about once a second, not on every peer's.
    seen = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen.add(trio.report("pg-1").get("updated"))
        time.sleep(0.01)
    assert len(seen) <= 5, sorted(seen)


def test_a_new_document_reaches_every_instance(three_instances: Trio) -> None:
    """The reconciler applies each new version of the document: synchronous standbys."""
    trio = three_instances
    started(trio)
    postgresql = dict(trio.spec["postgresql"])
    postgresql["synchronous"] = {"method": "any", "number": 1, "dataDurability": "required"}
    trio.spec = {**trio.spec, "postgresql": postgresql}
    trio.write_document()
    wanted = 'ANY 1 ("pg-2","pg-3","pg-1")'  # CNPG lists the primary last
    wait_for(
        lambda: trio.sql("pg-1", "SHOW synchronous_standby_names") == [(wanted,)],
        30,
        "synchronous_standby_names on the primary",
    )
    rows = trio.sql("pg-1", "SELECT application_name, sync_state FROM pg_stat_replication")
    assert {state for _, state in rows} == {"quorum"}
    trio.sql("pg-1", "CREATE TABLE synced AS SELECT 1 AS i")  # a commit that waits
    # A standby already carries the set it needs once promoted (itself last): in force from
    # its first commit as the primary, not after the reload that follows the promotion.
    for name in ("pg-2", "pg-3"):

        def ready_for_promotion(name: str = name) -> bool:
            value = str(trio.sql(name, "SHOW synchronous_standby_names")[0][0])
            others = [n for n in ("pg-1", "pg-2", "pg-3") if n != name]
            return (
                value.startswith("ANY 1 (")
                and value.endswith(f'"{name}")')
                and all(f'"{n}"' in value for n in others)
            )

        wait_for(ready_for_promotion, 30, f"synchronous_standby_names on {name}")


def test_join_progress_is_in_the_status(three_instances: Trio) -> None:
    trio = three_instances
    first = trio.start("pg-1")
    first.wait_ready()
    trio.sql(
        "pg-1",
        "CREATE TABLE big AS SELECT g, repeat('x', 900) AS pad FROM generate_series(1, 100000) g",
    )
    joining = trio.start("pg-2")
    url = trio.members["pg-2"].url("/pg/status")
    phases: list[dict[str, object]] = []

    def joined() -> bool:
        code, body = http_get(url, 1.0)
        if code == 200:
            phases.append(json.loads(body)["cluster"]["join"])
        return bool(phases) and phases[-1].get("phase") == "done"

    wait_for(joined, 120, "the join to finish")
    cloning = [p for p in phases if p.get("phase") == "cloning"]
    assert cloning, phases
    assert all(p["source"] == "pg-1" for p in cloning)
    assert [p["percent"] for p in cloning] == sorted(p["percent"] for p in cloning)
    joining.wait_ready()
    assert joining.find("clone progress")


def test_a_failed_clone_is_tried_again(three_instances: Trio) -> None:
    """pg_basebackup fails (PGDATA holds a stray file): the daemon retries, it does not exit."""
    trio = three_instances
    trio.start("pg-1").wait_ready()
    pgdata = trio.members["pg-2"].pgdata
    pgdata.mkdir(mode=0o700)
    stray = pgdata / "stray"
    stray.write_text("not a data directory")
    chown_tree(pgdata)
    joining = trio.start("pg-2")
    joining.wait_log("join failed; retrying", timeout=60)
    assert joining.proc.poll() is None
    stray.unlink()
    joining.wait_log("clone complete", timeout=60)
    joining.wait_ready()
    trio.wait_streaming("pg-1", {"pg-2"})
