"""The batch path of the pgBackRest sidecar (archive-async): real pgBackRest, real
PostgreSQL 15, the daemon.

Each test piles up ready segments while the sidecar is down (archiving fails, PostgreSQL
keeps them), then starts it: one ``archive-push:async`` pushes the whole range and
PostgreSQL's calls are answered from its ``.ok`` status files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from instance_manager.plugins._gen import wal_pb2
from instance_manager.plugins.connection import Channel
from tests.daemon import Daemon, Instance, chown_tree, wait_for
from tests.pgbackrest_kit import (
    SidecarProcess,
    archived_segments,
    archiver,
    call,
    cluster_json,
    make_dir,
    pgbackrest,
    pgbackrest_spec,
    ready_files,
    switch_segments,
    wait_archived,
)

Start = Callable[..., Daemon]
ASYNC = {"archive-async": "y", "process-max": "2"}


@pytest.fixture
def repo(instance: Instance) -> Path:
    return make_dir(instance.root / "repo")


@pytest.fixture
def sidecar(instance: Instance) -> Iterator[SidecarProcess]:
    proc = SidecarProcess(instance)
    yield proc
    proc.stop()


def out_dir(sidecar: SidecarProcess) -> Path:
    """The sidecar's spool queue (its work directory's spool, stanza main)."""
    return sidecar.work_dir / "spool" / "archive" / "main" / "out"


def pile_up(instance: Instance, count: int) -> list[str]:
    """``count`` closed segments kept .ready (the sidecar is down), copied aside."""
    closed = switch_segments(instance, count)
    wait_for(lambda: set(closed) <= ready_files(instance), 30, "the segments to be ready")
    copies = make_dir(instance.root / "copies")
    for name in closed:
        shutil.copyfile(instance.pgdata / "pg_wal" / name, copies / name)
    return closed


def assert_same_bytes(instance: Instance, repo: Path, names: list[str]) -> None:
    """archive-get each segment back from the repository: the bytes PostgreSQL wrote."""
    fetched = make_dir(instance.root / "fetched")
    for name in names:
        pgbackrest(instance, repo, "main", "archive-get", name, str(fetched / name))
        copy = (instance.root / "copies" / name).read_bytes()
        assert (fetched / name).read_bytes() == copy, name


async def archive(ch: Channel, instance: Instance, name: str) -> grpc.aio.AioRpcError | None:
    request = wal_pb2.WALArchiveRequest(
        cluster_definition=cluster_json(instance),
        source_file_name=str(instance.pgdata / "pg_wal" / name),
    )
    try:
        await ch.wal.Archive(request)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def start_failing(instance: Instance, daemons: Start, repo: Path, **extra: str) -> Daemon:
    """The daemon with the plugin enabled and its sidecar not started: WAL piles up."""
    instance.write_config(pgbackrest_spec(repo, max_parallel=4, **(ASYNC | extra)))
    daemon = daemons(instance)
    daemon.wait_ready()
    return daemon


@pytest.mark.slow
def test_a_batch_stores_the_range_with_identical_bytes(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    daemon = start_failing(instance, daemons, repo)
    closed = pile_up(instance, 8)
    sidecar.start()
    closed += switch_segments(instance, 1)  # wakes the archiver up
    wait_archived(instance, closed[-1])
    assert set(closed) <= archived_segments(instance, repo)
    # Everything after the first segment (pushed alone: the empty-archive check) went
    # through the asynchronous push, which leaves a status file per segment.
    queued = os.listdir(out_dir(sidecar))
    assert {f"{name}.ok" for name in closed[1:-1]} <= set(queued), queued
    assert_same_bytes(instance, repo, closed[:-1])
    pgbackrest(instance, repo, "main", "check", "--no-archive-check")
    pgbackrest(instance, repo, "main", "verify")
    assert daemon.stop() == 0


@pytest.mark.slow
def test_a_failure_mid_batch_fails_exactly_the_segments_not_stored(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    daemon = start_failing(instance, daemons, repo)
    closed = pile_up(instance, 6)
    broken = closed[3]
    segment = instance.pgdata / "pg_wal" / broken
    segment.chmod(0)  # pgBackRest (as postgres) cannot read this one
    sidecar.start()
    _, _, failed = archiver(instance)
    switch_segments(instance, 1)
    wait_for(lambda: archiver(instance)[2] > failed + 1, 60, "archiving to fail")
    wait_for(lambda: (out_dir(sidecar) / f"{broken}.error").exists(), 30, "the error status")
    last, _, _ = archiver(instance)
    assert last == closed[2], last  # PostgreSQL got OK up to the segment before
    stored = archived_segments(instance, repo)
    assert broken not in stored and set(closed[:3]) <= stored
    assert broken in ready_files(instance)
    # Asked directly, the plugin fails the broken segment with pgBackRest's error, and the
    # segments after it, which the same run stored, are OK.
    failure = call(sidecar.socket, lambda ch: archive(ch, instance, broken))
    assert failure is not None and broken in (failure.details() or ""), failure
    assert "Permission denied" in (failure.details() or ""), failure.details()
    assert call(sidecar.socket, lambda ch: archive(ch, instance, closed[4])) is None
    assert broken not in archived_segments(instance, repo)
    segment.chmod(0o600)
    closed += switch_segments(instance, 1)
    wait_archived(instance, closed[-1], 60)
    assert_same_bytes(instance, repo, closed[:-1])
    pgbackrest(instance, repo, "main", "verify")
    assert daemon.stop() == 0


@pytest.mark.slow
def test_sidecar_killed_mid_batch_catches_up_after_a_restart(
    instance: Instance, repo: Path, sidecar: SidecarProcess, daemons: Start
) -> None:
    # gzip at level 9 with one process: slow enough to kill the sidecar mid-batch.
    daemon = start_failing(instance, daemons, repo, **{"compress-level": "9", "process-max": "1"})
    closed = pile_up(instance, 12)
    sidecar.start()
    switch_segments(instance, 1)
    out = out_dir(sidecar)
    wait_for(lambda: (out / f"{closed[2]}.ok").exists(), 60, "the batch to be under way")
    assert not (out / f"{closed[-1]}.ok").exists()
    sidecar.kill()
    sidecar.start()
    closed += switch_segments(instance, 1)
    wait_archived(instance, closed[-1], 120)
    assert set(closed) <= archived_segments(instance, repo)
    assert_same_bytes(instance, repo, closed[:-1])
    pgbackrest(instance, repo, "main", "verify")
    pgbackrest(instance, repo, "main", "check", "--no-archive-check")
    assert daemon.stop() == 0
    chown_tree(instance.root)
