"""The primary Lease of Kubernetes mode (CloudNativePG 1.30): who may act as primary.

A ``coordination.k8s.io/v1`` Lease named after the Cluster, in its namespace, whose
``holderIdentity`` is the pod name of the instance allowed to run PostgreSQL as primary.
The instance takes it before a promotion and before starting PostgreSQL as primary, keeps
it renewed while it holds it, and clears the holder on a clean exit, so that a standby can
promote at once instead of waiting for the lease to expire.

Taking it (``try_acquire``, one attempt per call):

- absent: created with this instance as the holder;
- naming this instance: adopted (a restarted daemon keeps its lease);
- released (no holder, or the short released duration): taken at once;
- held by another instance: taken only after this instance has seen the same record
  (holder, renewTime, transitions) unchanged for a full lease duration on its own clock.
  The holder's clock is never compared with ours: a live holder renews well within that
  time, so an unchanged record means it stopped.

Every write is a PUT carrying the ``resourceVersion`` last read, so that two candidates
cannot both win: the loser gets a 409 and reads again.

While held, the lease is renewed every retry period. It is lost when a renewal finds
another holder (409, then a fresh read), or when no renewal has succeeded for the renew
deadline; ``on_lost`` is then called once, and the instance must stop acting as primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from instance_manager import log
from instance_manager.cluster_model import PrimaryLease as Timings
from instance_manager.cluster_model import Spec
from instance_manager.kube.client import ApiError, Kube, KubeError

_logger = log.get()
API_VERSION = "coordination.k8s.io/v1"
# Metadata kept when the lease is written back (a PUT replaces the whole object).
KEPT_METADATA = ("name", "namespace", "resourceVersion", "labels", "annotations", "ownerReferences")


def timings_of(spec: Spec) -> Timings:
    """``.spec.primaryLease``, or CloudNativePG's defaults."""
    return spec.primaryLease or Timings()


def micro_time() -> str:
    """Now, as a Kubernetes MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Record:
    """The fields of a Lease that decide who holds it."""

    holder: str = ""
    duration: int = 0
    renew_time: str = ""
    acquire_time: str = ""
    transitions: int = 0

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=int(spec.get("leaseDurationSeconds") or 0),
            renew_time=str(spec.get("renewTime") or ""),
            acquire_time=str(spec.get("acquireTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def released(self, released_seconds: int) -> bool:
        """Given up by its holder: no holder, or the short duration a release writes."""
        return not self.holder or 0 < self.duration <= released_seconds


@dataclasses.dataclass
class Observation:
    """The take-over rule: a record held by another is free once it was seen unchanged
    for a full lease duration (timed with ``time.monotonic`` of this process)."""

    key: tuple[str, str, int] | None = None
    since: float = 0.0

    def expired(self, record: Record, now: float, duration: float) -> bool:
        key = (record.holder, record.renew_time, record.transitions)
        if key != self.key:
            self.key, self.since = key, now
            return False
        return now - self.since >= duration

    def forget(self) -> None:
        self.key = None


def body(
    lease: Mapping[str, Any] | None, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """A Lease to write: ``lease``'s identity and version with ``spec``."""
    metadata = (lease or {}).get("metadata") or {}
    kept = {k: metadata[k] for k in KEPT_METADATA if metadata.get(k) is not None}
    kept.update(name=name, namespace=namespace)
    return {"apiVersion": API_VERSION, "kind": "Lease", "metadata": kept, "spec": spec}


