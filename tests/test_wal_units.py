"""Archiver and restorer logic against an in-process backend (no PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from instance_manager.errors import PluginError, WalNotFound
from instance_manager.state import WalState
from instance_manager.wal import names
from instance_manager.wal.archiver import Archiver
from instance_manager.wal.restorer import Restorer
from tests.waiting import eventually

SEG = "000000010000000000000010"


class Backend:
    """Stores archived files in a dict; serves restores from another dict. ``delay`` is the
    latency of a plugin call (so that look-ahead work overlaps)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.archived: list[str] = []
        self.fail: set[str] = set()
        self.archive_store: dict[str, bytes] = {}
        self.restore_calls: list[tuple[str, bool]] = []
        self.in_flight = self.most_in_flight = 0

    async def archive(self, source: Path) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if source.name in self.fail:
            raise PluginError(f"cannot store {source.name}")
        self.archived.append(source.name)

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        self.restore_calls.append((name, rewind))
        await asyncio.sleep(self.delay)
        if name not in self.archive_store:
            raise WalNotFound(name)
        await asyncio.to_thread(destination.write_bytes, self.archive_store[name])


def pg_wal(root: Path, segments: list[str]) -> Path:
    wal = root / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    for name in segments:
        pg_wal_add(wal, name)
    return wal


def pg_wal_add(wal: Path, name: str) -> None:
    (wal / name).write_bytes(name.encode())
    (wal / "archive_status" / f"{name}.ready").touch()


def background() -> set[asyncio.Task[object]]:
    """This loop's unfinished tasks other than the test itself: look-ahead and prefetch work."""
    return asyncio.all_tasks() - {asyncio.current_task()}


async def settled() -> None:
    """Wait, with a deadline, until every look-ahead or prefetch task has finished."""
    await asyncio.sleep(0)  # the look-ahead starts in a callback right after the request

    async def idle() -> bool:
        return not background()

    await eventually(idle, 5, "the look-ahead and prefetch tasks to finish")


def archiver(tmp_path: Path, backend: Backend, parallel: int, state: WalState) -> Archiver:
    a = Archiver(backend, tmp_path / "spool", lambda: parallel, state, inflight=tmp_path / "busy")
    a.prepare()
    return a


async def archived_by_postgresql(a: Archiver, wal: Path, name: str) -> None:
    """PostgreSQL's archiver: archive_command for ``name``, then .ready becomes .done."""
    await a.archive(wal / name)
    status = wal / "archive_status"
    (status / f"{name}.ready").rename(status / f"{name}.done")


async def test_look_ahead_marks_then_short_circuits(tmp_path: Path) -> None:
    segs = [SEG, *names.following(SEG, 3)]
    wal = pg_wal(tmp_path, segs)
    backend, state = Backend(delay=0.01), WalState()
    a = archiver(tmp_path, backend, 4, state)
    await archived_by_postgresql(a, wal, segs[0])
    await settled()  # the three look-ahead uploads
    assert sorted(backend.archived) == segs
    assert state.archived_count == 4 and state.archived_ahead == 3  # counted when stored
    for name in segs[1:]:
        await archived_by_postgresql(a, wal, name)
    assert len(backend.archived) == 4  # nothing uploaded twice
    assert state.archived_count == 4
    # The next request drops the markers of the segments PostgreSQL is done with.
    later = names.following(segs[-1], 1)[0]
    pg_wal_add(wal, later)
    await a.archive(wal / later)
    await settled()
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [later]
    await a.close()


async def test_look_ahead_keeps_pace_with_a_backlog(tmp_path: Path) -> None:
    """One request starts the look-ahead; each upload that succeeds starts the next, with
    never more than maxParallel - 1 uploads ahead, until the backlog is stored."""
    segs = [SEG, *names.following(SEG, 11)]
    wal = pg_wal(tmp_path, segs)
    backend, state = Backend(delay=0.01), WalState()
    a = archiver(tmp_path, backend, 3, state)
    await archived_by_postgresql(a, wal, segs[0])
    await settled()
    assert sorted(backend.archived) == segs
    assert backend.most_in_flight == 2
    for name in segs[1:]:  # PostgreSQL's calls: every one answered from its marker
        await archived_by_postgresql(a, wal, name)
    assert len(backend.archived) == 12
    assert state.archived_count == 12 and state.archived_ahead == 11
    await a.close()


