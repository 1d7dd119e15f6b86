"""``pg_controldata``: run it and read its ``key: value`` lines."""

from __future__ import annotations

from instance_manager.process import spawn
from instance_manager.settings import Settings

STATE_KEY = "Database cluster state"
SEGMENT_SIZE_KEY = "Bytes per WAL segment"
CHECKSUM_KEY = "Data page checksum version"  # "0": no page checksums


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
