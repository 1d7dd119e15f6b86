"""What bench/wal.py measured, and its table: the figures, their references, the targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness import Row
from waldrain import Drain
from walkit import CallTime, Restored, Window

THIN_IMPORTS = "import _socket, posix, sys"  # what thin.py imports
SLOW_PLUGIN = 0.1  # seconds per Archive call: a realistic upload
RESTORE_PLUGIN = 0.05  # seconds per Restore call
CALL_ALLOWANCE_MS = 2.0  # a call may cost the bare interpreter plus this
AHEAD_ALLOWANCE_MS = 1.0  # ... and one answered from a look-ahead marker this
DRAIN_TARGET = 0.2  # our drain rate against /bin/true's


@dataclass(frozen=True)
class Calls:
    times: dict[str, CallTime]
    rss_kb: dict[str, int]
    rss_tool: str
    round_trip_ms: dict[str, float]


@dataclass
class Drains:
    ours: list[Drain] = field(default_factory=list)  # maxParallel 1
    true: list[Drain] = field(default_factory=list)  # archive_command = /bin/true
    pgbackrest: list[Drain] = field(default_factory=list)  # archive-push, no-op repository
    ours_mp8: list[Drain] = field(default_factory=list)


@dataclass
class Rates:
    ours: list[Window] = field(default_factory=list)  # latency 0, maxParallel 1
    ref: list[Window] = field(default_factory=list)  # archive_command = /bin/true
    ours_mp8: list[Window] = field(default_factory=list)  # latency 0, maxParallel 8
    slow: dict[int, Window] = field(default_factory=dict)  # latency 0.1: maxParallel -> window


@dataclass(frozen=True)
class Restore:
    needed: int  # archived segments from the backup's start on
    seconds: dict[int, float]  # maxParallel -> daemon launch to promotion
    restored: dict[int, Restored]  # maxParallel -> what PostgreSQL restored, when

    def rate(self, max_parallel: int) -> float:
        return self.needed / self.seconds[max_parallel]


def rate(windows: Sequence[Window]) -> float:
    return statistics.median(w.rate for w in windows)


def drain_rate(drains: Sequence[Drain]) -> float:
    return statistics.median(d.rate for d in drains)


def call_rows(c: Calls) -> list[Row]:
    thin, ahead = c.times["thin"].median_ms, c.times["ahead"].median_ms
    bare, bare_name = c.times["python"].median_ms, "python -I -S -c pass"
    rows = [
        Row("manager wal-archive, per call", thin, bare, bare_name, "ms",
            f"<= ref + {CALL_ALLOWANCE_MS:g} ms", thin <= bare + CALL_ALLOWANCE_MS),
        Row("archive_command, archived ahead", ahead, bare, bare_name, "ms",
            f"<= ref + {AHEAD_ALLOWANCE_MS:g} ms", ahead <= bare + AHEAD_ALLOWANCE_MS),
        Row("archive_command (sh + client), per call", c.times["shell"].median_ms, thin,
            "the client alone", "ms", "-", None),
        Row("manager wal-archive vs /bin/true", thin, c.times["true"].median_ms, "/bin/true",
            "ms", "-", None),
    ]  # fmt: skip
    if "pgbackrest" in c.times:
        ref = c.times["pgbackrest"].median_ms
        rows.append(Row("manager vs pgBackRest start", thin, ref, "pgbackrest version", "ms",
                        "-", None))  # fmt: skip
    rss, bare_rss = c.rss_kb["thin"] / 1024, c.rss_kb["python"] / 1024
    rows.append(Row("manager peak RSS", rss, bare_rss, bare_name, "MiB", "-", None))
    return rows


def drain_rows(d: Drains) -> list[Row]:
    ours, true, mp8 = drain_rate(d.ours), drain_rate(d.true), drain_rate(d.ours_mp8)
    seg = "seg/s"
    rows = [
        Row("backlog drain, maxParallel 1", ours, true, "/bin/true", seg,
            f">= {DRAIN_TARGET:.2f}x ref", ours >= DRAIN_TARGET * true),
        Row("backlog drain, maxParallel 8", mp8, true, "/bin/true", seg, "-", None),
    ]  # fmt: skip
    if d.pgbackrest:
        pgbr = drain_rate(d.pgbackrest)
        rows.append(Row("backlog drain, pgbackrest archive-push", pgbr, true, "/bin/true", seg,
                        "-", None))  # fmt: skip
        rows.append(Row("backlog drain, ours vs pgbackrest", ours, pgbr, "archive-push", seg,
                        "-", None))  # fmt: skip
    return rows


def rate_rows(r: Rates, rs: Restore) -> list[Row]:
    ours, ref, mp8 = rate(r.ours), rate(r.ref), rate(r.ours_mp8)
    slow1, slow8 = r.slow[1].rate, r.slow[8].rate
    fast1, fast8 = rs.rate(1), rs.rate(8)
    seg = "seg/s"
    return [
        Row("archive rate, latency 0", ours, ref, "/bin/true", seg, ">= 0.55x ref",
            ours >= 0.55 * ref),
        Row("archive rate, latency 0, maxParallel 8", mp8, ref, "/bin/true", seg, "-", None),
        Row(f"archive, latency {SLOW_PLUGIN} s, maxPar 8 vs 1", slow8, slow1, "maxParallel 1",
            seg, ">= 3.00x ref", slow8 >= 3 * slow1),
        Row(f"restore, latency {RESTORE_PLUGIN} s, maxPar 8 vs 1", fast8, fast1, "maxParallel 1",
            seg, "> 1.00x ref (prefetch faster)", fast8 > fast1),
    ]  # fmt: skip


CALL_LABELS = {
    "thin": "manager wal-archive (small file)",
    "ahead": "archive_command (sh), marker present",
    "shell": "archive_command (sh), no marker",
    "python": "python -I -S -c pass",
    "imports": f"python -I -S -c '{THIN_IMPORTS}'",
    "true": "/bin/true",
    "pgbackrest": "pgbackrest version",
}


def print_calls(c: Calls) -> None:
    for key, t in c.times.items():
        print(
            f"  {CALL_LABELS[key]:<37} median {t.median_ms:6.2f}  mean {t.mean_ms:6.2f} "
            f"± {t.stddev_ms:.2f}  min {t.min_ms:6.2f} ms  ({t.runs} runs, {t.tool})"
        )
    for what, value in c.round_trip_ms.items():
        print(f"  daemon round trip, archive of a {what}, no new process: {value:.2f} ms")
    print(f"  peak RSS (KiB, {c.rss_tool}): {c.rss_kb}")


def print_drains(d: Drains, c: Calls) -> None:
    """Per segment, what each command adds to /bin/true's drain."""
    true_ms = statistics.median(x.per_segment_ms for x in d.true)
    bare = c.times["python"].median_ms - c.times["true"].median_ms
    print(f"  drain per segment with /bin/true: {true_ms:.2f} ms (PostgreSQL's archiver + sh)")
    sides = (("ours, maxParallel 1", d.ours), ("ours, maxParallel 8", d.ours_mp8))
    for name, drains in (*sides, ("pgbackrest archive-push", d.pgbackrest)):
        if drains:
            ms = statistics.median(x.per_segment_ms for x in drains)
            print(
                f"  drain per segment, {name}: {ms:.2f} ms, {ms - true_ms:+.2f} ms over /bin/true"
            )
    print(f"  (python -I -S -c pass costs {bare:+.2f} ms over /bin/true per call, same run)")


def print_details(c: Calls, d: Drains, r: Rates, rs: Restore) -> None:
    print("\nDetails")
    print_calls(c)
    print_drains(d, c)
    for name, windows in (("ours", r.ours), ("/bin/true", r.ref), ("ours mp8", r.ours_mp8)):
        production = statistics.median(w.production_rate for w in windows)
        print(f"  WAL production while archiving with {name}: {production:.0f} seg/s (median)")
    print(f"  restore: {rs.needed} archived segments needed after the base backup")
    for max_parallel, seconds in rs.seconds.items():
        got = rs.restored[max_parallel]
        print(
            f"  restore maxParallel {max_parallel}: launch-to-promotion {seconds:.2f} s; "
            f"{got.files} files restored from {got.first_s:.2f} s to {got.last_s:.2f} s after "
            f"launch = {got.span_rate:.1f} files/s in between"
        )