class PrimaryLease:
    def __init__(
        self,
        kube: Kube,
        identity: str,
        timings: Callable[[], Timings],
        on_lost: Callable[[str], None],
    ) -> None:
        self.kube = kube
        self.namespace = kube.target.namespace
        self.name = kube.target.name
        self.identity = identity
        self.timings = timings
        self.on_lost = on_lost
        self.held = False
        # Why this instance may not act as primary: the lease is another instance's, or
        # it could not be renewed in time. Empty once held again.
        self.lost = ""
        self._lease: dict[str, Any] | None = None  # the last version read or written
        self._confirmed = 0.0  # time.monotonic() of the last write naming this instance
        self._observed = Observation()
        self._lock = asyncio.Lock()  # one request at a time: the reconciler and prepare
        self._renewing: asyncio.Task[None] | None = None
        self._said = ""
        self._released_checked = False

    # -- taking it --
    async def try_acquire(self) -> bool:
        """One attempt; True once this instance holds the lease."""
        if self.held:
            return True
        async with self._lock:
            if self.held:
                return True
            try:
                taken = await self._attempt(self.timings())
            except KubeError as exc:
                self._say("cannot take the primary Lease", error=str(exc))
                return False
        if taken:
            self._took()
        return taken

    async def _attempt(self, t: Timings) -> bool:
        timeout = float(t.retryPeriodSeconds)
        try:
            lease = await self.kube.read_lease(self.name, timeout)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return await self._write(None, self._claim(None, t), timeout)
        self._lease = lease
        record = Record.of(lease)
        if record.holder == self.identity:
            return await self._write(lease, self._renewal(record, t), timeout)
        if not record.released(t.releasedLeaseDurationSeconds):
            self.lost = f"the primary Lease is held by {record.holder}"
            duration = record.duration or t.leaseDurationSeconds
            if not self._observed.expired(record, time.monotonic(), duration):
                self._say("waiting for the primary Lease", holder=record.holder)
                return False
            log.event(
                _logger, "taking over a primary Lease no longer renewed", holder=record.holder
            )
        return await self._write(lease, self._claim(record, t), timeout)

    def _took(self) -> None:
        self.held, self.lost, self._said = True, "", ""
        self._observed.forget()
        log.event(_logger, "primary Lease acquired", lease=self.name, holder=self.identity)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._keep())

    def _claim(self, current: Record | None, t: Timings) -> dict[str, Any]:
        """This instance as the new holder (``current`` None: the lease is created)."""
        now = micro_time()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": t.leaseDurationSeconds,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0 if current is None else current.transitions + 1,
        }

    def _renewal(self, current: Record, t: Timings) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": t.leaseDurationSeconds,
            "acquireTime": current.acquire_time or micro_time(),
            "renewTime": micro_time(),
            "leaseTransitions": current.transitions,
        }

    async def _write(
        self, lease: dict[str, Any] | None, spec: dict[str, Any], timeout: float
    ) -> bool:
        """Create or replace; False when another writer won the race (409)."""
        new = body(lease, self.namespace, self.name, spec)
        try:
            if lease is None:
                self._lease = await self.kube.create_lease(new, timeout)
            else:
                self._lease = await self.kube.replace_lease(self.name, new, timeout)
        except ApiError as exc:
            if exc.status != 409:
                raise
            return False
        if spec.get("holderIdentity") == self.identity:
            self._confirmed = time.monotonic()
        return True

    # -- keeping it --
    async def _keep(self) -> None:
        """Renew every retry period until released or lost."""
        while self.held:
            t = self.timings()
            await asyncio.sleep(t.retryPeriodSeconds)  # the renewal cadence
            async with self._lock:
                if not self.held:
                    return
                why = await self._renew(t)
            if why:
                self.held, self.lost = False, why
                log.event(_logger, "primary Lease lost", logging.WARNING, reason=why)
                self.on_lost(why)
                return

    async def _renew(self, t: Timings) -> str:
        """One renewal; why the lease is lost, or "" (renewed, or failing within the deadline)."""
        timeout = float(t.retryPeriodSeconds)
        try:
            if self._lease is not None and await self._write(
                self._lease, self._renewal(Record.of(self._lease), t), timeout
            ):
                self._said = ""
                return ""
            try:
                self._lease = await self.kube.read_lease(self.name, timeout)  # 409: look again
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._lease = None  # deleted meanwhile: this holder creates it again
            if self._lease is None:
                if await self._write(None, self._claim(None, t), timeout):
                    return ""
            else:
                record = Record.of(self._lease)
                if record.holder != self.identity:
                    return f"the primary Lease is now held by {record.holder or 'nobody'}"
                if await self._write(self._lease, self._renewal(record, t), timeout):
                    return ""
        except ApiError as exc:
            if exc.status == 404:
                self._lease = None  # deleted: the next renewal reads it again
            problem = str(exc)
        except KubeError as exc:
            problem = str(exc)
        else:
            problem = "the lease kept changing"
        failing = time.monotonic() - self._confirmed
        if failing > t.renewDeadlineSeconds:
            return f"not renewed for {failing:.0f} s: {problem}"
        self._say("cannot renew the primary Lease; retrying", error=problem)
        return ""

    # -- giving it up --
    async def release(self) -> bool:
        """Clear the holder when this instance holds the lease (on a clean exit, or when
        it is no longer the target primary). Without a local hold, the lease is read once
        per daemon (a previous run may have left it naming this pod). True if released."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if not self.held and self._released_checked:
            return False
        self._released_checked = True
        async with self._lock:
            self.held = False
            t = self.timings()
            timeout = float(t.retryPeriodSeconds)
            try:
                lease = await self.kube.read_lease(self.name, timeout)
            except ApiError as exc:
                if exc.status == 404:
                    return False
                raise
            record = Record.of(lease)
            if record.holder != self.identity:
                return False
            now = micro_time()
            spec = {
                "leaseDurationSeconds": t.releasedLeaseDurationSeconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": record.transitions,
            }
            released = await self._write(lease, spec, timeout)
        if released:
            log.event(_logger, "primary Lease released", lease=self.name)
        return released

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing

    def _say(self, what: str, **fields: Any) -> None:
        """Log ``what`` when it differs from the last thing said."""
        said = f"{what} {sorted(fields.items())}"
        if said != self._said:
            self._said = said
            log.event(_logger, what, logging.WARNING, **fields)
