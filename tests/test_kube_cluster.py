"""Kubernetes mode on a real kube-apiserver: three instances that know each other only
through the Cluster resource, with the test playing the operator."""

from __future__ import annotations

import pytest

from tests.kube_api import KubeApiError
from tests.kube_cluster_kit import NAMES, KubeTrio, kube_apiserver, kube_trio, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kube]
__all__ = ["kube_apiserver", "kube_trio"]


def show(trio: KubeTrio, name: str, parameter: str) -> str:
    return str(trio.sql(name, f"SHOW {parameter}")[0][0])


def reasons(trio: KubeTrio) -> list[str]:
    return [str(e.get("reason")) for e in trio.api.events(trio.namespace)]


def test_three_instances_from_the_api_follow_the_spec_and_a_switchover(
    kube_trio: KubeTrio,
) -> None:
    trio = kube_trio
    trio.wait_started()
    # Status: every instance reported, the first primary claimed, the system identifier.
    wait_for(lambda: trio.current_primary() == "pg-1", 30, "status.currentPrimary pg-1")
    status = trio.cluster()["status"]
    reported = status["instancesReportedState"]
    assert sorted(reported) == list(NAMES)
    assert reported["pg-1"]["isPrimary"] is True and reported["pg-2"]["isPrimary"] is False
    assert reported["pg-2"]["ip"] == "127.0.0.1"
    system_id = str(trio.sql("pg-1", "SELECT system_identifier FROM pg_control_system()")[0][0])
    assert status["systemID"] == system_id

    # A spec change reaches every PostgreSQL.
    trio.patch_spec({"postgresql": {"parameters": {"work_mem": "7MB"}}})
    for name in NAMES:
        wait_for(lambda n=name: show(trio, n, "work_mem") == "7MB", 30, f"work_mem on {name}")

    # The ContinuousArchiving condition, from the primary's archiving.
    trio.sql("pg-1", "CREATE TABLE t (i int); SELECT pg_switch_wal()")

    def archiving() -> bool:
        conditions = trio.cluster()["status"].get("conditions") or []
        return any(
            c.get("type") == "ContinuousArchiving" and c.get("status") == "True" for c in conditions
        )

    wait_for(archiving, 60, "the ContinuousArchiving condition")

    # A switchover: the operator names a new target primary.
    trio.set_status(targetPrimary="pg-2")
    wait_for(lambda: trio.current_primary() == "pg-2", 120, "pg-2 promoted")
    wait_for(lambda: trio.report("pg-1").get("role") == "replica", 120, "pg-1 a standby")
    trio.wait_streaming("pg-2", {"pg-1", "pg-3"})
    trio.sql("pg-2", "INSERT INTO t VALUES (1)")
    wait_for(lambda: "Promoted" in reasons(trio), 30, "a Promoted event")
    assert "RoleChanged" in reasons(trio)
    for name in NAMES:
        assert trio.daemons[name].find("instance manager failed") == [], trio.tails()


def quorum(trio: KubeTrio) -> dict[str, object]:
    path = f"/apis/postgresql.cnpg.io/v1/namespaces/{trio.namespace}/failoverquorums/trio"
    try:
        status: dict[str, object] = trio.api.get(path).get("status") or {}
    except KubeApiError:
        return {}
    return status


def test_the_primary_keeps_the_failover_quorum_up_to_date(kube_trio: KubeTrio) -> None:
    trio = kube_trio
    synchronous = {"method": "any", "number": 1, "failoverQuorum": True}
    trio.patch_spec({"postgresql": {"synchronous": synchronous}})
    trio.wait_started()
    want = {"method": "ANY", "standbyNumber": 1, "primary": "pg-1"}
    wait_for(lambda: quorum(trio).items() >= want.items(), 60, "the FailoverQuorum of pg-1")
    # What PostgreSQL runs with, not what was asked for.
    in_force = trio.sql("pg-1", "SHOW synchronous_standby_names")[0][0]
    names = quorum(trio)["standbyNames"]
    assert isinstance(names, list) and names, quorum(trio)
    assert all(f'"{n}"' in in_force for n in names), (names, in_force)

    trio.set_status(targetPrimary="pg-2")
    wait_for(lambda: quorum(trio).get("primary") == "pg-2", 120, "the new primary's quorum")
    # The new primary had its synchronous standbys in force from its promotion on: its first
    # quorum already names them (healthy standbys first, itself last).
    in_force = trio.sql("pg-2", "SHOW synchronous_standby_names")[0][0]
    names = quorum(trio)["standbyNames"]
    assert isinstance(names, list) and len(names) == 3 and names[-1] == "pg-2", names
    assert all(f'"{n}"' in in_force for n in names), (names, in_force)


def test_the_fencing_annotation_on_the_cluster_stops_and_restarts_an_instance(
    kube_trio: KubeTrio,
) -> None:
    trio = kube_trio
    trio.wait_started()
    path = trio.api.clusters_path(trio.namespace, "trio")
    fenced = {"cnpg.io/fencedInstances": '["pg-3"]'}
    trio.api.merge_patch(path, {"metadata": {"annotations": fenced}})
    wait_for(lambda: trio.report("pg-3").get("fenced") is True, 60, "pg-3 reports fenced")
    wait_for(lambda: "pg-3" not in trio.streaming_to("pg-1"), 60, "pg-3 stopped")
    wait_for(lambda: "Fenced" in reasons(trio), 30, "a Fenced event")
    assert trio.daemons["pg-3"].proc.poll() is None  # the daemon stays up
    trio.api.merge_patch(path, {"metadata": {"annotations": {"cnpg.io/fencedInstances": None}}})
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
    wait_for(lambda: "Unfenced" in reasons(trio), 30, "an Unfenced event")
    assert trio.report("pg-3").get("fenced") is False
