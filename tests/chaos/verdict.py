"""Rows and primaries: what the recovery holds against what the writers saw acknowledged.

Two writable primaries at once. Every acknowledged row carries the tag its server gave it:
the instance (its port) and the timeline its WAL was inserted on. One *epoch* is one
(instance, timeline) pair: an instance is primary on a timeline over one contiguous span of
time (a promotion always starts a new timeline; a crash restart in place keeps the timeline
and the role). The commit of an acknowledged row happened at some moment between the
client's send and its acknowledgement, so an epoch was certainly writable at a moment no
later than its earliest acknowledgement and at one no earlier than its latest send, hence
throughout [earliest ack, latest send]. Two epochs whose such windows overlap prove two
primaries accepting writes at the same time. The same test is made on the servers' own
``clock_timestamp()`` of the rows (one host, one clock), which also covers rows whose
acknowledgement was lost. Rows a forked primary accepted and the recovery does not hold are
caught by the lost-rows check.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.chaos.load import Ack


@dataclass(frozen=True)
class Epoch:
    instance: str
    tli: str
    rows: int
    start: float
    end: float


def epochs(
    acks: list[Ack], rows: list[tuple[Any, ...]], port_names: dict[int, str]
) -> tuple[list[Epoch], list[Epoch]]:
    """(client windows, server windows), each sorted by start."""
    tag = {int(r[0]): (port_names.get(int(r[1]), str(r[1])), str(r[2])) for r in rows}
    client: dict[tuple[str, str], list[Ack]] = defaultdict(list)
    for ack in acks:
        if ack.txid in tag:
            client[tag[ack.txid]].append(ack)
    server: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for r in rows:
        server[tag[int(r[0])]].append(r[3])
    by_client = [
        Epoch(k[0], k[1], len(v), min(a.acked for a in v), max(a.sent for a in v))
        for k, v in client.items()
    ]
    by_server = [
        Epoch(k[0], k[1], len(v), min(v).timestamp(), max(v).timestamp()) for k, v in server.items()
    ]
    return sorted(by_client, key=lambda e: e.start), sorted(by_server, key=lambda e: e.start)


def overlaps(found: list[Epoch]) -> list[str]:
    out = []
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if a.start < b.end and b.start < a.end and a.end > a.start and b.end > b.start:
                out.append(
                    f"{a.instance}/TL{a.tli} [{a.start:.3f}, {a.end:.3f}] overlaps "
                    f"{b.instance}/TL{b.tli} [{b.start:.3f}, {b.end:.3f}]"
                )
    return out


def smallest_gap(found: list[Epoch]) -> float | None:
    """The shortest time between one epoch's last write and the next one's first (server)."""
    gaps = [b.start - a.end for a, b in itertools.pairwise(found)]
    return min(gaps) if gaps else None


def table(title: str, rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * (width + 30)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
