"""Where the queries come from, and reloading them as soon as a file changes.

The set is: the built-in ``collector`` query, the default queries (unless
``spec.monitoring.disableDefaultQueries``), then each file of ``metricsQueriesFiles`` in
order (a later query of the same name wins). A file that is missing or not valid YAML is
logged and skipped. CloudNativePG re-reads its ConfigMaps on the next reconcile; we watch
the files' directories (a ConfigMap volume swaps a symlink) and reload at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from instance_manager import log
from instance_manager.metrics import queries
from instance_manager.metrics.queries import Query, QueryError
from instance_manager.settings import Settings

_logger = log.get("metrics")
WATCH_DEBOUNCE_MS = 100
WATCH_STEP_MS = 200  # how often the watcher thread checks for cancellation
# How often the watch re-reads the settings (new paths, new directories) and, as a
# fallback, the files themselves.
WATCH_RECHECK_MS = 5000

SourceKey = tuple[tuple[str, ...], bool]


def key_of(settings: Settings) -> SourceKey:
    monitoring = settings.cluster.spec.monitoring
    files = tuple(str(p) for p in settings.instance.metricsQueriesFiles)
    return files, monitoring.disableDefaultQueries


class QuerySource:
    """The current query set; ``version`` changes whenever it is rebuilt."""

    def __init__(self, reserved: frozenset[str]) -> None:
        self.reserved = reserved
        self.queries: dict[str, Query] = {}
        self.version = 0
        self._key: SourceKey | None = None
        self._contents: list[tuple[str, bytes | None]] | None = None
        self._defaults: dict[str, Query] | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, settings: Settings) -> None:
        """Load the set if the settings now name other files (cheap when nothing changed)."""
        if self.stale(settings):
            await self.reload(settings)

    async def reload(self, settings: Settings, only_if_changed: bool = False) -> bool:
        async with self._lock:
            key = key_of(settings)
            paths = [Path(p) for p in key[0]]
            contents = await asyncio.to_thread(queries.read_files, paths)
            if only_if_changed and key == self._key and contents == self._contents:
                return False
            if self._defaults is None:
                self._defaults = await asyncio.to_thread(_parse_defaults)
            self.queries = await asyncio.to_thread(self._build, key[1], contents)
            self._key, self._contents = key, contents
            self.version += 1
        log.event(_logger, "metrics queries loaded", queries=len(self.queries), files=list(key[0]))
        return True

    def _build(
        self, no_defaults: bool, contents: list[tuple[str, bytes | None]]
    ) -> dict[str, Query]:
        sources = [queries.parse_document(queries.BUILTIN, queries.BUILTIN_SOURCE, trusted=True)]
        if not no_defaults and self._defaults is not None:
            sources.append(self._defaults)
        for path, data in contents:
            if data is None:
                log.event(_logger, "metrics query file not readable", logging.WARNING, path=path)
                continue
            try:
                sources.append(queries.load_yaml(data.decode(errors="replace"), path))
            except QueryError as exc:
                log.event(
                    _logger,
                    "metrics query file ignored",
                    logging.WARNING,
                    path=path,
                    error=str(exc),
                )
        return queries.merge(sources, self.reserved)

    def stale(self, settings: Settings) -> bool:
        return key_of(settings) != self._key

    def directories(self) -> list[Path]:
        """Existing directories holding the query files (what the watch looks at)."""
        folders = {Path(p).absolute().parent for p in (self._key or ((), False))[0]}
        return sorted(f for f in folders if f.is_dir())


def _parse_defaults() -> dict[str, Query]:
    return queries.load_yaml(queries.default_text(), queries.DEFAULT_SOURCE, trusted=True)


async def watch(source: QuerySource, settings: Callable[[], Settings]) -> None:
    """Reload the queries whenever their files (or the settings naming them) change.

    Never fails: a watch that breaks (a volume going away...) is logged and started again,
    since the metrics must not take the instance down.
    """
    while True:
        try:
            await _watch(source, settings)
        except Exception as exc:
            log.event(_logger, "metrics query watch failed", logging.ERROR, error=str(exc))
            await asyncio.sleep(WATCH_RECHECK_MS / 1000)


async def _watch(source: QuerySource, settings: Callable[[], Settings]) -> None:
    from instance_manager.process.watch import awatch

    while True:
        await source.refresh(settings())
        folders = await asyncio.to_thread(source.directories)
        if not folders:
            await asyncio.sleep(WATCH_RECHECK_MS / 1000)
            continue
        stop = asyncio.Event()
        async for _ in awatch(
            *folders,
            stop_event=stop,
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            rust_timeout=WATCH_RECHECK_MS,
            yield_on_timeout=True,
            recursive=False,
        ):
            current = settings()
            if source.stale(current):
                stop.set()  # other files or directories: start a new watch
            else:
                await source.reload(current, only_if_changed=True)
