"""The primary Lease (instance_manager/kube/lease.py): the take-over rule as pure
functions, then two candidates against the real test API server (tests/kube_kit.py) with
short timings (duration 3 s, renew deadline 2 s, retry 1 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client

from instance_manager.cluster_model import PrimaryLease as Timings
from instance_manager.cluster_model import Spec
from instance_manager.kube.client import Kube, Target
from instance_manager.kube.lease import Observation, PrimaryLease, Record, micro_time, timings_of
from tests.kube_kit import ApiServer, KubeApiError
from tests.kube_kit import kube_apiserver as kube_apiserver

__all__ = ["kube_apiserver"]
SHORT = Timings(
    leaseDurationSeconds=3,
    renewDeadlineSeconds=2,
    retryPeriodSeconds=1,
    releasedLeaseDurationSeconds=1,
)
CLUSTER = "trio"
POLL = 0.2


# -- the rule, without a server ------------------------------------------------------------


def test_a_record_held_by_another_is_free_only_after_a_full_duration_unchanged() -> None:
    seen = Observation()
    held = Record(holder="pg-1", duration=15, renew_time="t1", transitions=2)
    assert not seen.expired(held, 100.0, 15)
    assert not seen.expired(held, 114.9, 15)
    assert seen.expired(held, 115.0, 15)
    # A renewal (a new renewTime) starts the count again, as does a new holder.
    renewed = Record(holder="pg-1", duration=15, renew_time="t2", transitions=2)
    assert not seen.expired(renewed, 116.0, 15)
    assert not seen.expired(renewed, 130.9, 15)
    taken = Record(holder="pg-3", duration=15, renew_time="t2", transitions=3)
    assert not seen.expired(taken, 131.0, 15)
    assert seen.expired(taken, 146.0, 15)


def test_a_released_record_is_free_at_once() -> None:
    assert Record(holder="", duration=15).released(1)
    assert Record(holder="pg-1", duration=1).released(1)
    assert not Record(holder="pg-1", duration=15).released(1)
    assert not Record(holder="pg-1", duration=0).released(1)


def test_the_timings_default_to_cloudnativepg_s_and_are_checked() -> None:
    assert timings_of(Spec()) == Timings(15, 10, 2, 1)
    with pytest.raises(ValueError, match="renewDeadlineSeconds"):
        Timings(leaseDurationSeconds=10, renewDeadlineSeconds=10)
    with pytest.raises(ValueError, match="releasedLeaseDurationSeconds"):
        Timings(leaseDurationSeconds=3, renewDeadlineSeconds=2, retryPeriodSeconds=1,
                releasedLeaseDurationSeconds=3)  # fmt: skip


# -- two candidates on the real API server -------------------------------------------------


class Candidate:
    def __init__(self, kube: Kube, identity: str) -> None:
        self.losses: list[str] = []
        self.lease = PrimaryLease(kube, identity, lambda: SHORT, self.losses.append)


@pytest.fixture
async def kube(kube_apiserver: ApiServer) -> AsyncIterator[Kube]:
    configuration = client.Configuration()
    configuration.host = kube_apiserver.url
    configuration.ssl_ca_cert = kube_apiserver.ca_file
    configuration.api_key["BearerToken"] = f"Bearer {kube_apiserver.token}"
    namespace = await asyncio.to_thread(kube_apiserver.new_namespace, "lease")
    found = Kube(configuration, Target(namespace, CLUSTER))
    try:
        yield found
    finally:
        await found.close()


def lease_path(kube: Kube) -> str:
    namespace = kube.target.namespace
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{CLUSTER}"


async def spec_of(api: ApiServer, kube: Kube) -> dict[str, Any]:
    lease = await asyncio.to_thread(api.get, lease_path(kube))
    spec: dict[str, Any] = lease["spec"]
    return spec


async def until(predicate: Any, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` (awaited) is true; AssertionError past ``timeout``."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL)
    return time.monotonic() - started


@pytest.mark.kube
async def test_the_first_candidate_creates_the_lease_and_a_released_one_is_taken_at_once(
    kube_apiserver: ApiServer, kube: Kube
) -> None:
    one, two = Candidate(kube, "pg-1"), Candidate(kube, "pg-2")
    try:
        assert await one.lease.try_acquire()
        spec = await spec_of(kube_apiserver, kube)
        assert spec["holderIdentity"] == "pg-1" and spec["leaseDurationSeconds"] == 3
        assert not await two.lease.try_acquire()
        assert "held by pg-1" in two.lease.lost
        # Renewed while held: renewTime moves.
        first = spec["renewTime"]

        async def renewed() -> bool:
            return (await spec_of(kube_apiserver, kube))["renewTime"] != first

        await until(renewed, 3, "a renewal")
        assert await one.lease.release()
        spec = await spec_of(kube_apiserver, kube)
        assert not spec.get("holderIdentity") and spec["leaseDurationSeconds"] == 1
        assert await two.lease.try_acquire()  # at once: released
        spec = await spec_of(kube_apiserver, kube)
        assert spec["holderIdentity"] == "pg-2" and spec["leaseTransitions"] == 1
        assert not await one.lease.release()  # not its own any more: untouched
        assert (await spec_of(kube_apiserver, kube))["holderIdentity"] == "pg-2"
        assert one.losses == [] and two.losses == []
    finally:
        await one.lease.close()
        await two.lease.close()


@pytest.mark.kube
@pytest.mark.slow
async def test_a_held_lease_is_taken_over_only_after_a_full_duration_without_renewal(
    kube_apiserver: ApiServer, kube: Kube
) -> None:
    one, two = Candidate(kube, "pg-1"), Candidate(kube, "pg-2")
    try:
        assert await one.lease.try_acquire()

        async def taken() -> bool:
            return await two.lease.try_acquire()

        # Renewed every second: two never takes it in more than a full duration.
        with pytest.raises(AssertionError, match="timed out"):
            await until(taken, SHORT.leaseDurationSeconds + 1.5, "a take-over")
        await one.lease.close()  # stops renewing, as a dead primary does
        stopped = time.monotonic()
        await until(taken, SHORT.leaseDurationSeconds + 3, "the take-over")
        waited = time.monotonic() - stopped
        # Up to a retry period passed between the last renewal and the close.
        assert waited >= SHORT.leaseDurationSeconds - SHORT.retryPeriodSeconds - POLL, waited
        assert (await spec_of(kube_apiserver, kube))["holderIdentity"] == "pg-2"
    finally:
        await one.lease.close()
        await two.lease.close()


@pytest.mark.kube
async def test_a_holder_that_finds_another_holder_loses_the_lease(
    kube_apiserver: ApiServer, kube: Kube
) -> None:
    one = Candidate(kube, "pg-1")
    try:
        assert await one.lease.try_acquire()
        lease = await asyncio.to_thread(kube_apiserver.get, lease_path(kube))
        now = micro_time()
        lease["spec"].update(holderIdentity="intruder", renewTime=now, acquireTime=now)
        await asyncio.to_thread(kube_apiserver.replace, lease_path(kube), lease)

        async def lost() -> bool:
            return bool(one.losses)

        await until(lost, SHORT.retryPeriodSeconds + 2, "the loss")
        assert "intruder" in one.losses[0] and not one.lease.held
        assert "intruder" in one.lease.lost
        assert not await one.lease.try_acquire()  # still the intruder's
        assert not await one.lease.release()  # and left alone
        assert (await spec_of(kube_apiserver, kube))["holderIdentity"] == "intruder"
    finally:
        await one.lease.close()


@pytest.mark.kube
async def test_a_holder_whose_lease_is_deleted_creates_it_again(
    kube_apiserver: ApiServer, kube: Kube
) -> None:
    one = Candidate(kube, "pg-1")
    try:
        assert await one.lease.try_acquire()
        await asyncio.to_thread(kube_apiserver.delete, lease_path(kube))

        async def again() -> bool:
            try:
                return (await spec_of(kube_apiserver, kube)).get("holderIdentity") == "pg-1"
            except KubeApiError:
                return False

        await until(again, SHORT.retryPeriodSeconds * 2 + 2, "the lease created again")
        assert one.lease.held and one.losses == []
    finally:
        await one.lease.close()
