"""Deadlines on CNPG-I plugin calls: a stopped plugin fails archive and restore in time.

The plugin runs as its own process and is frozen with SIGSTOP, as a wedged sidecar would
be: its socket still accepts connections, but nothing answers. With
``--plugin-timeout 2``, archive_command (the real one, run as PostgreSQL runs it) and
the restore client must fail within about two seconds with an error naming the plugin;
after SIGCONT the same requests succeed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from instance_manager.errors import SettingsError
from instance_manager.settings import load
from tests.daemon import VENV_BIN, Daemon, Instance, wait_for
from tests.test_wal import (
    PLUGIN,
    PluginProcess,
    Start,
    plugin_spec,
    sql,
    switch_segments,
    wait_archived,
)

TIMEOUT = 2.0
# Process start-up and the reply on top of the deadline.
SLACK = 3.0


def test_plugin_timeout_must_be_positive(tmp_root: Path) -> None:
    flags = {"pgData": str(tmp_root / "pgdata")}
    assert load(None, {}, {**flags, "pluginTimeout": 0.5}).instance.pluginTimeout == 0.5
    assert load(None, {}, flags).instance.pluginTimeout == 60.0
    for bad in (0, -1):
        with pytest.raises(SettingsError, match=r"instance\.pluginTimeout"):
            load(None, {}, {**flags, "pluginTimeout": bad})


@pytest.fixture
def plugin(instance: Instance) -> Iterator[PluginProcess]:
    proc = PluginProcess(instance.root).start()
    yield proc
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGCONT)  # a stopped process would not see SIGTERM
    proc.stop()


def run_archive_command(
    inst: Instance, segment: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """PostgreSQL's archive_command for ``segment``, run the way the archiver runs it."""
    command = str(sql(inst, "SHOW archive_command")[0][0])
    command = command.replace("%p", f"pg_wal/{segment}").replace("%f", segment)
    started = time.monotonic()
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=inst.pgdata,
        user="postgres",
        group="postgres",
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return time.monotonic() - started, done


def run_restore(
    inst: Instance, name: str, dest: Path
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """The restore client (``instance-manager wal-restore``), asking the daemon of ``inst``."""
    started = time.monotonic()
    done = subprocess.run(
        [
            str(VENV_BIN / "instance-manager"),
            "wal-restore",
            "--scratch-dir",
            str(inst.scratch),
            name,
            str(dest),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return time.monotonic() - started, done


def start(instance: Instance, daemons: Start) -> Daemon:
    instance.write_config(plugin_spec())
    daemon = daemons(instance, "--plugin-timeout", str(TIMEOUT))
    daemon.wait_ready()
    return daemon


@pytest.mark.slow
def test_stopped_plugin_fails_archive_command_within_the_deadline(
    instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    daemon = start(instance, daemons)
    wait_archived(instance, switch_segments(instance, 1)[-1])  # channels open and warm
    assert plugin.proc is not None
    plugin.proc.send_signal(signal.SIGSTOP)
    segment = switch_segments(instance, 1)[-1]
    elapsed, done = run_archive_command(instance, segment)
    assert done.returncode != 0, done.stderr
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, (elapsed, done.stderr)
    assert f"plugin {PLUGIN} did not answer WAL.Archive of {segment}" in done.stderr
    failure = daemon.wait_log("WAL request failed")
    assert PLUGIN in failure["error"]
    wait_for(
        lambda: sql(instance, "SELECT failed_count FROM pg_stat_archiver")[0][0] > 0,
        TIMEOUT + SLACK,
        "PostgreSQL's own archive attempt to fail",
    )
    plugin.proc.send_signal(signal.SIGCONT)
    elapsed, done = run_archive_command(instance, segment)
    assert done.returncode == 0, done.stderr
    later = switch_segments(instance, 1)[-1]  # wakes PostgreSQL's archiver at once
    wait_archived(instance, later, 90)
    assert {segment, later} <= set(plugin.archived())
    assert daemon.stop() == 0


@pytest.mark.slow
def test_stopped_plugin_fails_restore_within_the_deadline(
    instance: Instance, plugin: PluginProcess, daemons: Start
) -> None:
    daemon = start(instance, daemons)
    segment = switch_segments(instance, 1)[-1]
    wait_archived(instance, segment)
    dest = instance.pgdata / "pg_wal" / "RECOVERYXLOG"
    assert plugin.proc is not None
    plugin.proc.send_signal(signal.SIGSTOP)
    elapsed, done = run_restore(instance, segment, dest)
    assert done.returncode != 0, done.stderr
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK, (elapsed, done.stderr)
    assert f"plugin {PLUGIN} did not answer WAL.Restore of {segment}" in done.stderr
    plugin.proc.send_signal(signal.SIGCONT)
    elapsed, done = run_restore(instance, segment, dest)
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == (plugin.storage / segment).read_bytes()
    os.unlink(dest)
    assert daemon.stop() == 0
