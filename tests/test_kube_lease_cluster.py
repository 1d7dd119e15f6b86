"""The primary Lease with three instances in Kubernetes mode on the real API server
(tests/kube_cluster_kit.py), the test playing the operator and, once, an intruder."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from instance_manager.kube.lease import micro_time
from tests.kube_api import KubeApiError
from tests.kube_cluster_kit import KubeTrio, kube_apiserver, kube_trio, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kube]
__all__ = ["kube_apiserver", "kube_trio"]
RENEW_DEADLINE = 10  # CloudNativePG's default, the trio's Cluster sets no primaryLease
INTRUDER_RENEWAL = 1.0


def lease_path(trio: KubeTrio) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{trio.namespace}/leases/trio"


def lease(trio: KubeTrio) -> dict[str, Any]:
    try:
        found: dict[str, Any] = trio.api.get(lease_path(trio))
    except KubeApiError as exc:
        if exc.status == 404:
            return {}
        raise
    return found


def holder(trio: KubeTrio) -> str:
    return str((lease(trio).get("spec") or {}).get("holderIdentity") or "")


def writable(trio: KubeTrio, name: str) -> bool:
    try:
        return bool(trio.sql(name, "SELECT NOT pg_is_in_recovery()")[0][0])
    except psycopg.Error:
        return False


def rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_the_lease_follows_a_switchover_and_a_clean_stop_releases_it(
    kube_trio: KubeTrio,
) -> None:
    trio = kube_trio
    trio.wait_started()
    assert holder(trio) == "pg-1"

    trio.set_status(targetPrimary="pg-2")
    wait_for(lambda: trio.current_primary() == "pg-2", 120, "pg-2 promoted")
    wait_for(lambda: holder(trio) == "pg-2", 30, "the lease held by pg-2")
    # pg-1 gave it up after its stop; pg-2 took it before it promoted.
    assert trio.daemons["pg-1"].find("primary Lease released"), trio.tails()
    messages = trio.daemons["pg-2"].messages()
    assert messages.index("primary Lease acquired") < messages.index("promoting this instance")
    spec = lease(trio)["spec"]
    promoted_at = trio.cluster()["status"]["currentPrimaryTimestamp"]
    assert rfc3339(spec["acquireTime"]) <= rfc3339(promoted_at)
    assert spec["leaseTransitions"] >= 1
    wait_for(lambda: writable(trio, "pg-2"), 30, "pg-2 writable")

    # A clean stop of the primary's daemon clears the holder once PostgreSQL is down.
    assert trio.daemons["pg-2"].stop() == 0
    spec = lease(trio)["spec"]
    assert not spec.get("holderIdentity") and spec["leaseDurationSeconds"] == 1, spec
    assert trio.daemons["pg-2"].find("primary Lease released")


class Intruder:
    """Holds the lease under another name, renewing it every INTRUDER_RENEWAL s."""

    def __init__(self, trio: KubeTrio) -> None:
        self.trio = trio
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _put(self, spec: dict[str, Any]) -> None:
        while True:
            current = lease(self.trio)
            current["spec"] = spec
            try:
                self.trio.api.replace(lease_path(self.trio), current)
                return
            except KubeApiError as exc:
                if exc.status != 409:
                    raise

    def take(self) -> None:
        now = micro_time()
        self._put(
            {"holderIdentity": "intruder", "leaseDurationSeconds": 15,
             "acquireTime": now, "renewTime": now}
        )  # fmt: skip
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(INTRUDER_RENEWAL):
            spec = dict(lease(self.trio)["spec"], renewTime=micro_time())
            self._put(spec)

    def release(self) -> None:
        self.done.set()
        self.thread.join(10)
        now = micro_time()
        self._put({"leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now})


@contextlib.contextmanager
def intruding(trio: KubeTrio) -> Iterator[Intruder]:
    intruder = Intruder(trio)
    try:
        yield intruder
    finally:
        intruder.done.set()


def test_a_primary_whose_lease_is_stolen_stops_writing_until_it_holds_it_again(
    kube_trio: KubeTrio,
) -> None:
    trio = kube_trio
    trio.wait_started()
    assert holder(trio) == "pg-1" and writable(trio, "pg-1")
    daemon = trio.daemons["pg-1"]

    with intruding(trio) as intruder:
        intruder.take()
        stolen = time.monotonic()
        wait_for(lambda: not writable(trio, "pg-1"), RENEW_DEADLINE + 5, "pg-1 not writable")
        assert time.monotonic() - stolen <= RENEW_DEADLINE + 5
        assert daemon.find("primary Lease lost"), daemon.tail()
        # It stays so while the intruder renews: several renewals and retry periods.
        watched = time.monotonic()
        while time.monotonic() - watched < 6:
            assert not writable(trio, "pg-1"), daemon.tail()
            assert daemon.proc.poll() is None, daemon.tail()
            time.sleep(0.5)  # the sampling step of this observation window
        assert holder(trio) == "intruder"

        intruder.release()
        wait_for(lambda: writable(trio, "pg-1"), 60, "pg-1 writable again")
    assert holder(trio) == "pg-1"
    assert trio.cluster()["status"]["targetPrimary"] == "pg-1"
    assert daemon.proc.poll() is None
    trio.sql("pg-1", "CREATE TABLE after_the_intruder (i int)")
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
    for name in ("pg-1", "pg-2", "pg-3"):
        assert trio.daemons[name].find("instance manager failed") == [], trio.tails()
