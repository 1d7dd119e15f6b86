"""The Kubernetes API server as the reconciler's cluster source.

The Cluster resource is read once at start (``kube/start.py`` waits for it), then
watched from its ``resourceVersion``: a watch that ends is resumed from the last version
seen, a 410 Gone (the version is too old) is answered by reading the Cluster again, and an
unreachable API server is retried with back-off while the last copy stays in use (the
reconciler and the probes keep working on it, as CloudNativePG's cache does).

Each instance's report is its entry in ``status.instancesReportedState`` (CloudNativePG's
``isPrimary``, ``timeLineID`` and ``ip``, plus this daemon's report fields and its ports),
written with a merge patch of that one key, so instances never overwrite each other. The
instances of the cluster, with their addresses, are those that reported. After a
promotion the instance patches ``currentPrimary`` and its timestamp; ``systemID`` and the
``ContinuousArchiving`` condition follow its report; role changes and failures become
Events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from instance_manager import log
from instance_manager.cluster import reports
from instance_manager.cluster.reports import Report
from instance_manager.cluster.source import ClusterSource, Notify, age_of
from instance_manager.cluster_model import Cluster
from instance_manager.kube import certificates, events, lease, model, quorum
from instance_manager.kube.client import ApiError, Kube, KubeError, Unreachable
from instance_manager.settings import Peer, Settings

_logger = log.get()
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
# status keys an instance's report changes besides its own entry
CONDITIONS = "conditions"
CONFLICT_RETRIES = 3
# The Secrets named in the status are read again this often (seconds): a rotation by the
# operator reaches PostgreSQL and the status and metrics ports within about this long.
CERTIFICATE_INTERVAL = 5.0


def own_address(settings: Settings) -> str:
    """The address the other instances reach this one at."""
    if settings.instance.podIP:
        return settings.instance.podIP
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def version_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def newer(candidate: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """``candidate`` is a later version than ``current`` (etcd's versions are numbers)."""
    a, b = version_of(candidate), version_of(current)
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return a != b


class KubeSource(ClusterSource):
    certificate_interval = CERTIFICATE_INTERVAL

    def __init__(self, kube: Kube, obj: dict[str, Any], settings: Settings) -> None:
        self.kube = kube
        self.obj = obj
        self.me = settings.instance.podName
        self.address = own_address(settings)
        self.description = f"the API server (Cluster {kube.target.namespace}/{kube.target.name})"
        self.port = settings.instance.port
        self.status_port = settings.instance.statusPort or 8000
        self.events = events.Events(kube, obj)
        self.quorum = quorum.Quorum(kube)
        self._notify: tuple[Notify, Notify] | None = None
        self._role = ""
        self._fenced: bool | None = None
        self.lease = lease.PrimaryLease(
            kube, self.me, lambda: lease.timings_of(self.cluster().spec), self._lease_lost
        )

    # -- the Cluster --
    def cluster(self) -> Cluster:
        return model.cluster_from(self.obj)

    def _entries(self) -> dict[str, Any]:
        found = (self.obj.get("status") or {}).get("instancesReportedState") or {}
        return found if isinstance(found, dict) else {}

    def _take(self, obj: dict[str, Any]) -> None:
        """A newer version of the Cluster: keep it, and wake the reconciler for what changed."""
        if not newer(obj, self.obj):
            return
        before, self.obj = self.obj, obj
        self.events.cluster = obj
        if self._notify is None:
            return
        cluster_changed, reports_changed = self._notify
        if _decisive(before) != _decisive(obj):
            cluster_changed()
        mine = self.me
        old = {k: v for k, v in _entries_of(before).items() if k != mine}
        new = {k: v for k, v in _entries_of(obj).items() if k != mine}
        if old != new:
            reports_changed()

    # -- ClusterSource --
    def peers(self, settings: Settings) -> Mapping[str, Peer]:
        found: dict[str, Peer] = {}
        for name, entry in self._entries().items():
            if name == self.me or not isinstance(entry, dict) or not entry.get("ip"):
                continue
            try:
                found[name] = Peer(
                    host=str(entry["ip"]),
                    port=int(entry.get("port") or 5432),
                    statusPort=int(entry.get("statusPort") or 8000),
                )
            except (TypeError, ValueError):
                continue
        found[self.me] = Peer(host=self.address, port=self.port, statusPort=self.status_port)
        return found

    def reports(self, names: Sequence[str]) -> dict[str, Report]:
        entries = self._entries()
        found = {}
        for name in names:
            entry = entries.get(name)
            if isinstance(entry, dict):
                report = Report.from_json({**entry, "name": name})
                if report is not None:
                    found[name] = report
        return found

    async def write_report(self, report: Report) -> None:
        entry = dataclasses.asdict(report)
        del entry["name"]
        entry.update(isPrimary=report.role == "primary", ip=self.address)
        entry.update(port=self.port, statusPort=self.status_port)

        def status() -> dict[str, Any]:
            found: dict[str, Any] = {"instancesReportedState": {self.me: entry}}
            found.update(self._claim(report))
            if report.role == "primary" and report.systemID:
                found["systemID"] = report.systemID
            conditions = self._conditions(report)
            if conditions is not None:
                found[CONDITIONS] = conditions
            return found

        await self._patch_status(status)
        await self._role_event(report)

    async def set_target_primary(self, target: str) -> None:
        if (self.obj.get("status") or {}).get("targetPrimary") == target:
            return
        now = reports.now_rfc3339()
        await self._patch_status(lambda: {"targetPrimary": target, "targetPrimaryTimestamp": now})
        await self.events.emit("SwitchoverRequested", f"rolling update: switchover to {target}")

    async def promoted(self, me: str, since: str) -> None:
        """The report written just before carried the claim (``_claim``)."""
        await self.events.emit("Promoted", f"{me} is the new primary (since {since})")

    async def acquire_primary(self) -> bool:
        return await self.lease.try_acquire()

    async def release_primary(self) -> None:
        try:
            await self.lease.release()
        except KubeError as exc:
            log.event(_logger, "cannot release the primary Lease", logging.WARNING, error=str(exc))

    def primary_lost(self) -> str:
        return "" if self.lease.held else self.lease.lost

    def _lease_lost(self, why: str) -> None:
        if self._notify is not None:
            self._notify[1]()  # wakes the reconciler, which stops this primary

    async def publish_quorum(self, metadata: str | None) -> None:
        try:
            if await self.quorum.publish(quorum.quorum_status(metadata, self.me)):
                log.event(_logger, "failover quorum updated", metadata=metadata or None)
        except KubeError as exc:
            raise OSError(f"cannot update the FailoverQuorum: {exc}") from None

    async def close(self) -> None:
        await self.lease.close()
        await self.kube.close()

    async def reachable(self, timeout: float) -> bool:
        try:
            self._take(await self.kube.get_cluster(timeout=timeout))
        except ApiError:
            return True  # it answered
        except KubeError:
            return False
        return True

    def report_ages(self, names: Sequence[str], now: float) -> dict[str, float]:
        found = self.reports(names)
        ages = {n: age_of(r, now) for n, r in found.items()}
        return {n: a for n, a in ages.items() if a is not None}

    async def ensure_certificates(self, settings: Settings) -> bool:
        """The Secrets named in the status, written when they changed. An API failure
        keeps the files in place (logged): the next call tries again."""
        try:
            files = await certificates.fetch(self.kube, self.obj.get("status") or {})
            written = await asyncio.to_thread(certificates.write, settings, files)
        except (KubeError, certificates.MissingMaterial) as exc:
            log.event(_logger, "cannot read the certificates", logging.WARNING, error=str(exc))
            return False
        if written:
            log.event(_logger, "certificates written", files=written)
        return bool(written)

    async def watch(self, me: str, cluster_changed: Notify, reports_changed: Notify) -> None:
        self._notify = (cluster_changed, reports_changed)
        version, delay, said = version_of(self.obj), BACKOFF_FIRST, ""
        expired = False  # a 410: read the Cluster again before the next watch
        while True:
            try:
                if expired:
                    version, expired = await self._relist(), False
                async for event in self.kube.watch_cluster(version):
                    version = self._event(event, version)
                    delay, said = BACKOFF_FIRST, ""
                continue
            except ApiError as exc:
                if exc.status == 410:
                    expired = True
                    continue
                what, problem = "the Cluster watch failed; retrying", str(exc)
            except Unreachable as exc:
                what, problem = "API server unreachable; retrying", str(exc)
            if problem != said:
                said = problem
                log.event(_logger, what, logging.WARNING, error=said)
            await asyncio.sleep(delay)  # back-off before the next attempt
            delay = min(delay * 2, BACKOFF_MAX)

    # -- helpers --
    def _event(self, event: Mapping[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            return version
        if kind == "ERROR":
            code = obj.get("code")
            raise ApiError(int(code or 0), str(obj.get("reason") or ""), str(obj.get("message")))
        if kind == "BOOKMARK":
            return version_of(obj) or version
        if kind == "DELETED":
            log.event(_logger, "the Cluster was deleted; keeping the last copy", logging.WARNING)
            return version_of(obj) or version
        self._take(obj)
        return version_of(obj) or version

    async def _relist(self) -> str:
        log.event(_logger, "the Cluster watch expired (410); reading the Cluster again")
        self._take(await self.kube.get_cluster())
        return version_of(self.obj)

    async def _patch_status(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """A merge patch of the status built by ``status()``; on a conflict (409) the
        Cluster is read again and the patch built anew, CONFLICT_RETRIES times."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._take(await self.kube.patch_cluster_status({"status": status()}))
                return
            except ApiError as exc:
                if exc.status != 409 or attempt == CONFLICT_RETRIES:
                    raise OSError(str(exc)) from None
            except KubeError as exc:
                raise OSError(str(exc)) from None
            try:
                self._take(await self.kube.get_cluster())
            except KubeError as exc:
                raise OSError(str(exc)) from None

    def _claim(self, report: Report) -> dict[str, Any]:
        """``currentPrimary`` and its timestamp when this instance's claim is newer than the
        status' (a promotion, or the first primary of a new cluster)."""
        status = self.obj.get("status") or {}
        since = report.currentPrimaryTimestamp
        if report.currentPrimary != self.me or not since or report.role != "primary":
            return {}
        if status.get("currentPrimary") == self.me:
            return {}
        if str(status.get("currentPrimaryTimestamp") or "") >= since:
            return {}
        return {"currentPrimary": self.me, "currentPrimaryTimestamp": since}

    def _conditions(self, report: Report) -> list[dict[str, Any]] | None:
        """The status' conditions with this primary's ones replaced, when they differ."""
        if report.role != "primary" or not report.conditions:
            return None
        current = (self.obj.get("status") or {}).get(CONDITIONS) or []
        mine = {c.get("type") for c in report.conditions}
        kept = [c for c in current if isinstance(c, dict) and c.get("type") not in mine]
        wanted = kept + [dict(c) for c in report.conditions]
        return None if _same_conditions(current, wanted) else wanted

    async def _role_event(self, report: Report) -> None:
        """Events for this instance's role and fencing changes (not for the first report)."""
        if self._fenced is not None and report.fenced != self._fenced:
            reason = "Fenced" if report.fenced else "Unfenced"
            await self.events.emit(reason, f"{self.me}: PostgreSQL {reason.lower()}")
        self._fenced = report.fenced
        if report.role == self._role or report.role == "unknown":
            return
        if self._role:
            await self.events.emit("RoleChanged", f"{self.me}: {self._role} -> {report.role}")
        self._role = report.role

    async def event(self, reason: str, message: str, warning: bool = False) -> None:
        await self.events.emit(reason, f"{self.me}: {message}", warning)


def _entries_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    found = (obj.get("status") or {}).get("instancesReportedState") or {}
    return found if isinstance(found, dict) else {}


def _decisive(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the reconciler follows: spec, annotations, and the operator's status fields."""
    metadata = obj.get("metadata") or {}
    status = dict(obj.get("status") or {})
    status.pop("instancesReportedState", None)
    status.pop(CONDITIONS, None)
    return (obj.get("spec"), metadata.get("annotations"), metadata.get("labels"), status)


def _same_conditions(a: Sequence[Any], b: Sequence[Any]) -> bool:
    def key(items: Sequence[Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
            for c in items
            if isinstance(c, dict)
        )

    return key(a) == key(b)
