"""A small world for fuzzing the WAL socket and the thin client, and what may change in it.

``World`` lays out, under a short temporary root: a PGDATA whose pg_wal holds a few
segments (with ``.ready`` files) and links pointing out of it, an ``outside`` directory
that nothing may touch, the fake plugin's storage holding segments to restore, and the two
spools. ``serve`` runs the real WalServer (real Archiver, Restorer and PluginBackend) against
tests/fake_plugin.py over gRPC, so an archive or restore goes the whole way a production one
does. ``snapshot`` records every entry (type, mode, content digest or link target) so a test
can tell exactly which paths a run changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from instance_manager.settings import cluster_from
from instance_manager.state import WalState
from instance_manager.wal.archiver import Archiver
from instance_manager.wal.backend import PluginBackend
from instance_manager.wal.restorer import Restorer
from instance_manager.wal.server import WalServer
from tests.fake_plugin import FakePlugin

PLUGIN = "fake.example.io"
ARCHIVABLE = [f"0000000100000000000000{n:02X}" for n in (0x10, 0x11, 0x12)]
RESTORABLE = [f"0000000100000000000000{n:02X}" for n in (0x20, 0x21, 0x22)] + ["00000002.history"]
MISSING = "0000000100000000000000FF"
Entry = tuple[str, int, str]


def cluster_doc(max_parallel: int) -> dict[str, object]:
    return {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "fuzz"},
        "spec": {
            "plugins": [{"name": PLUGIN, "isWALArchiver": True}],
            "wal": {"maxParallel": max_parallel},
        },
    }


@dataclass
class World:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wf", dir="/tmp")))

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def pg_wal(self) -> Path:
        return self.pgdata / "pg_wal"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def storage(self) -> Path:
        return self.root / "store"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "wal" / "sock"

    @property
    def inflight(self) -> Path:
        return self.root / "inflight"

    @property
    def spools(self) -> list[Path]:
        return [self.root / "archive-spool", self.root / "restore-spool"]

    def build(self) -> World:
        os.chmod(self.root, 0o755)
        (self.pg_wal / "archive_status").mkdir(parents=True)
        (self.pgdata / "global").mkdir()
        (self.pgdata / "postgresql.conf").write_text("# fuzz\n")
        (self.pgdata / "global" / "pg_control").write_bytes(b"control")
        for name in ARCHIVABLE:
            (self.pg_wal / name).write_bytes(name.encode() * 8)
            (self.pg_wal / "archive_status" / f"{name}.ready").touch()
        self.outside.mkdir()
        (self.outside / "secret").write_text("not WAL\n")
        (self.outside / ARCHIVABLE[0]).write_bytes(b"a segment out of reach")
        (self.pg_wal / "linkout").symlink_to(self.outside / "secret")
        (self.pg_wal / "dangling").symlink_to(self.outside / "new-file")
        (self.pgdata / "outdir").symlink_to(self.outside)
        self.storage.mkdir()
        for name in RESTORABLE:
            (self.storage / name).write_bytes(b"stored " + name.encode())
        (self.root / "run").mkdir()
        return self

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def snapshot(self) -> dict[str, Entry]:
        """Every path under the root but the sockets: (kind, mode, digest or link target).

        An upload ahead may still be writing the plugin's storage while this walks it, so an
        entry that is gone by the time it is read (a temporary file renamed into place) is
        recorded as absent, which is what it is."""
        found: dict[str, Entry] = {}
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = os.path.join(top, name)
                with contextlib.suppress(FileNotFoundError):
                    entry = self._entry(path)
                    if entry is not None:
                        found[path] = entry
        return found

    @staticmethod
    def _entry(path: str) -> Entry | None:
        info = os.lstat(path)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            return ("link", mode, os.readlink(path))
        if stat.S_ISREG(info.st_mode):
            return ("file", mode, hashlib.sha256(Path(path).read_bytes()).hexdigest())
        if stat.S_ISDIR(info.st_mode):
            return ("dir", mode, "")
        return None

    def may_change(self, path: str) -> bool:
        """The spools, the in-flight locks and the plugin's storage are the daemon's and the
        plugin's to write; the socket directories are theirs to create."""
        mine = [*self.spools, self.inflight, self.storage, self.root / "run", self.root / "plugins"]
        return any(path == str(d) or path.startswith(f"{d}/") for d in mine)

    def unexpected_changes(
        self, before: dict[str, Entry], after: dict[str, Entry], allowed: set[str]
    ) -> list[str]:
        """Paths that changed, outside the spools and storage and not in ``allowed``."""
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        return sorted(p for p in changed if not self.may_change(p) and p not in allowed)

    def archived_intact(self, source: str, before: dict[str, Entry]) -> bool:
        """The plugin holds the bytes ``source`` (resolved) had before the run, or has now
        (a concurrent restore may have replaced it), as an ok reply promised."""
        real = os.path.realpath(source)
        stored = self.storage / os.path.basename(real)
        if not stored.is_file():
            return False
        digest = hashlib.sha256(stored.read_bytes()).hexdigest()
        now = hashlib.sha256(Path(real).read_bytes()).hexdigest()
        return digest in (now, before.get(real, ("", 0, ""))[2])

    def restored_intact(self, name: str, destination: str) -> bool:
        real = Path(os.path.realpath(destination))
        stored = self.storage / name
        return real.is_file() and real.read_bytes() == stored.read_bytes()


