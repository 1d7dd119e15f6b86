"""A base backup at the start, a recovery to the end of the archive after the run, orphans.

The recovery is a fresh instance (its own daemon, not in the cluster, in the root network
namespace) started from the base backup with ``recovery.signal``; the fake plugin is only
its WAL source (``spec.externalClusters``), so ``restore_command`` goes through the daemon
and the plugin's Restore, and recovery follows ``recovery_target_timeline = 'latest'`` to
the end of the archive, then promotes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from tests.chaos.cluster import ChaosTrio
from tests.daemon import PG_BIN, Daemon, Instance, base_spec, chown_tree, wait_for
from tests.test_wal import PLUGIN


def base_backup(trio: ChaosTrio, name: str) -> Path:
    inst = trio.members[name]
    target = trio.root / "basebackup"
    done = subprocess.run(
        [str(PG_BIN / "pg_basebackup"), "-D", str(target), "-h", trio.net.address(name),
         "-p", str(inst.pg_port), "-U", "postgres", "-X", "none", "-c", "fast"],
        capture_output=True, text=True, user="postgres", group="postgres", extra_groups=[],
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"pg_basebackup failed: {done.stderr}"
    return target


def recover(trio: ChaosTrio, backup: Path) -> tuple[Daemon, list[tuple[Any, ...]]]:
    """Start an instance from ``backup`` recovering from the archive; its chaos_rows."""
    restored = Instance(trio.root / "pitr")
    restored.root.mkdir()
    subprocess.run(["cp", "-a", str(backup), str(restored.pgdata)], check=True)
    (restored.pgdata / "recovery.signal").touch()
    restored.write_config(
        base_spec(
            externalClusters=[{"name": "origin", "plugin": {"name": PLUGIN}}],
            wal={"maxParallel": 4},
            startDelay=600,
        )
    )
    chown_tree(restored.root)
    daemon = Daemon(restored, "--plugin-socket-dir", str(trio.plugin.socket_dir))

    def promoted() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"recovery daemon exited:\n{daemon.tail()}")
        try:
            with psycopg.connect(restored.conninfo(), autocommit=True, connect_timeout=2) as c:
                return c.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        except psycopg.Error:
            return False

    try:
        wait_for(promoted, 600, "the recovery to reach the end of the archive and promote")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{daemon.tail(60)}") from None
    with psycopg.connect(restored.conninfo(), autocommit=True) as conn:
        rows = conn.execute("SELECT txid, port, tli, at FROM chaos_rows").fetchall()
    return daemon, rows


def orphans(root: Path, netns_pids: list[int]) -> list[str]:
    """Processes left from the run: in its namespaces, started under its root, or working there."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (
            int(entry.name) in netns_pids
            or str(root) in cmdline
            or cwd == str(root)
            or cwd.startswith(f"{root}/")
        ):
            found.append(f"{entry.name}: {cmdline.strip()[:120]} (cwd {cwd})")
    return found
