"""Small parsers the query format needs: Go durations and semver version ranges.

``runonserver`` is a semver range (``">=17.0.0"``, ``">=10.0.0 <13.0.0 || >=15.0.0"``)
checked against the server's version. PostgreSQL is not semver: like CloudNativePG we
read 15.7 as 15.0.7 (the minor release goes in the patch position), so ``">=17.0.0"``
means "17 or later" and ``"<17.0.0"`` "before 17".
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

Version = tuple[int, int, int]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """A Go duration ("30s", "1m30s", "250ms", "0") in seconds; ValueError if malformed."""
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    if value == "0":
        return 0.0
    if not value:
        raise ValueError(f"invalid duration {text!r}")
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(value):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 30s, 1m30s, 250ms)")
    return sign * total


def pg_version(server_version_num: int) -> Version:
    """150007 -> (15, 0, 7); 90624 -> (9, 6, 24)."""
    if server_version_num >= 100000:
        return (server_version_num // 10000, 0, server_version_num % 10000)
    major, rest = divmod(server_version_num, 10000)
    return (major, rest // 100, rest % 100)


_OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
    "": operator.eq,
}
_COMPARATOR = re.compile(r"^(>=|<=|!=|==|=|>|<)?v?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass(frozen=True)
class VersionRange:
    """OR of AND-groups of comparisons, as blang/semver's ParseRange reads them."""

    text: str
    groups: tuple[tuple[tuple[str, Version], ...], ...]

    def __contains__(self, version: Version) -> bool:
        return any(
            all(_OPERATORS[op](version, bound) for op, bound in group) for group in self.groups
        )


def parse_range(text: str) -> VersionRange:
    """Parse a range; ValueError names the part that is not understood."""
    normalised = re.sub(r"(>=|<=|!=|==|=|>|<)\s+", r"\1", text.strip())
    groups = []
    for alternative in normalised.split("||"):
        parts = alternative.split()
        if not parts:
            raise ValueError(f"invalid version range {text!r}: empty alternative")
        group = []
        for part in parts:
            match = _COMPARATOR.match(part)
            if not match:
                raise ValueError(f"invalid version range {text!r}: cannot read {part!r}")
            op, major, minor, patch = match.groups()
            group.append((op or "", (int(major), int(minor or 0), int(patch or 0))))
        groups.append(tuple(group))
    return VersionRange(text, tuple(groups))
