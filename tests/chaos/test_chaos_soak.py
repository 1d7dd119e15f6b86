"""Chaos and soak: thousands of faults on a three-instance cluster, then a computed verdict.

Settings (environment): CHAOS_FAULTS (at least this many faults, default 1000),
CHAOS_SECONDS (how long faults are injected, default 300), CHAOS_SEED (default random,
printed), CHAOS_STORE_MB (the plugin's tmpfs, default 512), CHAOS_WARMUP (seconds after a
daemon starts before its RSS baseline, default 30). See tests/chaos/faults.py for the
faults and tests/chaos/verdict.py and walcheck.py for what the verdict checks.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import recovery, verdict
from tests.chaos.cluster import ChaosTrio, umount
from tests.chaos.conftest import WAL_SEGMENT_MB
from tests.chaos.faults import Injector
from tests.chaos.load import CREATE, PinnedWriter, RssSampler, WalSwitcher
from tests.chaos.malformed import written_outside
from tests.chaos.netbridge import Bridge
from tests.chaos.walcheck import SEGMENT, ChainReport, Verifier, check_chain
from tests.cluster_kit import NAMES
from tests.daemon import Daemon, chown_tree, kill_postgres, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
SEG_SIZE = WAL_SEGMENT_MB * 1024 * 1024


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


@dataclass
class Run:
    seed: int
    faults: int
    seconds: int
    store_mb: int
    warmup: int
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    pitr: Daemon | None = None
    out: dict[str, Any] = field(default_factory=dict)

    def spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)


@pytest.fixture
def net() -> Iterator[Bridge]:
    bridge = Bridge.create(list(NAMES))
    try:
        yield bridge
    finally:
        bridge.delete()


def test_chaos_soak(tmp_root: Path, chaos_template: Path, net: Bridge) -> None:
    run = Run(
        seed=env_int("CHAOS_SEED", random.SystemRandom().randrange(2**32)),
        faults=env_int("CHAOS_FAULTS", 1000),
        seconds=env_int("CHAOS_SECONDS", 300),
        store_mb=env_int("CHAOS_STORE_MB", 512),
        warmup=env_int("CHAOS_WARMUP", 30),
    )
    print(f"\nchaos: seed {run.seed} (CHAOS_SEED={run.seed} reproduces the fault order)")
    began = time.monotonic()
    trio: ChaosTrio | None = None
    try:
        trio = ChaosTrio(tmp_root, chaos_template, net, run.store_mb)
        soak(trio, run)
    finally:
        run.stop.set()
        if run.pitr is not None:
            run.pitr.kill()
            kill_postgres(run.pitr.inst.pgdata)
        if trio is not None:
            trio.close()
        umount(tmp_root / "store")
        run.out["orphans"] = recovery.orphans(tmp_root, net.pids())
    run.out["elapsed"] = time.monotonic() - began
    judge(run)


def soak(trio: ChaosTrio, run: Run) -> None:
    (trio.root / "evil").mkdir()
    chown_tree(trio.root / "evil")
    trio.start_all()
    primary = trio.wait_healthy(300)
    trio.sql(primary, CREATE)
    backup = recovery.base_backup(trio, primary)
    verifier = Verifier(trio.plugin.journal, trio.plugin.storage)
    writers = [PinnedWriter(trio, name, run.stop, 0.01) for name in NAMES]
    switcher = WalSwitcher(trio, run.stop, 1.0)
    sampler = RssSampler(trio, run.stop, run.warmup)
    for writer in writers:
        writer.thread.start()
    run.spawn(switcher.run, "switcher")
    run.spawn(sampler.run, "rss")
    run.spawn(lambda: periodic(verifier, run.stop), "verifier")
    injector = Injector(trio, run.seed, time.monotonic() + run.seconds, run.faults)
    lanes = injector.lanes()
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join(run.seconds + 900)
    run.out["injector"] = injector
    if injector.errors:
        raise injector.errors[0]
    injector.restore_everything()
    primary = trio.wait_healthy()
    sampler.sample()
    run.stop.set()
    for writer in writers:
        writer.thread.join(30)
    for thread in run.threads:
        thread.join(30)
    last = final_switch(trio, primary)
    verifier.check()
    run.out.update(
        writers=writers,
        switches=len(switcher.switched),
        verifier=verifier,
        chain=check_chain(trio.plugin.storage, last, SEG_SIZE),
        rss=sampler.growth(),
        port_names={inst.pg_port: name for name, inst in trio.members.items()},
        written_outside=written_outside(trio.root),
    )
    run.pitr, rows = recovery.recover(trio, backup)
    run.out["rows"] = rows


def periodic(verifier: Verifier, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        verifier.check()


def final_switch(trio: ChaosTrio, primary: str) -> str:
    """Close the current segment on the primary and wait until it is archived."""
    last = str(trio.sql(primary, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    query = "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
    wait_for(lambda: str(trio.sql(primary, query)[0][0]) >= last, 120, f"{last} archived")
    return last


def judge(run: Run) -> None:
    out = run.out
    injector: Injector = out["injector"]
    chain: ChainReport = out["chain"]
    verifier: Verifier = out["verifier"]
    writers: list[PinnedWriter] = out["writers"]
    acks = [a for w in writers for a in w.acks]
    rows = out["rows"]
    recovered = {int(r[0]) for r in rows}
    lost = sorted({a.txid for a in acks} - recovered)
    by_client, by_server = verdict.epochs(acks, rows, out["port_names"])
    overlap = verdict.overlaps(by_client) + verdict.overlaps(by_server)
    gap = verdict.smallest_gap(by_server)
    total = sum(injector.counts.values())
    journal_names = set(verifier.identical) | verifier.gone | verifier.superseded
    produced = set(chain.required) | {n for n in journal_names if SEGMENT.match(n)}
    table: list[tuple[str, object]] = [("seed", run.seed)]
    table += [("run time (s)", f"{out['elapsed']:.0f}")]
    table += [(f"faults: {k}", v) for k, v in sorted(injector.counts.items())]
    table += [
        ("faults: total", total),
        ("WAL switches (pg_switch_wal)", out["switches"]),
        ("timelines", " ".join(str(t) for t in chain.timelines)),
        ("segments produced", len(produced)),
        ("segments archived (full, in store)", chain.archived_segments),
        ("segments required (first..last, lineage)", len(chain.required)),
        ("segments missing from the chain", len(chain.missing)),
        ("gaps off the chain (abandoned branches)", sum(len(v) for v in chain.gaps.values())),
        ("files verified byte-identical", len(verifier.identical)),
        ("files mismatched", len(verifier.mismatched)),
        ("files recycled before comparison", len(verifier.gone)),
        ("files replaced by rewind/clone first", len(verifier.superseded)),
        ("archive calls never stored", len(verifier.pending)),
        ("rows acknowledged", len(acks)),
        ("rows recovered (PITR to the end)", len(rows)),
        ("rows lost", len(lost)),
        ("commits with unknown outcome", sum(w.unknown for w in writers)),
        ("primary epochs (instance, timeline)", len(by_server)),
        ("overlapping writable epochs", len(overlap)),
        ("smallest gap between epochs (s)", "-" if gap is None else f"{gap:.3f}"),
        ("HTTP 5xx (not 503) to malformed requests", len(injector.http_5xx)),
        ("files written outside PGDATA", len(out["written_outside"])),
        ("orphaned processes", len(out["orphans"])),
    ]
    table += [
        (f"RSS {n} pid {p} (KiB)", f"{b} -> {e} ({g:+.1f} %) over {t:.0f} s")
        for n, p, b, e, g, t in out["rss"]
    ]
    print("\n" + verdict.table("chaos verdict", table), flush=True)
    print("\n".join(["chaos: heavy fault log:", *injector.events[-80:]]))
    with contextlib.suppress(Exception):
        print("chaos: gaps off the chain:", {t: v[:10] for t, v in chain.gaps.items()})
    assert total >= run.faults, f"only {total} faults injected"
    assert not chain.missing, f"WAL lost from the archive: {chain.missing[:20]}"
    assert not verifier.mismatched, f"archived WAL differs: {verifier.mismatched[:20]}"
    assert not lost, f"acknowledged rows missing after recovery: {lost[:20]}"
    assert not overlap, "two writable primaries at once:\n" + "\n".join(overlap[:10])
    assert not out["orphans"], "orphaned processes:\n" + "\n".join(out["orphans"])
    assert not out["written_outside"], f"written outside PGDATA: {out['written_outside']}"
    grown = [r for r in out["rss"] if r[4] >= 10.0]
    assert not grown, f"daemon RSS grew 10 % or more: {grown}"
