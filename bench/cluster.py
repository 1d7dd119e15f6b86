"""Cluster figures: switchover, failover and join, ours against Patroni 4 in the same run.

    .venv/bin/python bench/cluster.py [--quick] [--no-install] [--skip-ours]

Run as root from the repository root. Patroni's side: etcd (Debian's etcd-server) and three
Patroni 4 nodes (PyPI, in /opt/bench-patroni/venv), installed when missing unless
--no-install is given. Our side: three daemons sharing one Cluster document, with
``instance-manager switchover|failover --to NAME`` playing the operator. Both sides run
PostgreSQL 15 on 127.0.0.1, ports below 32768, one after the other on the same machine.

Figures, each side measured the same way by the same client (bench/clusterkit.py):
- switchover window: a client writes one row per transaction through a connection that
  reconnects to whichever instance takes writes; window = from the start of its first
  failed write to the acknowledgement of the first successful one after it;
- failover time: from the decision (kill -9 of the primary's agent and postmaster, then
  ours: ``instance-manager failover --to``; Patroni: nothing, its own detection, or
  ``patronictl failover --candidate``) to the first acknowledged write on a new primary;
- join time: a wiped standby's agent started -> the standby streaming from the primary,
  against ``pg_basebackup -X stream -c fast`` by hand of the same primary just before.
Exit status: 0 every target met, 1 a target missed (or our side not measurable), 2 the
benchmark itself failed. Everything started is stopped and every directory removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psycopg
from clusterkit import (
    Writer,
    database_mb,
    dirty_pages,
    in_recovery,
    lost_rows,
    outage,
    pg_basebackup_seconds,
    prepare_data,
    timed,
    wait_member_streaming,
    wait_streaming,
)
from clusterreport import AUTO, CTL, OUR_FAILOVER, Figures, Line, lines, print_details, print_lines
from harness import BenchError, Session, on_sigterm, preflight
from ourkit import OurCluster, cli_available
from patronikit import PatroniCluster, ensure_installed, patroni_version, start_etcd

SETTLE_TIMEOUT = 300.0
WRITES_AFTER = 20  # acknowledged writes that close a measurement


class Side(Protocol):
    label: str

    @property
    def ports(self) -> dict[str, int]: ...
    def start(self, timeout: float) -> None: ...
    def wait_settled(self, timeout: float) -> None: ...
    def check_alive(self) -> None: ...
    def kill(self, name: str) -> None: ...
    def stop_node(self, name: str) -> str: ...
    def start_node(self, name: str) -> None: ...
    def wipe(self, name: str) -> None: ...
    def switchover(self, leader: str, to: str) -> None: ...
    def failover(self, to: str) -> None: ...
    def log_tail(self, name: str, lines: int = 20) -> str: ...
    def timeline(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class Config:
    switchovers: int
    failovers: int  # per failover mode
    joins: int
    scale: int  # pgbench scale of the data every join copies
    install: bool
    skip_ours: bool


# -- measurements -------------------------------------------------------------------------


def next_member(ports: dict[str, int], after: str) -> str:
    names = sorted(ports)
    return names[(names.index(after) + 1) % len(names)]


def settle(side: Side) -> str:
    """Wait for a healthy cluster; the primary's name."""
    primary = wait_streaming(side.ports, SETTLE_TIMEOUT, side.check_alive)
    side.wait_settled(SETTLE_TIMEOUT)
    return primary


def measure_switchover(side: Side, writer: Writer, out: Figures) -> None:
    leader = settle(side)
    to = next_member(side.ports, leader)
    time.sleep(1.0)  # the client writes steadily before the command
    mark = time.perf_counter()
    out.commands.append(timed(lambda: side.switchover(leader, to)))
    writer.wait_writes_after(time.perf_counter(), WRITES_AFTER, 120)
    if in_recovery(side.ports[to]) is not False:
        raise BenchError(f"{side.label}: {to} is not the primary after the switchover")
    seen = outage(writer.attempts, mark, time.perf_counter())
    out.windows.append(seen.window)
    out.gaps.append(seen.longest_gap)
    out.failed_writes.append(seen.failed)
    print(
        f"  {side.label} switchover {leader} -> {to}: window {seen.window * 1000:.0f} ms, "
        f"{seen.failed} failed writes, command {out.commands[-1]:.2f} s",
        flush=True,
    )


def measure_failover(side: Side, writer: Writer, mode: str, out: Figures) -> None:
    """kill -9 of the primary's agent and postmaster, then ``mode``'s decision."""
    leader = settle(side)
    to = next_member(side.ports, leader)
    time.sleep(1.0)
    decided = time.perf_counter()
    side.kill(leader)
    if mode != AUTO:
        side.failover(to)
    writer.wait_writes_after(decided, WRITES_AFTER, 180)
    seen = outage(writer.attempts, decided, time.perf_counter())
    new = [n for n, p in side.ports.items() if in_recovery(p) is False]
    if len(new) > 1:
        out.notes.append(f"after the failover from {leader}, {', '.join(new)} were all primaries")
    lost = lost_rows(side.ports[new[0]], writer.acked) if new else 0
    out.failovers.setdefault(mode, []).append(seen.first_ok)
    out.failover_lost[mode] = out.failover_lost.get(mode, 0) + lost
    print(
        f"  {side.label} failover ({mode}) from {leader} to {','.join(new)}: "
        f"{seen.first_ok * 1000:.0f} ms to the first write, {lost} acknowledged rows lost",
        flush=True,
    )
    rejoin(side, leader, out)


