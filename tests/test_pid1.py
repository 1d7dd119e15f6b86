"""PID 1 duties: the daemon as the first process of a PID namespace."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.daemon import Daemon, Instance, controldata_state, wait_for

Start = Callable[..., Daemon]
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def zombies_of(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat[stat.rfind(")") + 2] == "Z":
            found.append(child)
    return found


def test_orphans_are_reaped_and_sigterm_still_stops_cleanly(
    instance: Instance, daemons: Start
) -> None:
    daemon = daemons(instance, prefix=UNSHARE)
    daemon.wait_ready()
    # The daemon is unshare's only child, and PID 1 inside the namespace.
    inner = wait_for(lambda: children(daemon.proc.pid), 5, "the daemon under unshare")[0]
    nspid = Path(f"/proc/{inner}/status").read_text().split("NSpid:")[1].split("\n")[0]
    assert nspid.split()[-1] == "1"
    with psycopg.connect(instance.conninfo(), autocommit=True) as conn:
        for _ in range(3):
            # sh starts sleep in the background and exits: sleep is orphaned, re-parented
            # to PID 1 (our daemon), and becomes a zombie when it ends.
            conn.execute("COPY (SELECT 1) TO PROGRAM 'cat >/dev/null; sleep 0.2 &'")
    reaped = daemon.wait_log("reaped orphaned processes", timeout=15)
    assert reaped["pids"]
    wait_for(lambda: not zombies_of(inner), 10, "no zombie children of the daemon")
    # Reaping must not have stolen the postmaster's exit status: a clean stop still works.
    os.kill(inner, signal.SIGTERM)  # unshare does not forward signals to its child
    assert daemon.wait_exit(60) == 0, daemon.tail()
    assert daemon.find("PostgreSQL stopped")[0]["mode"] in ("smart", "fast")
    assert controldata_state(instance.pgdata) == "shut down"
