"""The WAL part of the verdict: the archive's segments against the timelines and PostgreSQL's bytes.

The *required chain* is what a recovery from the first archived segment to the end needs:
for each timeline in the final timeline's history, its segments from where it began to the
one before the segment holding its switch point (recovery reads that segment from the next
timeline, whose copy holds the old timeline's WAL up to the switch point), then the final
timeline's segments up to the last one switched at the end of the run. A missing one is lost
WAL. Beyond the chain, gaps between archived segments of any timeline are reported.

``Verifier`` compares each archived file with the file PostgreSQL archived it from (the
source path in the fake plugin's journal), as soon as it can after the archive call: a
source that is gone (recycled) cannot be compared; one modified after the stored copy was
written (a pg_rewind or a clone replaced it) is not PostgreSQL's archived copy any more.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")


def parse(name: str, seg_size: int) -> tuple[int, int] | None:
    """(timeline, segment number) of a full segment's file name."""
    found = SEGMENT.match(name)
    if not found:
        return None
    per_id = 0x1_0000_0000 // seg_size
    tli, hi, lo = (int(g, 16) for g in found.groups())
    return tli, hi * per_id + lo


def name_of(tli: int, segno: int, seg_size: int) -> str:
    per_id = 0x1_0000_0000 // seg_size
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


def lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def history(storage: Path, tli: int) -> list[tuple[int, int]]:
    """(parent timeline, switch LSN) lines of ``tli``'s history file, oldest first."""
    if tli == 1:
        return []
    out = []
    for line in (storage / f"{tli:08X}.history").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            out.append((int(fields[0]), lsn(fields[1])))
    return out


def final_timeline(storage: Path) -> int:
    tlis = [int(m.group(1), 16) for p in storage.iterdir() if (m := HISTORY.match(p.name))]
    return max(tlis, default=1)


@dataclass
class ChainReport:
    timelines: list[int]
    required: list[str]
    missing: list[str]
    archived_segments: int
    gaps: dict[int, list[str]]  # timeline -> names missing between its archived ones


def check_chain(storage: Path, last: str, seg_size: int) -> ChainReport:
    stored = {p.name for p in storage.iterdir()}
    full = [t for n in stored if (t := parse(n, seg_size))]
    final = final_timeline(storage)
    lineage = history(storage, final)
    timelines = [t for t, _ in lineage] + [final]
    first_tli = timelines[0]
    begin = min(s for t, s in full if t == first_tli)
    required: list[str] = []
    for tli, switch in lineage:
        end = switch // seg_size  # the switch segment comes from the next timeline
        required += [name_of(tli, s, seg_size) for s in range(begin, end)]
        begin = end
    last_parsed = parse(last, seg_size)
    assert last_parsed and last_parsed[0] == final, f"last segment {last} not on timeline {final}"
    required += [name_of(final, s, seg_size) for s in range(begin, last_parsed[1] + 1)]
    gaps: dict[int, list[str]] = {}
    for tli in sorted({t for t, _ in full}):
        have = sorted(s for t, s in full if t == tli)
        holes = sorted(set(range(have[0], have[-1] + 1)) - set(have))
        if holes:
            gaps[tli] = [name_of(tli, s, seg_size) for s in holes]
    return ChainReport(
        timelines=sorted({t for t, _ in full} | set(timelines)),
        required=required,
        missing=[n for n in required if n not in stored],
        archived_segments=len(full),
        gaps=gaps,
    )


@dataclass
class Verifier:
    journal: Path
    storage: Path
    offset: int = 0
    pending: dict[str, Path] = field(default_factory=dict)  # stored name -> source
    identical: set[str] = field(default_factory=set)
    mismatched: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)  # the source was recycled before a check
    superseded: set[str] = field(default_factory=set)

    def _read_journal(self) -> None:
        if not self.journal.exists():
            return
        with self.journal.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            entry = json.loads(raw)
            if entry.get("kind") == "archive":
                source = Path(entry["source_file_name"])
                self.pending[source.name] = source

    def check(self) -> None:
        self._read_journal()
        for name, source in list(self.pending.items()):
            verdict = self._compare(self.storage / name, source)
            if verdict is None:
                continue  # not stored yet (in flight or failed): try again later
            del self.pending[name]
            if verdict == "identical":
                self.identical.add(name)
                self.gone.discard(name)
            elif verdict == "gone":
                self.gone.add(name)
            elif verdict == "superseded":
                self.superseded.add(name)
            else:
                self.mismatched.append(f"{name} (from {source})")

    @staticmethod
    def _compare(stored: Path, source: Path) -> str | None:
        try:
            kept = stored.stat()
        except FileNotFoundError:
            return None
        try:
            before = source.stat()
            if before.st_mtime_ns > kept.st_mtime_ns:
                return "superseded"
            produced = source.read_bytes()
            after = source.stat()
        except FileNotFoundError:
            return "gone"
        if (before.st_ino, before.st_mtime_ns) != (after.st_ino, after.st_mtime_ns):
            return "superseded"
        try:
            archived = stored.read_bytes()
        except FileNotFoundError:
            return None
        if os.stat(stored).st_mtime_ns != kept.st_mtime_ns:
            return None  # stored again meanwhile: compare on the next pass
        return "identical" if archived == produced else "mismatch"
