"""Kubernetes mode against the in-process fake API server (tests/fake_apiserver.py): the
daemon's own client, source, start and model, with the faults a real API server shows
(410 Gone on a watch, 409 on a patch, 403, the server going away and coming back)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from instance_manager.cluster.reports import Report, now_rfc3339
from instance_manager.kube import start
from instance_manager.kube.client import MERGE_PATCH, ApiError, Kube, Target
from instance_manager.kube.source import BACKOFF_FIRST, CONFLICT_RETRIES
from instance_manager.settings import Settings
from tests.fake_apiserver import CLUSTERS, FakeApiServer
from tests.kube_fast_kit import (
    CLUSTER_PATH,
    DEADLINE,
    FORBIDDEN,
    ME,
    NAME,
    NS,
    OTHER,
    STATUS_PATH,
    cluster_object,
    logged,
    report,
    source_of,
    watching,
)
from tests.kube_fast_kit import config as config
from tests.kube_fast_kit import kube as kube
from tests.kube_fast_kit import root as root
from tests.kube_fast_kit import server as server
from tests.waiting import eventually

# -- the watch -----------------------------------------------------------------------------


async def test_a_watch_answered_410_reads_the_cluster_again_and_goes_on(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    async with watching(source) as (woken, _task):
        await eventually(lambda: server.watching == 1, DEADLINE, "the watch")
        server.expire_watches = 1
        server.end_watches()
        listed = server.version

        def watching_again_from_the_listed_version() -> bool:
            watches = server.watches()
            return (
                server.watching == 1
                and len(watches) >= 3
                and watches[-1].query["resourceVersion"] == str(listed)
            )

        await eventually(watching_again_from_the_listed_version, DEADLINE, "a new watch")
        assert server.watches()[1].status == 200  # the 410 came as an ERROR event
        gets = [r for r in server.requests if r.method == "GET" and r.path == CLUSTER_PATH]
        assert gets, "the Cluster was not read again"
        assert woken.cluster == 0  # the same version read again is no change
        server.patch_status(NAME, {"targetPrimary": OTHER}, NS)
        await eventually(lambda: woken.cluster == 1, DEADLINE, "cluster_changed")
        assert source.cluster().status["targetPrimary"] == OTHER


async def test_the_watch_resumes_after_the_api_server_comes_back(
    server: FakeApiServer, kube: Kube, config: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    async with watching(source) as (woken, task):
        await eventually(lambda: server.watching == 1, DEADLINE, "the watch")
        server.patch_status(NAME, {"targetPrimary": OTHER}, NS)
        await eventually(lambda: woken.cluster == 1, DEADLINE, "the first change")
        last_seen = server.version
        await server.stop()
        await eventually(
            lambda: logged(caplog, "API server unreachable; retrying"), DEADLINE, "the back-off"
        )
        assert not task.done()
        server.patch_status(NAME, {"targetPrimary": "c1-3"}, NS)  # made while it was away
        before = len(server.requests)
        await server.start()
        await eventually(lambda: woken.cluster == 2, DEADLINE, "the change made while away")
        assert source.cluster().status["targetPrimary"] == "c1-3"
        after = server.requests[before:]
        assert after[0].query.get("resourceVersion") == str(last_seen), after[0]
        assert not [r for r in after if r.path == CLUSTER_PATH], "resumed, not read again"
        server.patch_status(NAME, {"targetPrimary": ME}, NS)
        await eventually(lambda: woken.cluster == 3, DEADLINE, "a change after the return")


async def test_the_watch_resumes_from_a_bookmark(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    async with watching(source) as (woken, _):
        await eventually(lambda: server.watching == 1, DEADLINE, "the watch")
        assert server.watches()[0].query["allowWatchBookmarks"] in ("true", "True")
        marked = server.bookmark()
        server.end_watches()
        await eventually(lambda: len(server.watches()) == 2, DEADLINE, "a new watch")
        assert server.watches()[1].query["resourceVersion"] == str(marked)
        assert woken.cluster == 0


async def test_a_refused_watch_backs_off_and_goes_on(
    server: FakeApiServer, kube: Kube, config: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 (RBAC not in place yet) or a 5xx answer to the watch is logged and retried
    after the back-off: neither the end of the watch nor a request loop."""
    caplog.set_level(logging.INFO)
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    list_path = CLUSTERS.format(ns=NS)
    server.forbid(list_path, "clusters is forbidden")
    async with watching(source) as (woken, task):
        await eventually(lambda: len(server.watches()) >= 2 or task.done(), DEADLINE, "a retry")
        assert not task.done(), task.exception()
        first, second = server.watches()[:2]
        assert second.at - first.at >= BACKOFF_FIRST * 0.9, "retried without a back-off"
        errors = [str(r.__dict__.get("fields", {}).get("error")) for r in caplog.records]
        assert any("clusters is forbidden" in e for e in errors), errors
        server.allow(list_path)
        await eventually(lambda: server.watching == 1, DEADLINE, "the watch")
        server.patch_status(NAME, {"targetPrimary": OTHER}, NS)
        await eventually(lambda: woken.cluster == 1, DEADLINE, "cluster_changed")


