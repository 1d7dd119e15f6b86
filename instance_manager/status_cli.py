"""``instance-manager status``: this instance's ``/pg/status``, as JSON or as a summary.

Standard library only (it runs beside the daemon, often in a hurry): it asks the status
port on localhost; with TLS the server certificate is not verified (it is our own daemon
on the loopback interface, and /pg/status needs no client certificate).
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
from typing import Any, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_PORT = 8000
TIMEOUT = 10.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instance-manager status", description=__doc__)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.add_argument("--host", default="127.0.0.1", help="status server address [127.0.0.1]")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="status port [8000]")
    p.add_argument("--tls", action="store_true", help="the status port serves TLS")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds [10]")
    return p


def fetch(host: str, port: int, tls: bool, timeout: float) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/pg/status")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def summary(status: dict[str, Any]) -> list[str]:
    """A few readable lines: role, positions, replication, archiving, restarts."""
    pod = (status.get("pod") or {}).get("metadata", {}).get("name", "?")
    primary = bool(status.get("isPrimary"))
    lines = [
        f"Instance:            {pod} ({'primary' if primary else 'standby'})",
        f"System ID:           {status.get('systemID') or '-'}",
        f"Timeline:            {status.get('timeLineID') or '-'}",
    ]
    if primary:
        lines.append(f"Current LSN:         {status.get('currentLsn', '-')}")
        lines.append(f"Current WAL:         {status.get('currentWAL', '-')}")
    else:
        lines.append(f"Received LSN:        {status.get('receivedLsn', '-')}")
        lines.append(f"Replayed LSN:        {status.get('replayLsn', '-')}")
        lines.append(
            f"WAL receiver:        {'active' if status.get('isWalReceiverActive') else 'down'}"
        )
        lines.append(f"Replay paused:       {_yes(status.get('replayPaused'))}")
    for info in status.get("replicationInfo") or []:
        lines.append(
            f"Standby:             {info.get('applicationName')} {info.get('state', '')} "
            f"sent {info.get('receivedLsn', '-')} replayed {info.get('replayLsn', '-')} "
            f"lag {info.get('replayLag', '-')} ({info.get('syncState', '-')})"
        )
    lines += _archiving(status)
    pending = _yes(status.get("pendingRestart"))
    if status.get("pendingRestartForDecrease"):
        pending += " (a setting decreases)"
    lines.append(f"Pending restart:     {pending}")
    lines.append(f"Configuration hash:  {status.get('loadedConfigurationHash') or '-'}")
    lines.append(
        f"Instance manager:    {status.get('instanceManagerVersion', '?')} "
        f"{status.get('instanceArch', '')} session {status.get('sessionID', '-')}"
    )
    if status.get("mightBeUnavailable"):
        masked = status.get("mightBeUnavailableMaskedError")
        lines.append(
            "Note:                restarting or stopping" + (f": {masked}" if masked else "")
        )
    return lines


def _archiving(status: dict[str, Any]) -> list[str]:
    state = "working" if status.get("isArchivingWAL") else "not working"
    if not status.get("lastArchivedWAL") and not status.get("lastFailedWAL"):
        state = "nothing archived yet"
    lines = [f"WAL archiving:       {state}"]
    for label, key in (("last archived:", "lastArchivedWAL"), ("last failed:", "lastFailedWAL")):
        if status.get(key):
            lines.append(f"  {label:<18} {status[key]} at {status.get(key + 'Time')}")
    if status.get("readyWalFiles"):
        lines.append(f"  waiting (.ready):  {status['readyWalFiles']}")
    return lines


def main(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        code, body = fetch(args.host, args.port, args.tls, args.timeout)
    except (OSError, http.client.HTTPException) as exc:
        err.write(f"instance-manager status: cannot reach {args.host}:{args.port}: {exc}\n")
        return EXIT_FAILED
    text = body.decode(errors="replace")
    if code != 200:
        err.write(f"instance-manager status: HTTP {code}: {text.strip()}\n")
        return EXIT_FAILED
    try:
        status = json.loads(text)
    except ValueError:
        err.write("instance-manager status: the answer is not JSON\n")
        return EXIT_FAILED
    if args.output == "json":
        out.write(json.dumps(status, indent=2) + "\n")
    else:
        out.write("\n".join(summary(status)) + "\n")
    return EXIT_OK
