"""Standalone cluster: the local API's /cache/* and the ContinuousArchiving condition follow
the real state (cluster/cache.py): archiving that fails through the plugin flips the
condition in the primary's report and in every instance's /cache/cluster, and back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster_kit import NAMES, Trio
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import http_get, wait_for

pytestmark = pytest.mark.slow


def cached(trio: Trio, name: str, key: str) -> tuple[int, Any]:
    port = trio.members[name].local_port
    try:
        code, text = http_get(f"http://127.0.0.1:{port}/cache/{key}")
    except OSError:
        return 0, None
    return code, json.loads(text) if code == 200 else None


def archiving(trio: Trio, name: str) -> dict[str, str]:
    code, cluster = cached(trio, name, "cluster")
    if code != 200:
        return {}
    for condition in cluster["status"].get("conditions", []):
        if condition["type"] == "ContinuousArchiving":
            return dict(condition)
    return {}


def reported(trio: Trio, name: str) -> dict[str, str]:
    found = [
        c for c in trio.report(name).get("conditions", []) if c["type"] == "ContinuousArchiving"
    ]
    return found[0] if found else {}


def switch_wal(trio: Trio) -> None:
    trio.sql("pg-1", "CREATE TABLE IF NOT EXISTS w (i int); INSERT INTO w VALUES (1)")
    trio.sql("pg-1", "SELECT pg_switch_wal()")


def flips_to(trio: Trio, status: str, text: str) -> None:
    def everywhere() -> bool:
        switch_wal(trio)
        if reported(trio, "pg-1").get("status") != status:
            return False
        return all(
            archiving(trio, n).get("status") == status and text in archiving(trio, n)["message"]
            for n in NAMES
        )

    try:
        wait_for(everywhere, 90, f"ContinuousArchiving {status} ({text}) everywhere")
    except AssertionError:
        raise AssertionError(trio.tails()) from None


def test_cache_and_continuous_archiving_follow_the_cluster(three_instances: Trio) -> None:
    trio = three_instances
    trio.start_all()
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})

    def settled() -> bool:
        code, cluster = cached(trio, "pg-3", "cluster")
        return code == 200 and cluster["status"].get("readyInstances") == 3

    wait_for(settled, 90, "pg-3's cached cluster shows three ready instances")
    _, cluster = cached(trio, "pg-3", "cluster")
    status = cluster["status"]
    assert status["currentPrimary"] == "pg-1" and status["targetPrimary"] == "pg-1"
    assert status["instanceNames"] == list(NAMES)
    assert status["instancesReportedState"]["pg-1"]["isPrimary"] is True
    assert status["instancesReportedState"]["pg-2"]["isPrimary"] is False
    assert cluster["spec"]["instances"] == 3
    for name in NAMES:  # a WAL archiver plugin is enabled: its credentials stay in the plugin
        assert cached(trio, name, "wal-archive") == (200, [])
        assert cached(trio, name, "wal-restore") == (200, [])
        assert cached(trio, name, "wal-restore-config")[0] == 404

    flips_to(trio, "True", "Continuous archiving is working")
    trio.plugin.stop()
    trio.plugin.start("--fail-archive", "bucket unreachable")
    flips_to(trio, "False", "bucket unreachable")
    assert reported(trio, "pg-1")["reason"] == "ContinuousArchivingFailing"
    trio.plugin.stop()
    trio.plugin.start()
    flips_to(trio, "True", "Continuous archiving is working")
