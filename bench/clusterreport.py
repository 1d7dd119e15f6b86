"""The report of bench/cluster.py: each side's samples, the final table and the details.

A figure a side could not measure is ``None`` and shows as ``n/a``; a target that needs it
is missed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

AUTO = "automatic"  # Patroni's own detection
CTL = "patronictl"  # patronictl failover --candidate
OUR_FAILOVER = "instance-manager failover"


@dataclass
class Figures:
    """One side's samples, in seconds."""

    label: str
    data_mb: float = 0.0
    windows: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)  # longest time between two acks
    commands: list[float] = field(default_factory=list)  # switchover command wall time
    failed_writes: list[int] = field(default_factory=list)
    switch_lost: int = 0
    failovers: dict[str, list[float]] = field(default_factory=dict)
    failover_lost: dict[str, int] = field(default_factory=dict)
    joins: list[float] = field(default_factory=list)
    basebackups: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failure: str = ""  # why the rounds stopped early, if they did
    join_timeline: list[str] = field(default_factory=list)  # the last join, agent's log


@dataclass(frozen=True)
class Line:
    metric: str
    ours: float | None  # None: not measured
    ref: float | None
    ref_name: str
    unit: str
    target: str
    passed: bool | None  # None: information only


def median(samples: Sequence[float]) -> float | None:
    return statistics.median(samples) if samples else None


def compare(
    metric: str,
    ours: float | None,
    ref: float | None,
    ref_name: str,
    target: str = "-",
    meets: Callable[[float, float], bool] | None = None,
    unit: str = "s",
) -> Line:
    """A line; with ``meets``, its verdict (missed when either figure is absent)."""
    if meets is None:
        return Line(metric, ours, ref, ref_name, unit, target, None)
    passed = ours is not None and ref is not None and meets(ours, ref)
    return Line(metric, ours, ref, ref_name, unit, target, passed)


def lines(ours: Figures | None, patroni: Figures) -> list[Line]:
    o = ours or Figures("ours")
    p = patroni
    failover = median(o.failovers.get(OUR_FAILOVER, []))
    lost = (o.switch_lost, sum(o.failover_lost.values())) if ours else (None, None)
    return [
        compare(
            "switchover window (median)",
            median(o.windows),
            median(p.windows),
            "Patroni",
            "<= 1 s and < Patroni",
            lambda a, b: a <= 1.0 and a < b,
        ),
        compare("switchover, longest gap between acks", median(o.gaps), median(p.gaps), "Patroni"),
        compare("switchover command wall time", median(o.commands), median(p.commands), "Patroni"),
        compare(
            "failover, kill -9 to first write",
            failover,
            median(p.failovers.get(AUTO, [])),
            "Patroni automatic",
            "< Patroni",
            lambda a, b: a < b,
        ),
        compare(
            "failover, kill -9 to first write",
            failover,
            median(p.failovers.get(CTL, [])),
            "patronictl failover",
            "< Patroni",
            lambda a, b: a < b,
        ),
        compare(
            "join: wiped standby to streaming",
            median(o.joins),
            median(o.basebackups),
            "pg_basebackup",
            "<= ref + 1 s",
            lambda a, b: a <= b + 1.0,
        ),
        compare(
            "acknowledged rows lost, switchovers", lost[0], p.switch_lost, "Patroni", unit="rows"
        ),
        compare(
            "acknowledged rows lost, failovers",
            lost[1],
            sum(p.failover_lost.values()),
            "Patroni",
            unit="rows",
        ),
    ]


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} {unit}" if unit == "rows" else f"{value:.3f} {unit}"


def print_lines(rows: Sequence[Line]) -> None:
    header = ("metric", "ours", "reference", "ratio", "target", "result")
    table = [header]
    for r in rows:
        ratio = f"{r.ours / r.ref:.2f}x" if r.ours is not None and r.ref else "-"
        verdict = "info" if r.passed is None else ("PASS" if r.passed else "MISS")
        ref = f"{cell(r.ref, r.unit)} ({r.ref_name})"
        table.append((r.metric, cell(r.ours, r.unit), ref, ratio, r.target, verdict))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_details(figures: Sequence[Figures]) -> None:
    print("\nDetails (seconds per round)")
    for f in figures:
        print(f"  {f.label}: {f.data_mb:.0f} MB of data")
        samples = {
            "switchover window": f.windows,
            "longest gap between acks": f.gaps,
            "switchover command": f.commands,
            **{f"failover ({mode})": v for mode, v in f.failovers.items()},
            "join": f.joins,
            "pg_basebackup by hand": f.basebackups,
        }
        for label, values in samples.items():
            print(f"    {label:<38} " + " ".join(f"{v:.3f}" for v in values))
        print(f"    {'failed writes per switchover':<38} {f.failed_writes}")
        if f.join_timeline:
            print("    last join, the agent's messages after its launch (first of each):")
            for entry in f.join_timeline:
                print(f"      {entry}")
        for note in f.notes:
            print(f"    note: {note}")
