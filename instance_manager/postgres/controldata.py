"""``pg_controldata``: run it and read its ``key: value`` lines."""

from __future__ import annotations

import os
from collections.abc import Mapping

from instance_manager import log
from instance_manager.errors import NoWALSpaceError
from instance_manager.process import spawn
from instance_manager.settings import Settings

STATE_KEY = "Database cluster state"
SEGMENT_SIZE_KEY = "Bytes per WAL segment"
CHECKSUM_KEY = "Data page checksum version"  # "0": no page checksums
# pg_controldata line -> parameter, for the hot-standby-sensitive values pg_control records
# (a standby needs them at least as high as the primary's).
CONTROLDATA_SETTINGS = {
    "max_connections setting": "max_connections",
    "max_wal_senders setting": "max_wal_senders",
    "max_worker_processes setting": "max_worker_processes",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}


def hot_standby_values(values: Mapping[str, str]) -> dict[str, int]:
    """The hot-standby-sensitive settings pg_control holds, by parameter name."""
    found = {}
    for key, parameter in CONTROLDATA_SETTINGS.items():
        value = values.get(key, "")
        if value.lstrip("-").isdigit():
            found[parameter] = int(value)
    return found


def parse(output: str) -> dict[str, str]:
    values = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    return values


async def read(settings: Settings, timeout: float = 10.0) -> tuple[dict[str, str], str]:
    """Returns (parsed values, raw output)."""
    _, out = await spawn.run(
        [settings.bin("pg_controldata"), "-D", str(settings.pgdata)],
        env=spawn.base_env({"LC_ALL": "C"}),
        timeout=timeout,
    )
    return parse(out), out


async def check_wal_space(settings: Settings) -> tuple[int, bool]:
    """Before a start: logs the control data; (WAL segment size, data checksums on).
    NoWALSpaceError when pg_wal has no room for one segment."""
    values, raw = await read(settings)
    log.event(log.get("pg_controldata"), "postmaster start up", output=raw)
    segment = int(values.get(SEGMENT_SIZE_KEY, "16777216"))
    checksums = values.get(CHECKSUM_KEY, "0") != "0"
    fs = os.statvfs(settings.pgdata / "pg_wal")
    free = fs.f_bavail * fs.f_frsize
    if free < segment:
        raise NoWALSpaceError(f"no room for a WAL segment ({segment} bytes): {free} bytes free")
    return segment, checksums
