"""Standalone cluster: switchover through the CLI under a write load, and what it archives."""

from __future__ import annotations

import subprocess

import pytest

from tests.cluster_kit import Trio, Writer
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import wait_for

pytestmark = pytest.mark.slow


def switchover(trio: Trio, target: str) -> subprocess.CompletedProcess[str]:
    """``instance-manager switchover --to target``, which must succeed."""
    out = subprocess.run(
        trio.cli("switchover", "--to", target, "--timeout", "120"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr + trio.tails()
    return out


def started(trio: Trio) -> None:
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        for daemon in trio.daemons.values():
            daemon.wait_ready()
        for name in ("pg-2", "pg-3"):
            wait_for(lambda n=name: trio.report(n).get("ready"), 30, f"{name} ready")
    except AssertionError:
        raise AssertionError(trio.tails()) from None


def test_switchover_under_load_loses_no_acknowledged_transaction(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    trio.sql("pg-1", "CREATE TABLE load (id bigint PRIMARY KEY)")
    with Writer(trio) as writer:
        wait_for(lambda: len(writer.committed) >= 50, 30, "writes before the switchover")
        out = switchover(trio, "pg-2")
        before = len(writer.committed)
        wait_for(lambda: len(writer.committed) >= before + 50, 30, "writes after the switchover")
    assert "pg-2 is the current primary" in out.stdout
    assert "pg-1 rejoined as a standby" in out.stdout
    rows = {int(r[0]) for r in trio.sql("pg-2", "SELECT id FROM load")}
    lost = sorted(set(writer.committed) - rows)
    assert not lost, f"acknowledged but missing on the new primary: {lost[:20]}"
    trio.wait_streaming("pg-2", {"pg-1", "pg-3"})
    assert trio.current_primary() == "pg-2"
    # The new primary's timeline history and the former timeline's last, partial segment.
    stored = lambda: {p.name for p in trio.plugin.storage.iterdir()}  # noqa: E731
    wait_for(lambda: "00000002.history" in stored(), 30, "the history file in the archive")
    wait_for(
        lambda: any(n.startswith("00000001") and n.endswith(".partial") for n in stored()),
        30,
        "the .partial segment in the archive",
    )


def test_switchover_there_and_back(three_instances: Trio) -> None:
    """The former primary, now a standby, becomes primary again: claims are by time."""
    trio = three_instances
    started(trio)
    for target, old in (("pg-2", "pg-1"), ("pg-1", "pg-2")):
        wait_for(lambda t=target: trio.report(t).get("ready"), 30, f"{target} ready")
        out = switchover(trio, target)
        assert f"{old} rejoined as a standby" in out.stdout
        assert trio.current_primary() == target
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
    assert trio.report("pg-1")["timeLineID"] == 3
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(False,)]


def test_switchover_with_tls_status_ports(three_instances: Trio) -> None:
    """With ``instance.statusPortTLS`` the CLI asks the target's ``/readyz`` over HTTPS,
    verified against the cluster CA beside the document (plain HTTP would be refused)."""
    trio = three_instances
    trio.instance_options["statusPortTLS"] = True
    trio.write_document()
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        wait_for(lambda: trio.report("pg-2").get("ready"), 60, "pg-2 ready")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    out = switchover(trio, "pg-2")
    assert "pg-2 accepts connections as primary" in out.stdout
    assert trio.current_primary() == "pg-2"
