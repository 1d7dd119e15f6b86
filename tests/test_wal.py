"""WAL archiving and restore through the daemon and a fake CNPG-I plugin, on real PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from instance_manager.postgres.config import wal_socket_in
from tests.daemon import (
    PG_BIN,
    Daemon,
    Instance,
    base_spec,
    chown_tree,
    postmaster_pid,
    wait_for,
)

Start = Callable[..., Daemon]
PLUGIN = "fake.example.io"
THIN = Path(__file__).resolve().parent.parent / "instance_manager" / "wal" / "thin.py"


class PluginProcess:
    """`python -m tests.fake_plugin` for a daemon running in another process."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.socket_dir = root / "plugins"
        self.storage = root / "store"
        self.journal = root / "journal.jsonl"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> PluginProcess:
        argv = [
            sys.executable, "-m", "tests.fake_plugin", "--socket-dir", str(self.socket_dir),
            "--storage", str(self.storage), "--name", PLUGIN, "--journal", str(self.journal),
            *(extra or self.extra),
        ]  # fmt: skip
        cwd = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL)
        wait_for(lambda: (self.socket_dir / PLUGIN).exists(), 20, "the plugin socket")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self.proc = None

    def calls(self, kind: str) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        lines = [json.loads(line) for line in self.journal.read_text().splitlines() if line]
        return [line for line in lines if line["kind"] == kind]

    def archived(self) -> list[str]:
        return [Path(c["source_file_name"]).name for c in self.calls("archive")]


@pytest.fixture
def plugin(instance: Instance) -> Iterator[PluginProcess]:
    proc = PluginProcess(instance.root).start()
    yield proc
    proc.stop()


def plugin_spec(max_parallel: int = 1, **overrides: Any) -> dict[str, Any]:
    return base_spec(
        plugins=[{"name": PLUGIN, "isWALArchiver": True}],
        wal={"maxParallel": max_parallel},
        **overrides,
    )


