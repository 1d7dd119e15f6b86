"""PostgreSQL without the daemon: ``pg_ctl`` run as postgres, and PostgreSQL's log times.

The references of the benchmarks: the daemon's PGDATA started by hand, the way a person
would, with the settings the daemon's ``custom.conf`` would otherwise impose overridden.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from harness import PG_BIN, RUN_AS, BenchError, Daemon, Layout

PG_READY = "database system is ready to accept connections"
PG_DOWN = "database system is shut down"
PG_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \w+) \[\d+\] LOG:  (.*)$")


def as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv]


def pg_ctl(lay: Layout, *args: str) -> float:
    """Wall time of one ``pg_ctl`` run as postgres."""
    argv = as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(lay.pgdata), *args)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"pg_ctl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return elapsed


def pg_ctl_start(lay: Layout, *settings: str) -> float:
    """``pg_ctl start -w`` on the daemon's PGDATA, with ``settings`` ('name=value') on top."""
    # custom.conf points the logging collector at the daemon's FIFOs: nobody reads them now.
    options = [
        f"-c port={lay.pg_port}",
        "-c listen_addresses=127.0.0.1",
        f"-c unix_socket_directories={lay.run_dir}",
        "-c logging_collector=off",
        "-c log_destination=stderr",
        *(f"-c {setting}" for setting in settings),
    ]
    log_file = str(lay.root / "pg_ctl.log")
    return pg_ctl(lay, "start", "-w", "-l", log_file, "-o", " ".join(options))


def pg_ctl_stop(lay: Layout) -> float:
    return pg_ctl(lay, "stop", "-m", "fast", "-w")


def pg_ctl_log_time(lay: Layout, message: str, since: float) -> dict[str, float]:
    """ms after ``since`` (epoch) at which PostgreSQL logged ``message`` under pg_ctl."""
    for line in (lay.root / "pg_ctl.log").read_text(errors="replace").splitlines():
        match = PG_LOG_LINE.match(line)
        if match and match.group(2) == message:
            at = pg_log_time(match.group(1))
            if at >= since - 0.001:  # log_time is truncated to the millisecond
                return {message: (at - since) * 1000}
    return {}


# -- log times ----------------------------------------------------------------------------


def daemon_timeline(daemon: Daemon, names: Mapping[str, str], since: float) -> dict[str, float]:
    """ms after ``since`` (epoch) at which the daemon first logged each named message."""
    found: dict[str, float] = {}
    for line in daemon.events():
        msg, ts = event_time(line)
        if msg in names and msg not in found:
            found[msg] = (ts - since) * 1000
    return found


def event_time(line: dict[str, Any]) -> tuple[str, float]:
    """A log line's message and epoch time; PostgreSQL's records by their own log_time."""
    record = line.get("record")
    if isinstance(record, dict) and record.get("message") in (PG_READY, PG_DOWN):
        return str(record["message"]), pg_log_time(str(record["log_time"]))
    return str(line.get("msg")), float(line.get("ts", 0))


def pg_log_time(stamp: str) -> float:
    """Epoch seconds of a PostgreSQL log_time such as '2026-01-02 03:04:05.678 UTC'."""
    parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f %Z")
    return parsed.replace(tzinfo=UTC).timestamp()
