"""The Cluster's reach into the pgBackRest sidecar, with real pgBackRest, PostgreSQL 15 and
the daemon: an option that would run a program is refused and nothing runs; an option the
sidecar's command line enables is used; an unsafe directory stops the sidecar at start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.daemon import Daemon, Instance, chown_tree, pg_user, wait_for
from tests.pgbackrest_kit import (
    SidecarProcess,
    archiver,
    info,
    make_dir,
    pgbackrest_spec,
    ready_files,
    switch_segments,
    wait_archived,
)

Start = Callable[..., Daemon]


def ssh_stand_in(root: Path) -> tuple[Path, Path]:
    """A program standing in for ssh that leaves a marker file when run: (program, marker)."""
    marker = root / "ssh-ran"
    program = root / "fake-ssh"
    program.write_text(f'#!/bin/sh\necho "$@" > {marker}\nexit 1\n')
    program.chmod(0o755)
    chown_tree(root)
    return program, marker


def test_a_cluster_cannot_make_the_sidecar_run_a_program(
    instance: Instance, daemons: Start
) -> None:
    repo = make_dir(instance.root / "repo")
    program, marker = ssh_stand_in(make_dir(instance.root / "x"))
    # With a repository host, pgBackRest starts its remote through cmd-ssh.
    spec = pgbackrest_spec(repo, **{"repo1-host": "localhost", "cmd-ssh": str(program)})
    instance.write_config(spec)
    sidecar = SidecarProcess(instance).start()
    try:
        daemon = daemons(instance)
        daemon.wait_ready()
        before = archiver(instance)
        closed = switch_segments(instance, 1)
        failure = daemon.wait_log("WAL request failed")
        assert "'repo1-host'" in failure["error"] and "--allow-option" in failure["error"]
        wait_for(lambda: sidecar.find("Archive failed"), 10, "the sidecar's error")
        assert "'repo1-host'" in sidecar.find("Archive failed")[0]["error"]
        wait_for(lambda: archiver(instance)[2] > before[2], 30, "archive_command to fail")
        assert closed[0] in ready_files(instance)  # kept for a retry
        assert not marker.exists(), marker.read_text()
        assert not any(repo.iterdir())  # no stanza created
        assert daemon.stop() == 0
    finally:
        sidecar.stop()
    assert not marker.exists()


def test_options_enabled_on_the_sidecar_command_line_are_used(
    instance: Instance, daemons: Start
) -> None:
    repo = make_dir(instance.root / "repo")
    spool, lock = instance.root / "spool", instance.root / "lock"
    paths = {"spool-path": str(spool), "lock-path": str(lock)}
    instance.write_config(pgbackrest_spec(repo, **{"archive-async": "y"}, **paths))
    sidecar = SidecarProcess(instance, allow=["spool-path", "lock-path"]).start()
    try:
        daemon = daemons(instance)
        daemon.wait_ready()
        # The first segment goes alone (the empty-archive check), the next ones in batches.
        closed = switch_segments(instance, 2)
        wait_archived(instance, closed[-1])
        queued = spool / "archive" / "main" / "out"
        assert f"{closed[-1]}.ok" in os.listdir(queued)  # the asynchronous push's queue
        assert lock.is_dir() and not (sidecar.work_dir / "spool").exists()
        assert info(instance, repo)["archive"][0]["max"] >= closed[-1]
        assert daemon.stop() == 0
    finally:
        sidecar.stop()


def test_an_unsafe_work_or_spool_directory_stops_the_sidecar_at_start(
    instance: Instance,
) -> None:
    sidecar = SidecarProcess(instance)
    sidecar.work_dir.mkdir(mode=0o700)  # root's, and the sidecar runs as postgres
    code, lines = sidecar.refused()
    refusal = [line for line in lines if line.get("msg") == "refusing to start"]
    assert code == 2 and refusal, lines
    assert f"work directory {sidecar.work_dir} is owned by uid 0" in refusal[0]["error"]
    assert str(pg_user().pw_uid) in refusal[0]["error"]

    chown_tree(sidecar.work_dir)
    shared = make_dir(instance.root / "shared-spool")
    shared.chmod(0o775)
    code, lines = sidecar.refused(PGBACKREST_SPOOL_PATH=str(shared))
    refusal = [line for line in lines if line.get("msg") == "refusing to start"]
    assert code == 2 and refusal, lines
    assert "spool-path" in refusal[0]["error"] and "writable by its group" in refusal[0]["error"]
    assert not sidecar.socket.exists()
