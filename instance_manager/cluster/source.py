"""Where the reconciler's Cluster comes from, and where the instances' reports go.

Two sources feed the same reconciler:

- ``FileSource`` (standalone cluster mode): the shared Cluster document, its peers in
  ``instance.peers``, and one report file per instance beside it (cluster/reports.py);
- the Kubernetes API server (``kube/source.py``): the Cluster resource, watched, with each
  instance's report in ``status.instancesReportedState``.

A source knows the cluster's instances and their addresses, reads and writes reports,
carries out the two writes an instance makes on the operator's behalf (the target of a
rolling switchover, and ``currentPrimary`` after a promotion), tells the isolation check
whether it is reachable, and wakes the reconciler when the Cluster or a report changes.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from instance_manager.cluster import certs, reports
from instance_manager.cluster.reports import Report
from instance_manager.settings import Peer, Settings

Notify = Callable[[], None]
# Watch of the reports directory: changes are delivered within about this many ms.
WATCH_STEP_MS = 20
WATCH_DEBOUNCE_MS = 40


class ClusterSource(abc.ABC):
    """What the reconciler and its parts need from the place the Cluster lives."""

    #: Named in logs and in the isolation check's message.
    description: str = ""
    #: Logged when a new version of the Cluster arrives.
    changed_message: str = "the Cluster changed"
    #: Seconds between two ``ensure_certificates`` of a running instance; None: only
    #: before each start of PostgreSQL.
    certificate_interval: float | None = None

    @abc.abstractmethod
    def peers(self, settings: Settings) -> Mapping[str, Peer]:
        """Every instance of the cluster by pod name (this one included), with addresses."""

    @abc.abstractmethod
    def reports(self, names: Sequence[str]) -> dict[str, Report]:
        """The latest report of each named instance that has one."""

    @abc.abstractmethod
    async def write_report(self, report: Report) -> None:
        """Publish this instance's report (raises OSError when the source is unreachable)."""

    @abc.abstractmethod
    async def set_target_primary(self, target: str) -> None:
        """Make ``target`` the target primary (a rolling restart's switchover)."""

    async def promoted(self, me: str, since: str) -> None:  # noqa: B027 - optional
        """This instance became the primary at ``since``: sources with a status say so."""

    @abc.abstractmethod
    async def reachable(self, timeout: float) -> bool:
        """The source answers (the isolation check's first question)."""

    @abc.abstractmethod
    def report_ages(self, names: Sequence[str], now: float) -> dict[str, float]:
        """Seconds since each named peer last reported; peers that never did are left out."""

    @abc.abstractmethod
    async def watch(self, me: str, cluster_changed: Notify, reports_changed: Notify) -> None:
        """Call back on every new Cluster version and every other instance's new report."""

    @abc.abstractmethod
    async def ensure_certificates(self, settings: Settings) -> bool:
        """This instance's TLS files in place; True when a file changed."""

    async def acquire_primary(self) -> bool:
        """One attempt to take the primary Lease (Kubernetes mode); True once held. This
        instance promotes, or starts PostgreSQL as primary, only while it holds it."""
        return True

    async def release_primary(self) -> None:  # noqa: B027 - optional
        """Give the primary Lease up if this instance holds it (a clean exit, a
        switchover): another instance may then take it at once."""

    def primary_lost(self) -> str:
        """Why this instance may not go on as primary (the Lease is another instance's,
        or could not be renewed in time), or "". The source wakes the reconciler (as a
        report change does) when the Lease is lost."""
        return ""

    async def event(self, reason: str, message: str, warning: bool = False) -> None:  # noqa: B027
        """Tell people (Kubernetes Events); sources without such a channel only log."""

    async def publish_quorum(self, metadata: str | None) -> None:  # noqa: B027 - optional
        """The synchronous standby set PostgreSQL runs with (its
        ``cnpg.synchronous_standby_names_metadata``), for sources that keep a
        FailoverQuorum (``spec.postgresql.synchronous.failoverQuorum``)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections (at the daemon's exit)."""


class FileSource(ClusterSource):
    """Standalone cluster mode: the document on disk and the report files beside it."""

    def __init__(self, document: Path) -> None:
        self.document = document
        self.directory = reports.reports_dir(document)
        self.description = f"the Cluster document {document}"
        self.changed_message = "settings file changed"  # as in single-instance mode

    def peers(self, settings: Settings) -> Mapping[str, Peer]:
        return settings.instance.peers or {}

    def reports(self, names: Sequence[str]) -> dict[str, Report]:
        return reports.read_all(self.directory, list(names))

    async def write_report(self, report: Report) -> None:
        await asyncio.to_thread(reports.write, self.directory, report)

    async def set_target_primary(self, target: str) -> None:
        from instance_manager.cluster import cli

        def switch() -> None:
            document = cli.read_document(self.document)
            if (document.get("status") or {}).get("targetPrimary") != target:
                cli.write_target(self.document, document, target)

        await asyncio.to_thread(switch)

    async def reachable(self, timeout: float) -> bool:
        return await asyncio.to_thread(os.access, self.document, os.R_OK)

    def report_ages(self, names: Sequence[str], now: float) -> dict[str, float]:
        ages = {}
        for name in names:
            with contextlib.suppress(OSError):
                ages[name] = now - os.stat(self.directory / f"{name}.json").st_mtime
        return ages

    async def ensure_certificates(self, settings: Settings) -> bool:
        peers = self.peers(settings)
        return await asyncio.to_thread(certs.ensure, settings, self.document, peers)

    async def watch(self, me: str, cluster_changed: Notify, reports_changed: Notify) -> None:
        """The document (its directory, as config_watch does, so a ConfigMap's swap is
        seen) and the reports directory, with a short step: a new targetPrimary or a
        peer's claim is seen within ~50 ms."""
        from instance_manager.process.watch import awatch

        await asyncio.to_thread(self.directory.mkdir, reports.DIRECTORY_MODE, False, True)
        folder = self.document.absolute().parent
        last = await asyncio.to_thread(self._fingerprints, me)
        async for _ in awatch(
            folder,
            self.directory,
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            recursive=False,
        ):
            now = await asyncio.to_thread(self._fingerprints, me)
            if now[0] != last[0]:
                cluster_changed()
            if now[1] != last[1]:
                reports_changed()
            last = now

    def _fingerprints(self, me: str) -> tuple[bytes | None, tuple[tuple[str, int], ...]]:
        try:
            document: bytes | None = self.document.read_bytes()
        except OSError:
            document = None
        return document, reports.fingerprint(self.directory, me)


def age_of(report: Report, now: float) -> float | None:
    """Seconds since ``report`` was written, by its own ``updated`` time."""
    from datetime import datetime

    try:
        return now - datetime.fromisoformat(report.updated.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
