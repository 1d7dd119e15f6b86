"""process/watch.py: watchfiles' Rust watcher driven from asyncio, as watchfiles.awatch."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from instance_manager.process.watch import awatch
from tests.daemon import wait_for

DEADLINE = 10.0


async def first_changes(folder: Path, *names: str) -> set[tuple[int, str]]:
    """The first changes reported while ``names`` are written in ``folder`` again and again
    (the watcher starts in its thread: a write before would be missed)."""

    async def first() -> set[tuple[int, str]]:
        async for changes in awatch(folder, debounce=50, step=10, recursive=False):
            return changes
        raise AssertionError("the watch ended")

    watching = asyncio.create_task(first())
    async with asyncio.timeout(DEADLINE):
        while not watching.done():
            for name in names:
                (folder / name).write_text("x")
            await asyncio.wait({watching}, timeout=0.05)
    return watching.result()


async def test_a_file_written_in_the_directory_is_reported(tmp_path: Path) -> None:
    changes = await first_changes(tmp_path, "settings.yaml")
    assert str(tmp_path / "settings.yaml") in {path for _, path in changes}


async def test_files_the_default_filter_ignores_are_not_reported(tmp_path: Path) -> None:
    changes = await first_changes(tmp_path, ".settings.yaml.swp", "settings.yaml")
    assert {path for _, path in changes} == {str(tmp_path / "settings.yaml")}


async def test_the_stop_event_ends_the_watch(tmp_path: Path) -> None:
    stop = asyncio.Event()
    timeouts = 0

    async def run() -> None:
        nonlocal timeouts
        async for changes in awatch(
            tmp_path, step=10, stop_event=stop, rust_timeout=50, yield_on_timeout=True
        ):
            assert changes == set()
            timeouts += 1
            if timeouts == 2:
                stop.set()

    await asyncio.wait_for(run(), DEADLINE)
    assert timeouts == 2


async def test_a_cancelled_watch_stops_its_thread(tmp_path: Path) -> None:
    async def run() -> None:
        async for _ in awatch(tmp_path, step=10, rust_timeout=60_000):
            pass

    watching = asyncio.create_task(run())

    def watch_thread() -> bool:
        return any(t.name.startswith("watch") for t in threading.enumerate())

    await asyncio.to_thread(wait_for, watch_thread, DEADLINE, "the watch's thread")
    watching.cancel()
    await asyncio.wait({watching}, timeout=DEADLINE)
    assert watching.cancelled()

    def threads_gone() -> bool:
        return not watch_thread()

    await asyncio.to_thread(wait_for, threads_gone, DEADLINE, "the watch's thread to end")


async def test_a_cancelled_watch_returns_before_its_thread_notices(tmp_path: Path) -> None:
    """With a long step the thread notices a cancellation late; the caller (the daemon's
    shutdown) does not wait for it, and the thread still ends on its own."""

    async def run() -> None:
        async for _ in awatch(tmp_path, step=3_000, rust_timeout=60_000, yield_on_timeout=True):
            pass

    def watch_thread() -> bool:
        return any(t.name.startswith("watch") for t in threading.enumerate())

    watching = asyncio.create_task(run())
    await asyncio.to_thread(wait_for, watch_thread, DEADLINE, "the watch's thread")
    watching.cancel()
    done, _ = await asyncio.wait({watching}, timeout=1.0)  # well under the 3 s step
    assert done and watching.cancelled()
    assert watch_thread()  # still inside watch(), until its step ends

    def threads_gone() -> bool:
        return not watch_thread()

    await asyncio.to_thread(wait_for, threads_gone, DEADLINE, "the watch's thread to end")