async def test_markers_survive_a_restart_and_failures_leave_none(tmp_path: Path) -> None:
    segs = [SEG, *names.following(SEG, 2)]
    wal = pg_wal(tmp_path, segs)
    backend = Backend()
    backend.fail.add(segs[2])
    first = archiver(tmp_path, backend, 3, WalState())
    await first.archive(wal / segs[0])
    await settled()  # one look-ahead upload succeeded, the other failed
    await first.close()
    assert (tmp_path / "spool" / segs[1]).exists()
    assert not (tmp_path / "spool" / segs[2]).exists()
    # A new daemon: the marker is honoured, the failed one is archived for real.
    backend.fail.clear()
    again = archiver(tmp_path, backend, 1, WalState())
    await again.archive(wal / segs[1])
    await again.archive(wal / segs[2])
    assert backend.archived == [segs[0], segs[1], segs[2]]
    await again.close()


async def test_requested_segment_failure_is_reported(tmp_path: Path) -> None:
    wal = pg_wal(tmp_path, [SEG])
    backend, state = Backend(), WalState()
    backend.fail.add(SEG)
    a = archiver(tmp_path, backend, 1, state)
    with pytest.raises(PluginError):
        await a.archive(wal / SEG)
    assert state.last_failed_wal == SEG and "cannot store" in state.last_failed_error
    assert state.ready_wal_files == 1
    await a.close()


def restorer(tmp_path: Path, backend: Backend, parallel: int, state: WalState) -> Restorer:
    r = Restorer(backend, tmp_path / "rspool", lambda: parallel, lambda: 16 << 20, state)
    r.prepare()
    return r


async def test_prefetch_hands_each_file_over_once(tmp_path: Path) -> None:
    segs = [SEG, *names.following(SEG, 3)]
    backend, state = Backend(), WalState()
    backend.archive_store = {n: n.encode() for n in segs}
    r = restorer(tmp_path, backend, 4, state)
    dest = tmp_path / "RECOVERYXLOG"
    for name in segs:
        await r.restore(name, dest, rewind=False)
        assert dest.read_bytes() == name.encode()
        await settled()
    assert [c[0] for c in backend.restore_calls].count(segs[1]) == 1
    assert state.restored_from_spool == 3
    with pytest.raises(WalNotFound):
        await r.restore(names.following(segs[-1], 1)[0], dest, rewind=False)
    await r.close()


async def test_other_timelines_are_dropped_and_rewind_fetches_exactly(tmp_path: Path) -> None:
    backend, state = Backend(), WalState()
    next_tl1 = names.following(SEG, 1)[0]
    tl2 = "00000002" + SEG[8:]
    backend.archive_store = {SEG: b"a", next_tl1: b"b", tl2: b"c"}
    r = restorer(tmp_path, backend, 2, state)
    dest = tmp_path / "RECOVERYXLOG"
    await r.restore(SEG, dest, rewind=False)
    await settled()
    assert (tmp_path / "rspool" / next_tl1).exists()
    await r.restore(tl2, dest, rewind=False)
    assert not (tmp_path / "rspool" / next_tl1).exists()
    await settled()
    calls = len(backend.restore_calls)
    await r.restore(SEG, dest, rewind=True)
    assert not background()  # no prefetch started in rewind mode
    assert backend.restore_calls[calls:] == [(SEG, True)]
    await r.close()


def test_following_crosses_a_log_boundary() -> None:
    assert names.following("0000000100000000000000FE", 3) == [
        "0000000100000000000000FF",
        "000000010000000100000000",
        "000000010000000100000001",
    ]
    assert names.following("000000010000000000000003", 1, 64 << 20) == ["000000010000000000000004"]
    assert names.following("000000010000000000000003", 1, 1 << 30) == ["000000010000000100000000"]


def test_restore_also_uses_external_cluster_plugins() -> None:
    from instance_manager.cluster_model import Cluster
    from instance_manager.plugins.selection import enabled
    from instance_manager.settings import _convert

    cluster: Cluster = _convert(
        {
            "spec": {
                "plugins": [{"name": "b.io"}, {"name": "off.io", "enabled": False}],
                "externalClusters": [
                    {"name": "origin", "plugin": {"name": "a.io"}},
                    {"name": "old", "plugin": {"name": "c.io", "enabled": False}},
                    {"name": "plain", "connectionParameters": {"host": "x"}},
                ],
            }
        },
        Cluster,
        "",
    )
    assert enabled(cluster) == ["b.io"]
    assert enabled(cluster, restore=True) == ["a.io", "b.io"]
