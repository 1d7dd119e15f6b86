"""Fixtures and helpers of the fast Kubernetes-mode tests (tests/test_kube_fast*.py): the
in-process fake API server (tests/fake_apiserver.py), this instance's settings, a client, a
Cluster object, and a running watch whose callbacks are counted.

Use the fixtures with ``from tests.kube_fast_kit import server as server`` (and ``root``,
``config``, ``kube``)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from instance_manager import settings
from instance_manager.cluster.reports import Report, now_rfc3339
from instance_manager.kube.client import Kube, Target
from instance_manager.kube.source import KubeSource
from instance_manager.settings import Settings
from tests.daemon import rmtree
from tests.fake_apiserver import CLUSTERS, FakeApiServer

NS, NAME, ME, OTHER = "ns1", "c1", "c1-1", "c1-2"
CLUSTER_PATH = f"{CLUSTERS.format(ns=NS)}/{NAME}"
STATUS_PATH = f"{CLUSTER_PATH}/status"
DEADLINE = 15.0
FORBIDDEN = (
    'clusters.postgresql.cnpg.io "c1" is forbidden: User "system:serviceaccount:ns1:c1" '
    'cannot patch resource "clusters/status" in API group "postgresql.cnpg.io"'
)


def cluster_object(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"instances": 3},
        "status": {"targetPrimary": ME, **status},
    }


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kf", dir="/tmp"))
    yield path
    rmtree(path)


@pytest.fixture
async def server(root: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(root) as fake:
        for key, value in fake.env().items():
            monkeypatch.setenv(key, value)
        yield fake


@pytest.fixture
def config(root: Path) -> Settings:
    (root / "scratch").mkdir()
    flags = {
        "pgData": str(root / "pgdata"),
        "scratchDir": str(root / "scratch"),
        "podName": ME,
        "podIP": "10.0.0.1",
        "port": 5432,
        "statusPort": 8000,
        "clusterName": NAME,
        "namespace": NS,
    }
    return settings.load(None, {}, flags)


@pytest.fixture
async def kube(server: FakeApiServer) -> AsyncIterator[Kube]:
    found = await Kube.connect(Target(NS, NAME), server.env())
    yield found
    await found.close()


def source_of(kube: Kube, server: FakeApiServer, config: Settings) -> KubeSource:
    return KubeSource(kube, server.cluster(NAME, NS), config)


class Woken:
    """Counts the watch's callbacks."""

    def __init__(self) -> None:
        self.cluster = 0
        self.reports = 0

    def cluster_changed(self) -> None:
        self.cluster += 1

    def reports_changed(self) -> None:
        self.reports += 1


@contextlib.asynccontextmanager
async def watching(source: KubeSource) -> AsyncIterator[tuple[Woken, asyncio.Task[None]]]:
    """``source.watch`` running; it must still run (not have raised) at the end."""
    woken = Woken()
    task = asyncio.create_task(source.watch(ME, woken.cluster_changed, woken.reports_changed))
    try:
        yield woken, task
        assert not task.done(), task.exception()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    """The structured fields of every record logged as ``message``."""
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == message]


def report(role: str = "replica") -> Report:
    return Report(name=ME, role=role, timeLineID=1, ready=True, updated=now_rfc3339())
