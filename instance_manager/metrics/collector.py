"""One scrape: built-in collector, queries (cached), plugins and archive visibility.

Concurrent scrapes share the collection in flight. A collection is bounded by
SCRAPE_BUDGET: a part that is not done by then is left out and counted as an error, and
the scrape still answers. With PostgreSQL down, ``cnpg_collector_up`` is 0,
``last_collection_error`` 1, and what does not need PostgreSQL (pg_wal, the archive
backlog, plugins) is still reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from instance_manager import log
from instance_manager.metrics import archive, builtin, execution, query_collector
from instance_manager.metrics.connections import Connections, Connector, unix_connector
from instance_manager.metrics.exposition import Family, gauge, render
from instance_manager.metrics.runtime import RuntimeMetrics
from instance_manager.metrics.selfstats import (
    RESERVED,
    QueryCache,
    Stats,
    default_database,
    queries_ttl,
    reload_families,
)
from instance_manager.metrics.source import QuerySource
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

if TYPE_CHECKING:
    from instance_manager.metrics.plugins import PluginResults
    from instance_manager.plugins.registry import Registry

_logger = log.get("metrics")
P = builtin.P
# Prometheus' default scrape_timeout is 10 s: answer, partially if need be, before that.
SCRAPE_BUDGET = 8.0
MIN_BUDGET = 0.5  # even when the scraper allows less: a collection needs a few round trips
# How often the guard looks for a planned outage: a smart shutdown waits for every
# session, so our idle connections must go as soon as the lifecycle starts stopping.
GUARD_INTERVAL = 0.1
BUILTIN_LANE = ("postgres", -1)  # a connection of its own: it runs beside the queries


class Collector:
    """Builds the exposition; one collection at a time, shared by concurrent scrapes."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        plugins: Callable[[], Registry | None],
        connector: Connector | None = None,
        budget: float = SCRAPE_BUDGET,
    ) -> None:
        self.settings = settings
        self.state = state
        self.plugins = plugins
        self.budget = budget
        self.connections = Connections(connector or unix_connector(settings), execution.SESSION)
        self.runner = query_collector.QueryRunner(self.connections)
        self.source = QuerySource(RESERVED)
        self.stats = Stats()
        self.cache: QueryCache | None = None
        self.rate = archive.ArchiveRate()
        self.runtime = RuntimeMetrics()
        self._wal_settings: dict[str, float] | None = None
        self._facts: builtin.Facts | None = None  # from the last collection
        self._json: tuple[int, bytes] = (0, b"")
        self._inflight: asyncio.Task[bytes] | None = None

    async def scrape(self, budget: float | None = None) -> bytes:
        """The exposition; a scrape arriving during a collection shares it. ``budget``
        (seconds) bounds a new collection below SCRAPE_BUDGET, e.g. from the scraper's
        own timeout."""
        task = self._inflight
        if task is None or task.done():
            budget = min(self.budget, max(MIN_BUDGET, budget)) if budget else self.budget
            task = self._inflight = asyncio.get_running_loop().create_task(self._collect(budget))
        return await asyncio.shield(task)

    def _quiet(self) -> bool:
        """A planned outage (stop, restart): no session of ours may hold PostgreSQL up."""
        return self.state.stopping or self.state.might_be_unavailable

    async def pause(self) -> None:
        """Close our connections and open none until the planned outage is over."""
        self.connections.paused = True
        await self.connections.close()

    async def guard(self) -> None:
        """Pause as soon as a planned outage starts; runs until cancelled."""
        while True:
            if self._quiet() and not self.connections.paused:
                await self.pause()
            elif not self._quiet():
                self.connections.paused = False
            await asyncio.sleep(GUARD_INTERVAL)

    async def close(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
        await self.connections.close()

    def cluster_json(self) -> bytes:
        cluster = self.settings().cluster
        if self._json[0] != id(cluster):
            self._json = (id(cluster), json.dumps(cluster.to_json_dict()).encode())
        return self._json[1]

    async def _collect(self, budget: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        s = self.settings()
        self.stats.total += 1
        errors: list[str] = []
        plugin_task = self._start_plugins(deadline)
        # pg_wal: listed by the server with the built-in statement while it answers; the
        # directory is scanned beside the collection when the last one could not list it.
        listed = self._facts is not None and self._facts.wal_directory is not None
        wal_task = None if listed else loop.create_task(self._scan(s, deadline, errors))
        fenced = self.state.fenced or builtin.fenced(s.cluster, s.instance.podName)
        facts, queries = None, b""
        if fenced:
            log.event(_logger, "metrics collection skipped due to fencing", logging.DEBUG)
        elif self._quiet():
            self.stats.last_error = False  # a planned outage is not an error (CNPG)
        else:
            facts, queries = await self._postgres(s, deadline, errors)
        is_primary = self._is_primary(facts)
        parts: list[Family] = builtin.cluster_families(s.cluster, is_primary, errors)
        parts.append(
            gauge(P + "fencing_on", "1 if the instance is fenced, 0 otherwise", float(fenced))
        )
        parts += reload_families(self.state)
        if facts is not None:
            parts += builtin.server_families(facts, s.cluster, is_primary, errors)
            self._wal_settings = builtin.wal_settings_values(facts.wal_settings, s.cluster)
        wal = await self._wal(wal_task, facts, s, deadline, errors)
        parts += archive.status_families(wal)
        parts.append(archive.pg_wal_family(wal, self.state.wal_segment_size, self._wal_settings))
        plugin_parts = await self._plugin_families(plugin_task, errors)
        self.stats.errors.update(errors)
        if errors:
            self.stats.last_error = True
        head = self.stats.families(s.cluster.metadata.name)
        tail = plugin_parts + archive.visibility_families(wal, self.state, self.rate)
        return render(head + parts) + queries + render(tail) + self.runtime.render()

    async def _postgres(
        self, s: Settings, deadline: float, errors: list[str]
    ) -> tuple[builtin.Facts | None, bytes]:
        """The built-in statement and the queries. Once a collection has told us the
        server's version and databases, the queries start at once, beside the ping."""
        loop = asyncio.get_running_loop()
        early: asyncio.Task[bytes] | None = None
        if self._facts is not None and self.state.is_primary is not None:
            target = self._target(s, self._facts)
            early = loop.create_task(self._queries(s, target, deadline, errors))
        facts = self._facts = await self._ping(s, deadline)
        if facts is None:
            if early is not None:
                early.cancel()
                await asyncio.gather(early, return_exceptions=True)
            self.cache = None  # no stale query results while PostgreSQL is down
            return None, b""
        if early is not None:
            return facts, await early
        return facts, await self._queries(s, self._target(s, facts), deadline, errors)

    def _target(self, s: Settings, facts: builtin.Facts) -> query_collector.Target:
        return query_collector.Target(
            facts.version, self._is_primary(facts), default_database(s.cluster), facts.databases
        )

    def _is_primary(self, facts: builtin.Facts | None) -> bool:
        if self.state.is_primary is not None:
            return self.state.is_primary
        return facts is not None and not facts.in_recovery

    async def _ping(self, s: Settings, deadline: float) -> builtin.Facts | None:
        """The built-in statement on the postgres database: its success is ``up``."""
        start = time.monotonic()
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self.connections.get(BUILTIN_LANE)
                facts = await builtin.fetch(conn, self.connections.prepared[BUILTIN_LANE])
        except Exception as exc:
            log.event(
                _logger,
                "Unable to collect metrics",
                logging.WARNING,
                error=str(exc) or type(exc).__name__,
            )
            await self.connections.drop(BUILTIN_LANE)
            self.stats.up, self.stats.last_error = 0.0, True
            facts = None
        else:
            self.stats.up, self.stats.last_error = 1.0, False
        self.stats.durations["Collect.up"] = time.monotonic() - start
        return facts

    async def _wal(
        self,
        task: asyncio.Task[archive.WalDirectory | None] | None,
        facts: builtin.Facts | None,
        s: Settings,
        deadline: float,
        errors: list[str],
    ) -> archive.WalDirectory | None:
        if task is not None:
            return await task
        if facts is not None and facts.wal_directory is not None:
            return archive.from_row(facts.wal_directory)
        return await self._scan(s, deadline, errors)

    async def _scan(
        self, s: Settings, deadline: float, errors: list[str]
    ) -> archive.WalDirectory | None:
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.to_thread(archive.scan, s.pgdata)
        except (OSError, TimeoutError) as exc:
            if self.state.postmaster_running:  # no pg_wal before initdb: not an error
                log.event(
                    _logger, "while collecting WAL archive metrics", logging.ERROR, error=str(exc)
                )
                errors.append("Collect.PgWALArchiveStats")
            return None

    async def _queries(
        self, s: Settings, target: query_collector.Target, deadline: float, errors: list[str]
    ) -> bytes:
        await self.source.refresh(s)
        key = (self.source.version, target.is_primary)
        ttl = queries_ttl(s.cluster)
        cache = self.cache
        if cache is not None and cache.key == key and time.monotonic() - cache.updated_mono <= ttl:
            cache.hits += 1
            cache.miss = False
        else:
            start = time.monotonic()
            try:
                results = await self.runner.update(self.source.queries, target, deadline)
            except Exception as exc:  # never expected: each query is already isolated
                log.event(_logger, "Error during query update", logging.ERROR, error=str(exc))
                errors.append("Collect.cnpg")
                return b""
            names = frozenset(results.families)
            text = render(results.families.values())
            cache = self.cache = QueryCache(
                text, names, results.errors, key, time.time(), time.monotonic()
            )
            self.stats.durations["Collect.cnpg"] = time.monotonic() - start
        return cache.text + render(cache.families())

    def _start_plugins(self, deadline: float) -> asyncio.Task[PluginResults] | None:
        registry = self.plugins()
        if registry is None:
            return None
        return asyncio.get_running_loop().create_task(self._collect_plugins(registry, deadline))

    async def _collect_plugins(self, registry: Registry, deadline: float) -> PluginResults:
        from instance_manager.metrics import plugins

        try:
            async with asyncio.timeout_at(deadline):
                return await plugins.collect(registry, self.cluster_json, set(RESERVED))
        except TimeoutError:
            return plugins.PluginResults(failed=["plugins: the scrape deadline was reached"])

    async def _plugin_families(
        self, task: asyncio.Task[PluginResults] | None, errors: list[str]
    ) -> list[Family]:
        if task is None:
            return []
        results = await task
        taken = self.cache.names if self.cache is not None else frozenset()
        families = [f for f in results.families if f.name not in taken]
        if results.failed or len(families) != len(results.families):
            errors.append("Collect.PluginMetrics")
        return families
