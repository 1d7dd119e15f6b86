"""Watching directories for changes: watchfiles' Rust watcher, driven from asyncio.

``watchfiles.awatch`` waits for the watcher in a thread through anyio, which would be the
daemon's only user of anyio (~2 MB of modules and its asyncio backend). :func:`awatch`
makes the same call (``RustNotify.watch``, in a worker thread of its own) with
the same defaults, environment variables (``WATCHFILES_FORCE_POLLING``,
``WATCHFILES_POLL_DELAY_MS``, ``WATCHFILES_DEBUG``,
``WATCHFILES_IGNORE_PERMISSION_DENIED``) and default filter, and yields the raw changes:
sets of ``(change, path)``, ``change`` being the number of a ``watchfiles.Change``.

The ``watchfiles`` package is loaded by the piece (process/lazy.py), so that importing its
Rust module does not import the rest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from watchfiles._rust_notify import RustNotify
from watchfiles.filters import DefaultFilter

DEFAULT_TIMEOUT_MS = 5_000  # watchfiles' rust_timeout under asyncio
DEFAULT_POLL_DELAY_MS = 300


class Event(Protocol):
    def is_set(self) -> bool: ...


class _Stop:
    """Set when the watch is cancelled; the watcher thread reads it every ``step``."""

    def __init__(self, outer: Event | None) -> None:
        self.outer = outer
        self.cancelled = False

    def is_set(self) -> bool:
        return self.cancelled or (self.outer is not None and self.outer.is_set())


async def awatch(
    *paths: Path | str,
    debounce: int = 1_600,
    step: int = 50,
    stop_event: Event | None = None,
    rust_timeout: int = DEFAULT_TIMEOUT_MS,
    yield_on_timeout: bool = False,
    recursive: bool = True,
) -> AsyncIterator[set[tuple[int, str]]]:
    """Like ``watchfiles.awatch`` (the arguments of the same names mean the same): each
    group of changes to ``paths`` not ignored by ``DefaultFilter``, until ``stop_event``
    is set; an empty set after ``rust_timeout`` ms without one if ``yield_on_timeout``.

    Cancelled, it returns at once: the watcher thread notices within ``step`` ms and the
    watcher is closed then, so a long step costs no time at shutdown."""
    stop = _Stop(stop_event)
    ignored = DefaultFilter()
    # A watch holds its thread for as long as it runs: on the loop's default executor it
    # would take one of the few workers asyncio.to_thread shares (min(32, CPUs + 4)).
    thread = ThreadPoolExecutor(1, thread_name_prefix="watch")
    watcher = _rust_watcher(paths, recursive)
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future[set[tuple[int, str]] | str] | None = None
    try:
        while True:
            waiting = loop.run_in_executor(
                thread, watcher.watch, debounce, step, rust_timeout, stop
            )
            raw = await asyncio.shield(waiting)
            waiting = None
            if not isinstance(raw, str):
                changes = {(change, path) for change, path in raw if ignored(change, path)}  # type: ignore[arg-type]
                if changes:
                    yield changes
            elif raw == "timeout":
                if yield_on_timeout:
                    yield set()
            elif raw == "stop":
                return
            else:  # "signal"
                raise RuntimeError("watch thread unexpectedly received a signal")
    finally:
        stop.cancelled = True
        if waiting is not None:
            waiting.add_done_callback(_retrieve)
        # Closed in the watch's own thread, once a watch() call still running there has
        # returned (within ``step`` ms): nobody waits for it, and no event loop is needed.
        thread.submit(watcher.close)
        thread.shutdown(wait=False)


def _rust_watcher(paths: tuple[Path | str, ...], recursive: bool) -> RustNotify:
    """watchfiles' watcher, set up from its environment variables as ``awatch`` does."""
    return RustNotify(
        [str(p) for p in paths],
        bool(os.getenv("WATCHFILES_DEBUG")),
        _force_polling(),
        _poll_delay_ms(),
        recursive,
        bool(os.getenv("WATCHFILES_IGNORE_PERMISSION_DENIED")),
    )


def _retrieve(done: asyncio.Future[Any]) -> None:
    """The outcome of a call nobody awaits any more: the caller saw the cancellation."""
    if not done.cancelled():
        done.exception()


def _force_polling() -> bool:
    value = os.getenv("WATCHFILES_FORCE_POLLING")
    if value:
        return value.lower() not in {"false", "disable", "disabled"}
    release = os.uname().release.lower()  # watchfiles polls by default on WSL only
    return "microsoft-standard" in release


def _poll_delay_ms() -> int:
    value = os.getenv("WATCHFILES_POLL_DELAY_MS")
    return int(value) if value and value.isdecimal() else DEFAULT_POLL_DELAY_MS
