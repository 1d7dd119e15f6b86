"""WAL file names: TTTTTTTTXXXXXXXXYYYYYYYY (timeline, log id, segment), all hex."""

from __future__ import annotations

import re

SEGMENT = re.compile(r"^[0-9A-F]{24}$")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


def is_segment(name: str) -> bool:
    return bool(SEGMENT.match(name))


def following(name: str, count: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[str]:
    """The ``count`` segment names after ``name`` on the same timeline."""
    if not is_segment(name):
        raise ValueError(f"{name!r} is not a WAL segment name")
    timeline, log_id, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    per_log = 0x100000000 // segment_size
    position = log_id * per_log + seg
    out = []
    for step in range(1, count + 1):
        log_next, seg_next = divmod(position + step, per_log)
        out.append(f"{timeline:08X}{log_next:08X}{seg_next:08X}")
    return out


def timeline_of(name: str) -> str:
    return name[:8]
