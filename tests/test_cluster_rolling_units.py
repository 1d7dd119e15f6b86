"""The rolling-restart rule every instance computes from the reports (cluster/rolling.py),
and the cache's ContinuousArchiving derivation (cluster/cache.py)."""

from __future__ import annotations

from typing import Any

from instance_manager.cluster import cache, rolling
from instance_manager.cluster.observe import Observed
from instance_manager.cluster.reports import Report
from instance_manager.cluster.rolling import Turn, turn
from instance_manager.cluster_model import Cluster
from instance_manager.state import InstanceState, WalState

SPEC = "abc"
NAMES = ["pg-1", "pg-2", "pg-3"]


def report(name: str, role: str = "replica", **fields: Any) -> Report:
    values: dict[str, Any] = {"ready": True, "appliedSpec": SPEC, "pendingRestart": True}
    values.update(fields)
    return Report(name=name, role=role, **values)


def decide(me: Report, others: list[Report], strategy: str = "", method: str = "") -> Turn:
    return turn(me, "pg-1", NAMES, {r.name: r for r in others}, strategy, method)


def test_standbys_go_first_in_name_order() -> None:
    primary = report("pg-1", "primary")
    two, three = report("pg-2"), report("pg-3")
    assert decide(two, [primary, three]).action == "restart"
    assert decide(three, [primary, two]) == Turn("wait", "standbys in name order: waiting for pg-2")
    assert decide(primary, [two, three]).action == "wait"
    done = report("pg-2", pendingRestart=False)
    assert decide(three, [primary, done]).action == "restart"
    # Restarted but not streaming yet, or still on the former configuration: wait.
    for not_yet in (
        report("pg-2", pendingRestart=False, ready=False),
        report("pg-2", appliedSpec="x"),
    ):
        assert decide(three, [primary, not_yet]).action == "wait"


def test_the_primary_goes_last_by_its_strategy_and_method() -> None:
    primary = report("pg-1", "primary")
    two = report("pg-2", pendingRestart=False, replayLsn="0/5000000")
    three = report("pg-3", pendingRestart=False, replayLsn="0/6000000")
    assert decide(primary, [two, three]).action == "restart"
    assert decide(primary, [two, three], strategy="supervised").action == "supervised"
    move = decide(primary, [two, three], method="switchover")
    assert (move.action, move.target) == ("switchover", "pg-3")
    even = report("pg-3", pendingRestart=False, replayLsn="0/5000000")
    assert decide(primary, [two, even], method="switchover").target == "pg-2"
    # A standby that is down blocks the primary.
    assert decide(primary, [two]).action == "wait"


def test_a_decrease_goes_primary_first() -> None:
    primary = report("pg-1", "primary", pendingRestartForDecrease=True)
    two = report("pg-2", pendingRestartForDecrease=True)
    three = report("pg-3", pendingRestartForDecrease=True)
    assert decide(primary, [two, three]).action == "restart"
    assert decide(primary, [two, three], strategy="supervised").action == "supervised"
    assert decide(two, [primary, three]).action == "wait"
    # A standby that sees no decrease of its own still waits for the primary's.
    assert decide(report("pg-2"), [primary, three]).action == "wait"
    restarted = report("pg-1", "primary", pendingRestart=False)
    assert decide(two, [restarted, three]).action == "restart"
    assert decide(three, [restarted, two]).action == "wait"


def test_nothing_pending_or_nothing_confirmed_means_no_move() -> None:
    primary = report("pg-1", "primary")
    assert decide(report("pg-2", pendingRestart=False), [primary]) is rolling.NOTHING
    assert decide(report("pg-2", appliedSpec=""), [primary]) is rolling.NOTHING
    assert decide(report("pg-2", role="unknown"), [primary]) is rolling.NOTHING


def test_a_single_peer_restarts_itself() -> None:
    alone = report("pg-1", "primary")
    assert turn(alone, "pg-1", ["pg-1"], {}, None, "switchover").action == "restart"


def test_pg_control_values_decide_when_a_standby_may_lower_them() -> None:
    control = {"max_connections setting": "20", "max_wal_senders setting": "10"}
    assert not rolling.received({"max_connections": 15}, control)
    assert rolling.received({"max_connections": 15}, {**control, "max_connections setting": "15"})
    assert not rolling.received({"max_connections": 15}, {})


def test_continuous_archiving_follows_the_newest_outcome() -> None:
    wal = WalState()
    assert cache.archiving_error(wal) is None
    wal.archived("000000010000000000000001")
    assert cache.archiving_error(wal) == ""
    wal.failed("000000010000000000000002", "bucket unreachable")
    assert cache.archiving_error(wal) == "bucket unreachable"
    wal.archived("000000010000000000000002")
    assert cache.archiving_error(wal) == ""


def test_an_observation_sent_before_the_reload_was_confirmed_reports_no_applied_spec() -> None:
    """The race CI once hit: a standby's report said "new spec, nothing pending" from an
    observation sent before its reload was confirmed, so the next standby restarted
    before it."""
    cluster = Cluster()
    state = InstanceState(written_config_hash="new", loaded_config_hash="new")
    before = Observed(role="replica", ready=True, pending_restart=False, config_hash="old")
    assert rolling.applied_spec(before, state, cluster) == ""
    after = Observed(role="replica", ready=True, pending_restart=True, config_hash="new")
    assert rolling.applied_spec(after, state, cluster) == rolling.spec_hash(cluster)
    assert rolling.applied_spec(Observed(config_hash="new"), state, cluster) == ""  # unknown
    state.reload_failed("syntax error")
    assert rolling.applied_spec(after, state, cluster) == ""
