"""Each instance's report of itself, kept beside the shared Cluster document.

``<document dir>/<document name>.status/<podName>.json``: one file per instance, written
only by that instance's daemon (temporary file + rename, mode 0644), read by every other
daemon and by the switchover/failover commands. It carries what the Kubernetes mode will
patch into the Cluster status: the role, and the claim ``currentPrimary`` with the time the
instance became primary.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORT_MODE = 0o644
DIRECTORY_MODE = 0o755


def reports_dir(document: Path) -> Path:
    return document.absolute().parent / f"{document.name}.status"


def now_rfc3339() -> str:
    """The current time, RFC 3339 with microseconds (sorts as text within one zone)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Report:
    name: str
    role: str = "unknown"  # "primary" | "replica" | "unknown"
    currentPrimary: str | None = None  # this pod, when it promoted itself / runs as primary
    currentPrimaryTimestamp: str | None = None
    timeLineID: int | None = None
    systemID: str | None = None
    ready: bool = False
    receivedLsn: str | None = None
    replayLsn: str | None = None
    currentLsn: str | None = None
    fenced: bool = False
    updated: str = ""
    # Rolling restarts (rolling.py): what waits for a restart, and the spec.postgresql hash
    # PostgreSQL confirmed ("" while a configuration is being applied).
    pendingRestart: bool = False
    pendingRestartForDecrease: bool = False
    appliedSpec: str = ""
    # This instance's Cluster conditions (ContinuousArchiving), as metav1.Condition.
    conditions: list[dict[str, str]] = field(default_factory=list)

    def decisive(self) -> tuple[object, ...]:
        """The fields other instances and the commands act on (not LSNs, not the time)."""
        return (
            self.role,
            self.currentPrimary,
            self.currentPrimaryTimestamp,
            self.timeLineID,
            self.systemID,
            self.ready,
            self.fenced,
            self.pendingRestart,
            self.pendingRestartForDecrease,
            self.appliedSpec,
            tuple((c.get("type"), c.get("status")) for c in self.conditions),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> Report | None:
        """A report read from a file; None when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None


def write(directory: Path, report: Report) -> None:
    """Replace this instance's report atomically (readers never see half a file)."""
    directory.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
    path = directory / f"{report.name}.json"
    tmp = directory / f".{report.name}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, REPORT_MODE)
    try:
        os.fchmod(fd, REPORT_MODE)  # the daemon's umask is 0077
        os.write(fd, report.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(directory: Path, name: str) -> Report | None:
    try:
        return Report.from_json(json.loads((directory / f"{name}.json").read_text()))
    except (OSError, ValueError):
        return None


def read_all(directory: Path, names: list[str]) -> dict[str, Report]:
    found = {}
    for name in names:
        report = read(directory, name)
        if report is not None and report.name == name:
            found[name] = report
    return found


def fingerprint(directory: Path, skip: str = "") -> tuple[tuple[str, int], ...]:
    """Names and modification times of the reports but ``skip``'s (this instance's own):
    changes when another instance rewrites its report."""
    out = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".json") and entry.name != f"{skip}.json":
                with contextlib.suppress(OSError):
                    out.append((entry.name, entry.stat().st_mtime_ns))
    return tuple(sorted(out))
