"""Standalone cluster: the primary isolation check in ``/healthz`` and self-fencing.

The primary is cut off by stopping its peers' daemons (SIGSTOP): their reports go stale
and their ``/failsafe`` stops answering, while their PostgreSQL keeps running. With
``peersRequired: any`` liveness fails only when no peer is reachable; with ``all`` as soon
as one is not. After ``livenessProbeTimeout`` the isolated primary stops its PostgreSQL;
when its peers are back it starts again, as a standby (pg_rewind) if another instance
was promoted meanwhile, else as the primary.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.cluster_kit import Trio
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import http_get, postgres_runs, wait_for

pytestmark = pytest.mark.slow
LIVENESS_WINDOW = 2  # spec.livenessProbeTimeout, seconds
STALE_AFTER = 5.0  # cluster/isolation.py FRESH_SECONDS


def started(trio: Trio, peers_required: str) -> None:
    trio.spec["livenessProbeTimeout"] = LIVENESS_WINDOW
    trio.spec["switchoverDelay"] = 5
    check = {"requestTimeout": 300, "connectionTimeout": 300, "peersRequired": peers_required}
    trio.spec["probes"] = {"liveness": {"isolationCheck": check}}
    trio.write_document()
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        for daemon in trio.daemons.values():
            daemon.wait_ready()
        for name in ("pg-2", "pg-3"):  # what failover reads once their daemons are stopped
            wait_for(lambda n=name: trio.report(n).get("ready"), 30, f"{name} reported ready")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    assert healthz(trio) == (200, "OK")


@contextlib.contextmanager
def stopped(trio: Trio, *names: str) -> Iterator[None]:
    """SIGSTOP these daemons (not their PostgreSQL); SIGCONT on the way out."""
    for name in names:
        trio.daemons[name].signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for name in names:
            trio.daemons[name].signal(signal.SIGCONT)


def healthz(trio: Trio, name: str = "pg-1") -> tuple[int, str]:
    return http_get(trio.members[name].url("/healthz"), 3.0)


def report_age(trio: Trio, name: str) -> float:
    path = trio.root / "doc" / "cluster.yaml.status" / f"{name}.json"
    return time.time() - path.stat().st_mtime


def wait_self_fenced(trio: Trio) -> str:
    """pg-1's liveness fails, then it fences itself; the /healthz text."""
    try:
        wait_for(lambda: healthz(trio)[0] == 500, 30, "pg-1's liveness to fail")
        trio.daemons["pg-1"].wait_log(
            "isolated for longer than livenessProbeTimeout: fencing this primary", 30
        )
        wait_for(
            lambda: not postgres_runs(trio.members["pg-1"].pgdata), 60, "pg-1's PostgreSQL stopped"
        )
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    status, text = healthz(trio)
    assert status == 500, text
    assert http_get(trio.members["pg-1"].url("/readyz"))[0] == 500
    return text


def wait_primary_again(trio: Trio) -> None:
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"}, timeout=90)
        wait_for(lambda: healthz(trio) == (200, "OK"), 30, "pg-1's liveness back")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(False,)]
    assert trio.current_primary() == "pg-1"
    assert trio.report("pg-1").get("fenced") is False


def test_any_rule_tolerates_one_peer_and_rejoins_as_primary(three_instances: Trio) -> None:
    trio = three_instances
    started(trio, "any")
    with stopped(trio, "pg-3"):
        # pg-3's report goes stale and its /failsafe is silent; pg-2 is enough.
        wait_for(lambda: report_age(trio, "pg-3") > STALE_AFTER + LIVENESS_WINDOW + 2, 30, "")
        assert healthz(trio) == (200, "OK")
        assert not trio.daemons["pg-1"].find("the primary is isolated: liveness fails")
        with stopped(trio, "pg-2"):
            text = wait_self_fenced(trio)
            assert "[pg-2]" in text and "[pg-3]" in text, text
    wait_primary_again(trio)
    trio.daemons["pg-1"].wait_log("the primary reaches its cluster again")


def test_all_rule_fails_on_one_unreachable_peer(three_instances: Trio) -> None:
    trio = three_instances
    started(trio, "all")
    with stopped(trio, "pg-3"):
        text = wait_self_fenced(trio)
        assert "[pg-3]" in text and "[pg-2]" not in text, text
        assert "instance connectivity error" in text
    wait_primary_again(trio)


def test_isolated_primary_fences_itself_and_rejoins_as_a_standby(three_instances: Trio) -> None:
    trio = three_instances
    started(trio, "any")
    trio.sql("pg-1", "CREATE TABLE before_isolation (id int)")
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
    with stopped(trio, "pg-2", "pg-3"):
        wait_self_fenced(trio)
        # The operator (a person) fails over to pg-2 while pg-1 is cut off.
        failover = subprocess.Popen(
            trio.cli("failover", "--to", "pg-2", "--timeout", "120"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: "targetPrimary: pg-2" in trio.document.read_text(), 30, "target")
        except AssertionError:
            failover.kill()
            raise AssertionError(f"{failover.communicate()[0]} {trio.report('pg-2')}") from None
    out, _ = failover.communicate(timeout=180)
    assert failover.returncode == 0, out + trio.tails()
    try:
        trio.wait_streaming("pg-2", {"pg-1", "pg-3"}, timeout=120)
        wait_for(lambda: healthz(trio) == (200, "OK"), 30, "pg-1's liveness back")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(True,)]
    assert trio.current_primary() == "pg-2"
    assert trio.sql("pg-2", "SELECT count(*) FROM before_isolation") == [(0,)]
    pg1 = trio.daemons["pg-1"]
    assert pg1.find("fenced: PostgreSQL stopped") and pg1.find("pg_rewind done"), pg1.tail(60)


def test_a_primary_whose_peers_never_reported_is_not_isolated(three_instances: Trio) -> None:
    trio = three_instances
    trio.spec["livenessProbeTimeout"] = LIVENESS_WINDOW
    trio.write_document()
    daemon = trio.start("pg-1")  # pg-2 and pg-3 are never started
    daemon.wait_ready()
    started = time.time()
    # Longer than the report freshness plus the liveness window, by pg-1's own report.
    wait_for(lambda: trio.report("pg-1").get("role") == "primary", 30, "pg-1's report")
    wait_for(lambda: report_age(trio, "pg-1") < 1 and time.time() - started > 10, 30, "10 s")
    assert healthz(trio) == (200, "OK")
    assert postgres_runs(trio.members["pg-1"].pgdata)
    assert not daemon.find("the primary is isolated: liveness fails")