def rejoin(side: Side, name: str, out: Figures) -> None:
    """The killed member back as a standby: restarted, re-cloned if that does not work."""
    side.start_node(name)
    try:
        wait_streaming(side.ports, 120, side.check_alive)
        return
    except BenchError:
        out.notes.append(f"{name} did not rejoin within 120 s after its restart: re-cloned")
    side.kill(name)
    side.wipe(name)
    side.start_node(name)
    settle(side)


def measure_join(side: Side, out: Figures, scratch: Path, reference_first: bool) -> None:
    """A standby wiped and started again, and pg_basebackup by hand, in either order."""
    primary = settle(side)
    standby = next_member(side.ports, primary)
    port = side.ports[primary]
    if reference_first:
        dirty_pages(port)
        out.basebackups.append(pg_basebackup_seconds(port, scratch))
    if note := side.stop_node(standby):
        out.notes.append(note)
    side.wipe(standby)
    dirty_pages(port)
    launched = time.perf_counter()
    side.start_node(standby)
    out.joins.append(wait_member_streaming(side.ports[standby], 900, 0.01) - launched)
    out.join_timeline = side.timeline(standby)
    if not reference_first:
        settle(side)
        dirty_pages(port)
        out.basebackups.append(pg_basebackup_seconds(port, scratch))
    print(
        f"  {side.label} join of {standby}: {out.joins[-1]:.2f} s, "
        f"pg_basebackup by hand {out.basebackups[-1]:.2f} s",
        flush=True,
    )


def measure_side(side: Side, cfg: Config, modes: Sequence[str], scratch: Path) -> Figures:
    """Every figure of one side; the first failure ends its rounds and is kept in ``failure``."""
    out = Figures(side.label)
    try:
        measure_rounds(side, cfg, modes, scratch, out)
    except (BenchError, subprocess.SubprocessError, psycopg.Error) as exc:
        out.failure = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        tails = "\n".join(f"--- {n}\n{side.log_tail(n)}" for n in sorted(side.ports))
        print(f"{side.label} failed: {exc}\n{tails}", file=sys.stderr, flush=True)
    return out


def measure_rounds(
    side: Side, cfg: Config, modes: Sequence[str], scratch: Path, out: Figures
) -> None:
    started = time.perf_counter()
    side.start(SETTLE_TIMEOUT)
    primary = settle(side)
    print(f"  {side.label}: 3 members streaming after {time.perf_counter() - started:.1f} s")
    prepare_data(side.ports[primary], cfg.scale)
    out.data_mb = database_mb(side.ports[primary])
    writer = Writer([side.ports[n] for n in sorted(side.ports)])
    writer.start(1)
    try:
        for _ in range(cfg.switchovers):
            measure_switchover(side, writer, out)
        out.switch_lost = lost_rows(side.ports[settle(side)], writer.acked)
        for mode in modes:
            for _ in range(cfg.failovers):
                measure_failover(side, writer, mode, out)
    finally:
        writer.stop()
    for i in range(cfg.joins):
        measure_join(side, out, scratch, reference_first=i % 2 == 0)


def run_patroni(cfg: Config) -> Figures:
    session = Session()
    try:
        root = session.make_root("pb")
        etcd_port = start_etcd(session, root)
        side = PatroniCluster(session, root, etcd_port)
        print(f"Patroni ({patroni_version()}), etcd on {etcd_port}, dir {root}", flush=True)
        return measure_side(side, cfg, (AUTO, CTL), root / "bb")
    finally:
        session.close()


def run_ours(cfg: Config) -> Figures:
    session = Session()
    try:
        root = session.make_root("ob")
        side = OurCluster(session, root)
        print(f"Ours: 3 daemons, document {side.document}", flush=True)
        return measure_side(side, cfg, (OUR_FAILOVER,), root / "bb")
    finally:
        session.close()


# -- main ---------------------------------------------------------------------------------


def print_load(when: str) -> None:
    print(f"1-minute load at {when}: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)


def make_config(args: argparse.Namespace) -> Config:
    quick = bool(args.quick)
    return Config(
        switchovers=1 if quick else 3,
        failovers=1 if quick else 2,
        joins=1 if quick else 3,
        scale=5 if quick else 20,
        install=not args.no_install,
        skip_ours=bool(args.skip_ours),
    )


def measure_all(cfg: Config) -> tuple[Figures | None, str, Figures]:
    ensure_installed(cfg.install)
    print("Patroni half ...", flush=True)
    patroni = run_patroni(cfg)
    why = "--skip-ours given" if cfg.skip_ours else cli_available()
    if why:
        return None, why, patroni
    print("Our half ...", flush=True)
    return run_ours(cfg), "", patroni


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of each, less data")
    parser.add_argument("--no-install", action="store_true", help="never apt-get or pip")
    parser.add_argument("--skip-ours", action="store_true", help="measure Patroni only")
    cfg = make_config(parser.parse_args(argv))
    signal.signal(signal.SIGTERM, on_sigterm)
    print_load("start")
    try:
        preflight()
        ours, why, patroni = measure_all(cfg)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        print_load("end")
        return 2
    print_details([f for f in (patroni, ours) if f is not None])
    print("\nResults")
    rows = lines(ours, patroni)
    print_lines(rows)
    print_load("end")
    return verdict(ours, why, patroni, rows)


def verdict(ours: Figures | None, why: str, patroni: Figures, rows: Sequence[Line]) -> int:
    """2: Patroni's half failed (no reference); 1: ours missing, failed or a target missed."""
    if why:
        print(f"ours: not measurable yet ({why})")
    for side in (patroni, ours):
        if side is not None and side.failure:
            print(f"{side.label}: its rounds stopped early: {side.failure}")
    if patroni.failure:
        return 2
    if ours is None or ours.failure:
        return 1
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