def sql(inst: Instance, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(statement.encode())
        return cur.fetchall() if cur.description else []


def switch_segments(inst: Instance, count: int) -> list[str]:
    """Write a little and switch WAL ``count`` times; returns the closed segments."""
    closed = []
    for i in range(count):
        sql(inst, f"CREATE TABLE IF NOT EXISTS w (i int); INSERT INTO w VALUES ({i})")
        closed.append(str(sql(inst, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))
    return closed


def last_archived(inst: Instance) -> str:
    return str(sql(inst, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0])


def ready_files(inst: Instance) -> list[str]:
    status = inst.pgdata / "pg_wal" / "archive_status"
    return sorted(p.name for p in status.iterdir() if p.name.endswith(".ready"))


def wait_archived(inst: Instance, segment: str, timeout: float = 60) -> None:
    wait_for(lambda: last_archived(inst) >= segment, timeout, f"{segment} to be archived")


def test_switched_segments_reach_the_plugin_in_order_with_identical_bytes(
    instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    instance.write_config(plugin_spec())
    daemon = daemons(instance)
    daemon.wait_ready()
    closed = switch_segments(instance, 5)
    wait_archived(instance, closed[-1])
    archived = plugin.archived()
    assert archived == sorted(archived)
    assert set(closed) <= set(archived)
    for name in closed:
        stored = (plugin.storage / name).read_bytes()
        assert stored == (instance.pgdata / "pg_wal" / name).read_bytes()
    first = plugin.calls("archive")[0]
    assert Path(first["source_file_name"]).is_absolute()
    assert first["parameters"] == {}
    assert first["cluster"]["kind"] == "Cluster"
    assert first["cluster"]["apiVersion"] == "postgresql.cnpg.io/v1"
    assert first["check_empty_wal_archive"] is not None  # always sent, with presence
    assert not plugin.calls("status") and not plugin.calls("set_first_required")
    assert daemon.stop() == 0


def test_plugin_down_keeps_ready_files_and_catches_up(
    instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    instance.write_config(plugin_spec())
    daemon = daemons(instance)
    daemon.wait_ready()
    wait_archived(instance, switch_segments(instance, 1)[-1])
    plugin.stop()
    closed = switch_segments(instance, 3)
    wait_for(
        lambda: sql(instance, "SELECT failed_count FROM pg_stat_archiver")[0][0] > 0,
        30,
        "archive_command to fail",
    )
    assert set(closed) <= {name.removesuffix(".ready") for name in ready_files(instance)}
    assert not set(closed) & set(plugin.archived())
    plugin.start()
    wait_archived(instance, closed[-1], 90)
    assert set(closed) <= set(plugin.archived())
    assert daemon.stop() == 0


def test_daemon_killed_mid_archive_loses_nothing(instance: Instance, daemons: Start) -> None:
    plugin = PluginProcess(instance.root, "--latency", "0.5").start()
    try:
        instance.write_config(plugin_spec())
        first = daemons(instance)
        first.wait_ready()
        closed = switch_segments(instance, 4)
        wait_for(lambda: plugin.archived(), 30, "a first archived segment")
        first.kill()  # mid-stream: PostgreSQL keeps running, archive_command now fails
        second = daemons(instance)
        second.wait_ready()
        second.wait_log("adopting the running postmaster")
        wait_archived(instance, closed[-1], 90)
        assert set(closed) <= set(plugin.archived())
        for name in closed:
            assert (plugin.storage / name).read_bytes() == (
                instance.pgdata / "pg_wal" / name
            ).read_bytes()
        assert second.stop() == 0
    finally:
        plugin.stop()


def test_plugin_name_mismatch_is_a_clear_error(instance: Instance, daemons: Start) -> None:
    plugin = PluginProcess(instance.root, "--metadata-name", "someone.else.io").start()
    try:
        instance.write_config(plugin_spec())
        daemon = daemons(instance)
        daemon.wait_ready()
        switch_segments(instance, 1)
        failure = daemon.wait_log("WAL request failed")
        assert "must equal the plugin's metadata name" in failure["error"]
        assert not plugin.archived()
        assert daemon.stop() == 0
    finally:
        plugin.stop()


def test_missing_wal_archiver_socket_fails_archiving(instance: Instance, daemons: Start) -> None:
    instance.write_config(plugin_spec())
    daemon = daemons(instance)
    daemon.wait_ready()
    closed = switch_segments(instance, 1)
    failure = daemon.wait_log("WAL request failed")
    assert failure["error"] == f"wal archive plugin is not available: {PLUGIN}"
    assert f"{closed[0]}.ready" in ready_files(instance)
    assert daemon.stop() == 0


def test_look_ahead_archives_the_next_ready_segments(instance: Instance, daemons: Start) -> None:
    plugin = PluginProcess(instance.root, "--latency", "0.3").start()
    try:
        instance.write_config(plugin_spec(max_parallel=4))
        daemon = daemons(instance)
        daemon.wait_ready()
        closed = switch_segments(instance, 8)
        wait_archived(instance, closed[-1], 90)
        assert daemon.find("archived ahead")
        assert set(closed) <= set(plugin.archived())
        for name in closed:
            assert (plugin.storage / name).exists()
        # Each segment counted once, whether uploaded on PostgreSQL's call or ahead of it.
        stored = len(set(plugin.archived()))
        wait_for(lambda: archive_counters(instance)[0] == stored, 30, "every segment counted")
        assert archive_counters(instance)[1] > 0  # some answered from their marker
        assert daemon.stop() == 0
    finally:
        plugin.stop()


def archive_counters(inst: Instance) -> tuple[int, int]:
    """The daemon's cnpg_collector_wal_archive_archived_total and ..._archived_ahead_total."""
    url = f"http://127.0.0.1:{inst.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    pattern = r"^cnpg_collector_wal_archive_(archived(?:_ahead)?_total) (\S+)$"
    found = dict(re.findall(pattern, text, re.M))
    return int(float(found["archived_total"])), int(float(found["archived_ahead_total"]))


def run_thin(*args: str) -> subprocess.CompletedProcess[str]:
    """The package's copy of the client, as `python -I -S thin.py` (the installed one is below)."""
    python = os.path.realpath(sys.executable)
    return subprocess.run(
        [python, "-I", "-S", str(THIN), *args], capture_output=True, text=True, timeout=60
    )


def test_thin_client_restore_passes_rewind_mode_and_not_found(
    instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    instance.write_config(plugin_spec())
    daemon = daemons(instance)
    daemon.wait_ready()
    name = switch_segments(instance, 1)[0]
    wait_archived(instance, name)
    sock = str(wal_socket_in(instance.scratch))
    dest = instance.pgdata / "pg_wal" / "RECOVERYXLOG"  # the daemon restores only into PGDATA
    done = run_thin("wal-restore", "--socket", sock, "--rewind", name, str(dest))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == (plugin.storage / name).read_bytes()
    assert plugin.calls("restore")[-1]["mode"] == 2  # MODE_REWIND
    missing = run_thin("wal-restore", "--socket", sock, "0000000100000000000000FF", str(dest))
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "not restored" in missing.stderr
    assert plugin.calls("restore")[-1]["mode"] == 1  # MODE_RECOVERY
    assert daemon.stop() == 0


def test_thin_client_fails_when_the_daemon_is_gone(tmp_root: Path) -> None:
    sock = str(tmp_root / "nothing.sock")
    result = run_thin("wal-archive", "--socket", sock, "pg_wal/000000010000000000000001")
    assert result.returncode == 1
    assert "instance manager not reachable" in result.stderr
    assert run_thin("wal-archive").returncode == 2
    assert run_thin("wal-archive", "a", "b").returncode == 2


def base_backup(inst: Instance, target: Path) -> None:
    subprocess.run(
        [str(PG_BIN / "pg_basebackup"), "-D", str(target), "-h", "127.0.0.1",
         "-p", str(inst.pg_port), "-U", "postgres", "-X", "none", "-c", "fast"],
        check=True, capture_output=True, user="postgres", group="postgres", extra_groups=[],
    )  # fmt: skip


@pytest.mark.slow
def test_point_in_time_restore_of_every_archived_segment(
    instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    instance.write_config(plugin_spec(max_parallel=4))
    primary = daemons(instance)
    primary.wait_ready()
    sql(instance, "CREATE TABLE kept AS SELECT g FROM generate_series(1, 100) g")
    restored = Instance(instance.root / "r")
    restored.root.mkdir()
    chown_tree(restored.root)
    base_backup(instance, restored.pgdata)
    sql(instance, "INSERT INTO kept SELECT g FROM generate_series(101, 300) g")
    closed = switch_segments(instance, 3)
    wait_archived(instance, closed[-1])
    assert primary.stop() == 0
    (restored.pgdata / "recovery.signal").touch()
    chown_tree(restored.root)
    # The archive is a recovery source here, as in CNPG: a plugin named only in
    # spec.externalClusters is used for WAL restore.
    restored.write_config(
        base_spec(
            externalClusters=[{"name": "origin", "plugin": {"name": PLUGIN}}],
            wal={"maxParallel": 4},
        )
    )
    replica = daemons(restored, "--plugin-socket-dir", str(plugin.socket_dir))
    replica.wait_ready(120)
    wait_for(lambda: not sql(restored, "SELECT pg_is_in_recovery()")[0][0], 60, "promotion")
    assert sql(restored, "SELECT count(*) FROM kept") == [(300,)]
    restores = plugin.calls("restore")
    assert {c["source_wal_name"] for c in restores} >= set(closed[:-1])
    assert all(c["mode"] == 1 for c in restores)
    assert replica.find("PostgreSQL is accepting connections")
    assert replica.stop() == 0
    assert postmaster_pid(restored.pgdata) is None