@contextlib.asynccontextmanager
async def serve(world: World, max_parallel: int = 3) -> AsyncIterator[asyncio.Task[None]]:
    """The WAL server of ``world`` and its plugin, running; yields the server's task."""
    cluster = cluster_from(cluster_doc(max_parallel))
    state = WalState()
    backend = PluginBackend(world.root / "plugins", lambda: cluster, world.pgdata, lambda: 10.0)
    archive_spool, restore_spool = world.spools
    archiver = Archiver(
        backend, archive_spool, lambda: max_parallel, state, inflight=world.inflight
    )
    restorer = Restorer(backend, restore_spool, lambda: max_parallel, lambda: 16 << 20, state)
    archiver.prepare()
    restorer.prepare()
    server = WalServer(world.socket, archiver, restorer, world.pgdata)
    async with FakePlugin(world.root / "plugins", world.storage, name=PLUGIN):
        task = asyncio.create_task(server.run())
        deadline = time.monotonic() + 10
        while not world.socket.exists():
            if task.done():
                await task
            assert time.monotonic() < deadline, "the WAL socket never appeared"
            await asyncio.sleep(0.005)
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await backend.close()


# -- strategies -------------------------------------------------------------------------------

COMPONENTS = [
    "..", ".", "", "pg_wal", "archive_status", "linkout", "dangling", "outdir", "secret",
    "RECOVERYXLOG", "RECOVERYHISTORY", "postgresql.conf", "global", "pg_control",
    *ARCHIVABLE, *RESTORABLE, MISSING, "new-file",
]  # fmt: skip


def paths(world: World) -> st.SearchStrategy[str]:
    """Absolute and relative paths, mostly near pg_wal, some out of it by .. or a link."""
    bases = st.sampled_from(
        [str(world.pg_wal), str(world.pgdata), str(world.outside), str(world.root), "/etc", ""]
    )
    parts = st.lists(
        st.sampled_from(COMPONENTS) | st.text(st.characters(exclude_characters="\0/"), max_size=8),
        max_size=4,
    )
    joined = st.builds(lambda b, p: "/".join([b, *p]) if b else "/".join(p), bases, parts)
    wanted = st.sampled_from(
        [str(world.pg_wal / n) for n in ARCHIVABLE] + [str(world.pg_wal / "RECOVERYXLOG")]
    )
    return st.one_of(wanted, joined, joined, st.just("x" * 5000))


def wal_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([*RESTORABLE, *ARCHIVABLE, MISSING, "..", ".", "", "a/b", "RECOVERYXLOG"]),
        st.text(st.characters(exclude_characters="\0\n"), max_size=30),
        st.from_regex(r"\A[0-9A-F]{24}\Z"),
    )