async def test_a_failed_read_after_410_is_retried(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    async with watching(source) as (woken, task):
        await eventually(lambda: server.watching == 1, DEADLINE, "the watch")
        server.forbid(CLUSTER_PATH, "cannot get clusters")
        server.expire_watches = 1
        server.end_watches()

        def refused() -> bool:
            return any(r.path == CLUSTER_PATH and r.status == 403 for r in server.requests)

        await eventually(lambda: refused() or task.done(), DEADLINE, "the refused read")
        assert not task.done(), task.exception()
        server.allow(CLUSTER_PATH)
        server.patch_status(NAME, {"targetPrimary": OTHER}, NS)
        await eventually(lambda: woken.cluster == 1, DEADLINE, "cluster_changed")


# -- status patches ------------------------------------------------------------------------


async def test_a_conflict_on_a_status_patch_is_retried_after_a_fresh_read(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    server.conflicts = 1
    await source.write_report(report())
    patches = server.patches()
    assert [p.status for p in patches] == [409, 200]
    assert patches[1].body == patches[0].body
    between = server.requests[server.requests.index(patches[0]) + 1 : -1]
    assert [(r.method, r.path) for r in between] == [("GET", CLUSTER_PATH)]
    assert server.cluster(NAME, NS)["status"]["instancesReportedState"][ME]["role"] == "replica"


async def test_conflicts_that_last_fail_the_report(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    server.conflicts = CONFLICT_RETRIES + 1
    with pytest.raises(OSError, match="409"):
        await source.write_report(report())
    assert len(server.patches()) == CONFLICT_RETRIES + 1


async def test_a_forbidden_status_patch_raises_oserror_with_the_message(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    server.create_cluster(cluster_object())
    source = source_of(kube, server, config)
    server.forbid(STATUS_PATH, FORBIDDEN)
    with pytest.raises(OSError) as raised:
        await source.write_report(report())
    assert "403" in str(raised.value) and FORBIDDEN in str(raised.value)


async def test_merge_patches_change_only_this_instances_entry(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    theirs = {"role": "replica", "ip": "10.0.0.2", "port": 5432, "statusPort": 8000}
    server.create_cluster(cluster_object(instancesReportedState={OTHER: theirs}))
    source = source_of(kube, server, config)
    since = now_rfc3339()
    claim = Report(
        name=ME,
        role="primary",
        currentPrimary=ME,
        currentPrimaryTimestamp=since,
        systemID="7300000000000000001",
        updated=since,
    )
    await source.write_report(claim)
    await source.promoted(ME, since)
    await source.set_target_primary(OTHER)
    patches = server.patches()
    assert len(patches) == 2
    assert {p.content_type for p in patches} == {MERGE_PATCH}
    assert {p.path for p in patches} == {STATUS_PATH}
    assert list(patches[0].body["status"]["instancesReportedState"]) == [ME]
    status = server.cluster(NAME, NS)["status"]
    assert status["instancesReportedState"][OTHER] == theirs
    mine = status["instancesReportedState"][ME]
    assert (mine["ip"], mine["port"], mine["statusPort"], mine["isPrimary"]) == (
        "10.0.0.1",
        5432,
        8000,
        True,
    )
    assert (status["currentPrimary"], status["currentPrimaryTimestamp"]) == (ME, since)
    assert status["systemID"] == "7300000000000000001"
    assert status["targetPrimary"] == OTHER
    assert source.obj["metadata"]["resourceVersion"] == str(server.version)
    assert {e["reason"] for e in server.events} >= {"Promoted", "SwitchoverRequested"}


async def test_a_patch_that_is_not_a_merge_patch_is_refused(server: FakeApiServer) -> None:
    """The fake holds the client to the content type: a JSON patch would be 415."""
    server.create_cluster(cluster_object())
    found = await Kube.connect(Target(NS, NAME), server.env())
    try:
        custom = found.custom
        with pytest.raises(ApiError) as raised:
            await found.call(
                custom.patch_namespaced_custom_object_status,
                "postgresql.cnpg.io",
                "v1",
                NS,
                "clusters",
                NAME,
                [{"op": "add", "path": "/status/x", "value": 1}],
                _content_type="application/json-patch+json",
            )
        assert raised.value.status == 415
    finally:
        await found.close()


# -- start ---------------------------------------------------------------------------------


async def test_wait_for_cluster_waits_for_the_cluster_and_its_target_primary(
    server: FakeApiServer, config: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    waiting = asyncio.create_task(start.wait_for_cluster(config, server.env()))

    def reasons() -> list[str]:
        return [str(f.get("reason")) for f in logged(caplog, "waiting for the Cluster")]

    await eventually(lambda: any("not found" in r for r in reasons()), DEADLINE, "the 404")
    obj = cluster_object()
    del obj["status"]["targetPrimary"]
    server.create_cluster(obj)
    await eventually(
        lambda: "status.targetPrimary is not set yet" in reasons(), DEADLINE, "no target"
    )
    assert not waiting.done()
    server.patch_status(NAME, {"targetPrimary": ME}, NS)
    found = await asyncio.wait_for(waiting, DEADLINE)
    assert found.obj["status"]["targetPrimary"] == ME
    assert found.target == Target(NS, NAME)


async def test_wait_for_cluster_waits_while_forbidden(
    server: FakeApiServer, config: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server.create_cluster(cluster_object())
    server.forbid(CLUSTER_PATH, FORBIDDEN)
    waiting = asyncio.create_task(start.wait_for_cluster(config, server.env()))

    def said_why() -> bool:
        return any(
            FORBIDDEN in str(f.get("reason")) for f in logged(caplog, "waiting for the Cluster")
        )

    await eventually(said_why, DEADLINE, "the 403 logged")
    assert not waiting.done()
    server.allow(CLUSTER_PATH)
    found = await asyncio.wait_for(waiting, DEADLINE)
    assert found.obj["metadata"]["name"] == NAME


async def test_a_wrong_token_is_refused(server: FakeApiServer, root: Path) -> None:
    server.create_cluster(cluster_object())
    wrong = root / "wrong-token"
    wrong.write_text("not-the-token")
    found = await Kube.connect(Target(NS, NAME), {**server.env(), "KUBE_TOKEN_FILE": str(wrong)})
    try:
        with pytest.raises(ApiError) as raised:
            await found.get_cluster()
        assert raised.value.status == 401
    finally:
        await found.close()


async def test_the_in_cluster_configuration_comes_from_the_env_given(
    server: FakeApiServer, config: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``env`` names the API server too, not only the token and CA files."""
    server.create_cluster(cluster_object())
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT")
    found = await asyncio.wait_for(start.wait_for_cluster(config, server.env()), DEADLINE)
    assert found.obj["metadata"]["name"] == NAME
