"""process/preload.py (the web stack imported in a worker thread while PostgreSQL starts)
and postgres/pidfile.py's Watch, which notices PostgreSQL's readiness: the loop's thread
is never the one kept waiting."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from instance_manager.postgres import pidfile
from instance_manager.process import preload


@pytest.fixture
def modules(tmp_path: Path) -> list[str]:
    """Three small modules on sys.path, each recording its import in ``ORDER``; the first
    waits for ``GO`` (a threading.Event) halfway through."""
    package = tmp_path / "preload_probe"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import threading\nORDER = []\nSTARTED = threading.Event()\nGO = threading.Event()\n"
    )
    names = []
    for name in ("first", "second", "third"):
        wait = "preload_probe.STARTED.set()\npreload_probe.GO.wait(30)\n" if name == "first" else ""
        (package / f"{name}.py").write_text(
            f"import preload_probe\n{wait}preload_probe.ORDER.append({name!r})\n"
        )
        names.append(f"preload_probe.{name}")
    sys.path.insert(0, str(tmp_path))
    yield names
    sys.path.remove(str(tmp_path))
    for name in [*names, "preload_probe"]:
        sys.modules.pop(name, None)


async def test_the_worker_imports_nothing_while_a_probe_has_priority(
    modules: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import preload_probe  # the package itself: imported here, before the worker starts

    monkeypatch.setattr(preload, "PRIORITY_LIMIT", 30.0)
    running = preload.start(modules, after=asyncio.sleep(0))
    async with asyncio.timeout(10):
        await asyncio.to_thread(preload_probe.STARTED.wait, 10)  # the worker is in "first"
    with preload.priority():
        preload_probe.GO.set()  # "first" ends; the worker reaches "second" and waits
        await asyncio.sleep(0.2)  # what must not happen: "second" imported meanwhile
        assert preload_probe.ORDER == ["first"]
        assert not running.done()
    async with asyncio.timeout(10):
        await preload.wait()
    assert preload_probe.ORDER == ["first", "second", "third"]
    assert not any(isinstance(f, preload._Gate) for f in sys.meta_path)


async def test_priority_is_a_no_op_without_a_worker_and_bounded_with_one(
    modules: list[str],
) -> None:
    import preload_probe

    with preload.priority():  # nothing imports: returns at once
        pass
    preload_probe.GO.set()
    running = preload.start(modules, after=asyncio.sleep(0))
    async with asyncio.timeout(10):
        await asyncio.to_thread(preload_probe.STARTED.wait, 10)
    # Held longer than PRIORITY_LIMIT, the worker goes on: a stuck request cannot stop it.
    with preload.priority():
        async with asyncio.timeout(10):
            await asyncio.wait({running})
    assert preload_probe.ORDER == ["first", "second", "third"]


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_the_watch_descriptor_is_closed_after_the_wait(tmp_path: Path) -> None:
    before = open_descriptors()
    with pidfile.Watch(tmp_path) as watch:
        assert watch.active
        during = open_descriptors() - before
        assert during  # the inotify descriptor
        (tmp_path / "postmaster.pid").write_text("1\n")
        await watch.wait(5)
    # Closed by a worker thread (closing inotify waits for a kernel grace period).
    async with asyncio.timeout(10):
        await asyncio.get_running_loop().shutdown_default_executor()
    assert not open_descriptors() & during
