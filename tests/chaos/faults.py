"""The fault injector: three lanes, each drawing from its own RNG seeded from the run's seed.

* cluster lane, one fault at a time, each followed by a wait (with a deadline) for a healthy
  cluster: kill -9 of a daemon (restarted, it adopts its postmaster), kill -9 of a postmaster
  (its daemon restarts it in place), switchover, failover after kill -9 of the primary's
  daemon and postmaster (to the standby that received the most WAL), a network partition of
  the primary (healed after a few seconds) and a partition during which the cluster fails
  over (healed afterwards: the former primary rewinds);
* plugin lane: kill -9 of the plugin process and a restart, SIGSTOP past the plugin call
  deadline then SIGCONT, and a full repository (the plugin's tmpfs filled, then freed);
* malformed lane: one malformed request at a time to a random port of a random instance.

Each lane is reproducible from the seed; their interleaving depends on timing.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos import malformed
from tests.chaos.cluster import PLUGIN_TIMEOUT, ChaosTrio
from tests.cluster_kit import NAMES
from tests.daemon import postmaster_pid, wait_for

CLUSTER_FAULTS = {  # kind -> weight
    "daemon_kill": 3,
    "postmaster_kill": 3,
    "switchover": 2,
    "failover": 2,
    "partition": 1,
    "partition_failover": 1,
}
PLUGIN_FAULTS = {"plugin_kill": 2, "plugin_stop": 2, "repository_full": 2}
PORTS = ("status", "metrics", "local", "wal", "pg")
FILLER = ".chaos-filler"


@dataclass
class Injector:
    trio: ChaosTrio
    seed: int
    deadline: float  # time.monotonic() when the lanes stop starting faults
    malformed_target: int  # malformed requests to spread over the run
    counts: Counter[str] = field(default_factory=Counter)
    http_5xx: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    plugin_lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, detail: str = "") -> None:
        self.counts[kind] += 1
        if not kind.startswith("malformed"):
            line = f"{time.strftime('%H:%M:%S')} {kind} {detail}".rstrip()
            self.events.append(line)
            print(f"chaos: {line}", flush=True)

    def lanes(self) -> list[threading.Thread]:
        targets: list[tuple[str, Callable[[random.Random], None]]] = [
            ("cluster", self.cluster_lane),
            ("plugin", self.plugin_lane),
            ("malformed", self.malformed_lane),
        ]
        return [
            threading.Thread(target=self._guard, args=(fn, random.Random(f"{self.seed}/{n}")),
                             name=f"lane-{n}", daemon=True)
            for n, fn in targets
        ]  # fmt: skip

    def _guard(self, lane: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            lane(rng)
        except BaseException as exc:
            self.errors.append(exc)
            self.deadline = 0.0  # the other lanes stop too

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    # -- cluster lane --
    def cluster_lane(self, rng: random.Random) -> None:
        kinds, weights = zip(*CLUSTER_FAULTS.items(), strict=True)
        while self.running():
            primary = self.trio.wait_healthy()
            kind = rng.choices(kinds, weights)[0]
            getattr(self, kind)(rng, primary)
            self.trio.wait_healthy()
            time.sleep(rng.uniform(1, 3))  # pacing

    def daemon_kill(self, rng: random.Random, primary: str) -> None:
        name = rng.choice(NAMES)
        self.trio.daemons[name].kill()
        self.note("daemon_kill", name)
        self.trio.start(name)

    def postmaster_kill(self, rng: random.Random, primary: str) -> None:
        name = rng.choice(NAMES)
        pgdata = self.trio.members[name].pgdata
        old = postmaster_pid(pgdata)
        if not self.trio.kill_postmaster(name):
            return
        self.note("postmaster_kill", name)
        wait_for(lambda: postmaster_pid(pgdata) not in (None, old), 120, f"{name} restarted")

    def switchover(self, rng: random.Random, primary: str) -> None:
        target = rng.choice([n for n in NAMES if n != primary])
        self.note("switchover", f"{primary} -> {target}")
        self.operator("switchover", target)

    def most_advanced_standby(self, primary: str) -> str:
        lsns = {n: self.trio.receive_lsn(n) for n in NAMES if n != primary}
        return max(sorted(lsns), key=lambda n: lsns[n])

    def failover(self, rng: random.Random, primary: str) -> None:
        self.trio.kill(primary)
        target = self.most_advanced_standby(primary)
        self.note("failover", f"{primary} killed -> {target}")
        self.operator("failover", target)
        self.trio.start(primary)

    def partition(self, rng: random.Random, primary: str) -> None:
        self.trio.net.cut(primary)
        self.note("partition", primary)
        try:
            time.sleep(rng.uniform(3, 8))  # pacing: how long the cut lasts
        finally:
            self.trio.net.heal(primary)

    def partition_failover(self, rng: random.Random, primary: str) -> None:
        self.trio.net.cut(primary)
        try:
            time.sleep(rng.uniform(1, 3))  # pacing: the standbys notice the cut
            target = self.most_advanced_standby(primary)
            self.note("partition_failover", f"{primary} cut -> {target}")
            self.operator("failover", target)
        finally:
            self.trio.net.heal(primary)

    def operator(self, command: str, target: str) -> None:
        out = subprocess.run(
            self.trio.cli(command, "--to", target, "--timeout", "180"),
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        if out.returncode != 0:
            raise AssertionError(
                f"{command} --to {target} exited {out.returncode}:\n{out.stdout}{out.stderr}"
                f"\n{self.trio.tails()}"
            )

    # -- plugin lane --
    def plugin_lane(self, rng: random.Random) -> None:
        kinds, weights = zip(*PLUGIN_FAULTS.items(), strict=True)
        while self.running():
            kind = rng.choices(kinds, weights)[0]
            with self.plugin_lock:
                getattr(self, kind)(rng)
            time.sleep(rng.uniform(1, 4))  # pacing

    def plugin_kill(self, rng: random.Random) -> None:
        proc = self.trio.plugin.proc
        assert proc is not None and proc.poll() is None, "the plugin died by itself"
        proc.kill()
        proc.wait(10)
        self.note("plugin_kill")
        self.trio.restart_plugin()

    def plugin_stop(self, rng: random.Random) -> None:
        proc = self.trio.plugin.proc
        assert proc is not None and proc.poll() is None, "the plugin died by itself"
        os.kill(proc.pid, signal.SIGSTOP)
        self.note("plugin_stop")
        try:
            time.sleep(PLUGIN_TIMEOUT * rng.uniform(1.5, 3))  # past the call deadline
        finally:
            os.kill(proc.pid, signal.SIGCONT)

    def repository_full(self, rng: random.Random) -> None:
        filler = self.trio.plugin.storage / FILLER
        fill(filler)
        self.note("repository_full")
        try:
            time.sleep(rng.uniform(2, 5))  # pacing: archiving fails meanwhile
        finally:
            filler.unlink(missing_ok=True)

    # -- malformed lane --
    def malformed_lane(self, rng: random.Random) -> None:
        """Paced to spread ``malformed_target`` requests evenly until the deadline."""
        began, span = time.monotonic(), self.deadline - time.monotonic()
        done = 0
        while self.running():
            due = self.malformed_target * (time.monotonic() - began) / span
            if done >= due:
                time.sleep(min(0.5, (done + 1 - due) * span / self.malformed_target))
                continue
            name, port = rng.choice(NAMES), rng.choice(PORTS)
            reply = malformed.send_one(rng, self.trio, name, port)
            self.note(f"malformed_{port}")
            status = malformed.http_status(reply) if port in ("status", "metrics", "local") else 0
            if status >= 500 and status != 503:
                self.http_5xx.append(f"{name}:{port} {reply[:200]!r}")
            done += 1

    def restore_everything(self) -> None:
        """After the lanes: heal every link, resume and restart the plugin, free the store."""
        for name in list(self.trio.net.cut_now):
            self.trio.net.heal(name)
        with self.plugin_lock:
            (self.trio.plugin.storage / FILLER).unlink(missing_ok=True)
            proc = self.trio.plugin.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
            else:
                self.trio.restart_plugin()


def fill(path: os.PathLike[str] | str) -> None:
    """Take every free byte of the filesystem holding ``path``."""
    st = os.statvfs(os.path.dirname(os.fspath(path)))
    size = st.f_bavail * st.f_frsize
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, max(size, 1))
        os.lseek(fd, 0, os.SEEK_END)
        with contextlib.suppress(OSError):
            while True:  # what fallocate left, until ENOSPC
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
