"""Orphan reaping for PID 1.

When the daemon is PID 1 (a container's first process, or `unshare --pid`), the kernel
re-parents every orphaned process in the namespace to it: a shell that an
``archive_command`` or ``COPY ... TO PROGRAM`` left behind, or a PostgreSQL child that
outlived its postmaster. Nobody waits for them, so they stay zombies and fill the
process table. We wait for them, but only for them: calling ``waitpid(-1)`` would also
collect our own children and steal the exit status asyncio's child watcher is waiting
for. So on each SIGCHLD we list our zombie children in /proc and wait only for those
that we did not start ourselves (see :mod:`spawn`'s registry).
"""

from __future__ import annotations

import asyncio
import os
import signal

from instance_manager import log
from instance_manager.process.spawn import REGISTRY

_logger = log.get()


def zombie_children(parent: int) -> list[int]:
    """PIDs of zombies whose parent is ``parent``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) >= 2 and fields[0] == b"Z" and int(fields[1]) == parent:
            found.append(int(entry))
    return found


def reap_orphans() -> list[int]:
    """Wait for every zombie child that is not one of ours. Returns their PIDs."""
    reaped = []
    for pid in zombie_children(os.getpid()):
        if pid in REGISTRY.pids:
            continue
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if waited:
            reaped.append(pid)
    return reaped


class Reaper:
    """Reaps adopted orphans on SIGCHLD while the daemon is PID 1."""

    def __init__(self, *, force: bool = False) -> None:
        self.active = force or os.getpid() == 1
        self.reaped = 0

    async def run(self) -> None:
        if not self.active:
            await asyncio.Event().wait()
            return
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.add_signal_handler(signal.SIGCHLD, wake.set)
        try:
            while True:
                async with REGISTRY.lock:
                    pids = reap_orphans()
                if pids:
                    self.reaped += len(pids)
                    log.event(_logger, "reaped orphaned processes", pids=pids)
                await wake.wait()
                wake.clear()
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)
