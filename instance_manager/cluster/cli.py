"""``instance-manager switchover|failover --to NAME``: the operator's part, for people.

Both edit ``status.targetPrimary`` in the shared Cluster document (a temporary file renamed
over it, with the document's mode and owner) and then watch the instances' reports until
the change is done, printing one line per step. ``switchover`` refuses a target that is
not a ready streaming standby (its report and its ``/readyz``, over HTTPS verified against
the cluster CA when the document sets ``instance.statusPortTLS``) and waits until the former
primary has rejoined as a standby; ``failover`` only needs the target to be a standby and
does not wait for the former primary, which may be gone.

Exit codes: 0 done, 1 not done within ``--timeout``, 2 refused (nothing written).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from instance_manager.cluster import reports, view
from instance_manager.cluster.certs import CA_CRT, ca_dir
from instance_manager.cluster.reports import Report

EXIT_DONE = 0
EXIT_TIMEOUT = 1
EXIT_REFUSED = 2
DEFAULT_TIMEOUT = 600.0
POLL = 0.1
HTTP_TIMEOUT = 2.0


class Refused(Exception):
    """The request cannot be carried out; nothing was written."""


def add_parsers(sub: Any) -> None:
    for name, text in (
        ("switchover", "make a ready standby the primary; the primary rejoins as a standby"),
        ("failover", "make a standby the primary, whether or not the primary is alive"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("--to", required=True, help="pod name of the new primary")
        parser.add_argument("--config", type=Path, required=True, help="the Cluster document")
        parser.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait [600]"
        )


def read_document(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise Refused(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(f"{path} does not hold a Cluster resource")
    return data


def peers_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    peers = (document.get("instance") or {}).get("peers")
    if not isinstance(peers, dict) or not peers:
        raise Refused("the document has no instance.peers: not a standalone cluster")
    return peers


def write_target(path: Path, document: dict[str, Any], target: str) -> None:
    """status.targetPrimary = target, by rename: readers see the old or the new document."""
    import yaml

    status = document.setdefault("status", {}) or {}
    document["status"] = status
    status["targetPrimary"] = target
    info = path.stat()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, info.st_mode & 0o7777)
    try:
        os.fchmod(fd, info.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.fchown(fd, info.st_uid, info.st_gid)
        os.write(fd, yaml.safe_dump(document, sort_keys=False).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def status_tls(path: Path, document: dict[str, Any]) -> ssl.SSLContext | None:
    """With ``instance.statusPortTLS`` the status ports speak HTTPS with certificates of
    the cluster CA beside the document (cluster/certs.py); else None (plain HTTP)."""
    if not (document.get("instance") or {}).get("statusPortTLS"):
        return None
    context = ssl.create_default_context(cafile=str(ca_dir(path) / CA_CRT))
    context.check_hostname = False  # instances are named by address in the document
    return context


def readyz(peer: dict[str, Any], tls: ssl.SSLContext | None = None) -> bool:
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{peer.get('host')}:{peer.get('statusPort', 8000)}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT, context=tls) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Watch:
    """The document's instances seen through their reports."""

    def __init__(self, path: Path, document: dict[str, Any]) -> None:
        self.document = document
        self.peers = peers_of(document)
        self.directory = reports.reports_dir(path)
        self.tls = status_tls(path, document)

    def readyz(self, name: str) -> bool:
        return readyz(self.peers[name], self.tls)

    def reports(self) -> dict[str, Report]:
        return reports.read_all(self.directory, sorted(self.peers))

    def current(self) -> str | None:
        return view.current_primary(self.document.get("status") or {}, self.reports())


def check(command: str, watch: Watch, target: str) -> str | None:
    """Refuse what cannot work; the current primary."""
    if target not in watch.peers:
        raise Refused(
            f"{target} is not an instance of this cluster ({', '.join(sorted(watch.peers))})"
        )
    current = watch.current()
    if current == target:
        raise Refused(f"{target} is already the primary")
    report = watch.reports().get(target)
    if report is None or report.role != "replica":
        raise Refused(f"{target} is not running as a standby")
    if command == "switchover":
        if current is None:
            raise Refused("no current primary: use failover")
        if not report.ready or not watch.readyz(target):
            raise Refused(f"{target} is not a ready streaming standby")
    return current


def wait(command: str, watch: Watch, target: str, old: str | None, timeout: float) -> int:
    steps: list[tuple[str, Callable[[], bool]]] = [
        (f"{target} is the current primary", lambda: watch.current() == target),
        (
            f"{target} accepts connections as primary",
            lambda: _is(watch, target, "primary") and watch.readyz(target),
        ),
    ]
    if command == "switchover" and old is not None:
        steps.append((f"{old} rejoined as a standby", lambda: _is(watch, old, "replica")))
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    for text, done in steps:
        while not done():
            if time.monotonic() > deadline:
                print(f"timed out after {timeout:g} s waiting: {text}", flush=True)
                return EXIT_TIMEOUT
            time.sleep(POLL)
        print(f"{time.monotonic() - started:7.3f}s  {text}", flush=True)
    return EXIT_DONE


def _is(watch: Watch, name: str, role: str) -> bool:
    report = watch.reports().get(name)
    return report is not None and report.role == role and report.ready


def main(args: argparse.Namespace) -> int:
    try:
        document = read_document(args.config)
        watch = Watch(args.config, document)
        old = check(args.command, watch, args.to)
        write_target(args.config, document, args.to)
    except (Refused, OSError) as exc:
        print(f"instance-manager {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(
        f"{args.command}: targetPrimary = {args.to} (current primary: {old or 'none'})", flush=True
    )
    return wait(args.command, watch, args.to, old, args.timeout)


def run(argv: Sequence[str]) -> int:
    """For ``python -m``-style use in tests: parse ``argv`` as the subcommand's."""
    parser = argparse.ArgumentParser(prog="instance-manager")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return main(parser.parse_args(list(argv)))
