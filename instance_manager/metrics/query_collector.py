"""One update of the query collector: which queries run, on which databases, in parallel.

Queries are skipped on a standby when marked ``primary``, and outside their
``runonserver`` range. ``target_databases`` entries holding ``*``, ``?``, ``[`` or ``]``
are shell patterns matched against the databases the exporter may connect to (listed by
the built-in statement); the default target is the application database.

The queries of one database are spread over a few connections ("lanes", longest first
by their last duration) so that PostgreSQL runs one while we decode another: with two
cores that halves an uncached scrape. Each lane runs its queries in order.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from instance_manager import log
from instance_manager.metrics import engine, execution
from instance_manager.metrics.connections import Connections, Lane
from instance_manager.metrics.queries import Query
from instance_manager.metrics.versions import Version

_logger = log.get("metrics")
_PATTERN = re.compile(r"[][*?]")
PARALLEL_LANES = 6  # connections working at the same time, all databases together
MAX_LANES = 3  # connections per database
QUERIES_PER_LANE = 4  # below this a further connection costs more than it saves


@dataclass(frozen=True)
class Target:
    version: Version
    is_primary: bool
    default_db: str
    databases: list[str] | None  # those a pattern may match (None: could not list them)


def selected(queries: Mapping[str, Query], target: Target, out: engine.Results) -> list[Query]:
    chosen = []
    for query in queries.values():
        if query.primary and not target.is_primary:
            continue
        if query.runonserver_error:
            log.event(
                _logger,
                "runonserver not understood",
                logging.ERROR,
                query=query.name,
                error=query.runonserver_error,
            )
            out.error(query.name)
            continue
        if query.runonserver is not None and target.version not in query.runonserver:
            continue
        chosen.append(query)
    return chosen


def expand(patterns: Iterable[str], databases: list[str] | None) -> list[str]:
    found: dict[str, None] = {}
    for pattern in patterns:
        if not _PATTERN.search(pattern):
            found[pattern] = None
        else:
            matched = (d for d in databases or () if fnmatch.fnmatchcase(d, pattern))
            found.update(dict.fromkeys(matched))
    return list(found)


def by_database(
    queries: list[Query], target: Target, out: engine.Results
) -> dict[str, list[Query]]:
    """Database -> the queries to run there, in order."""
    by_db: dict[str, list[Query]] = {}
    for query in queries:
        targets = query.target_databases or (target.default_db,)
        if target.databases is None and any(_PATTERN.search(t) for t in targets):
            out.error(f"{query.name}: the list of databases is not available")
        for db in expand(targets, target.databases):
            by_db.setdefault(db, []).append(query)
    return by_db


class QueryRunner:
    """Runs updates over the exporter's connections; remembers how long queries take."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.durations: dict[tuple[str, str], float] = {}

    def lanes(self, db: str, queries: list[Query]) -> list[list[Query]]:
        count = max(1, min(MAX_LANES, len(queries) // QUERIES_PER_LANE))
        lanes: list[list[Query]] = [[] for _ in range(count)]
        loads = [0.0] * count
        cost = {q.name: self.durations.get((q.name, db), 0.0) for q in queries}
        for query in sorted(queries, key=lambda q: cost[q.name], reverse=True):
            i = loads.index(min(loads))
            lanes[i].append(query)
            loads[i] += cost[query.name] or 1e-3
        return [lane for lane in lanes if lane]

    async def _run_lane(self, lane: Lane, queries: list[Query], out: engine.Results) -> None:
        import psycopg

        db = lane[0]
        for query in queries:
            started = time.monotonic()
            try:
                conn = await self.connections.get(lane)
                clean = self.connections.clean.get(lane, True)
                self.connections.clean[lane] = query.trusted  # until we know better
                result, self.connections.clean[lane] = await execution.run_query(conn, query, clean)
                if result is not None:
                    engine.add_rows(query, *result, out)
            except (psycopg.Error, OSError, engine.ColumnMismatch, TimeoutError) as exc:
                await self._failed(lane, query, exc, out)
            except asyncio.CancelledError:
                await self.connections.drop(lane)  # a statement may still be running
                raise
            self.durations[(query.name, db)] = time.monotonic() - started

    async def _failed(self, lane: Lane, query: Query, exc: Exception, out: engine.Results) -> None:
        import psycopg

        detail = str(exc) or type(exc).__name__
        log.event(
            _logger,
            "Error collecting user query",
            logging.ERROR,
            query=query.name,
            targetDatabase=lane[0],
            error=detail,
        )
        out.error(f"{query.name} on db {lane[0]}: {detail}")
        # Keep the connection after an error of the query itself; drop it when its state is
        # unknown (timeout, lost connection) or its prepared statements went stale
        # ("cached plan must not change result type").
        harmless = isinstance(exc, engine.ColumnMismatch) or (
            isinstance(exc, psycopg.Error)
            and not isinstance(exc, psycopg.OperationalError | psycopg.errors.FeatureNotSupported)
        )
        if not harmless:
            await self.connections.drop(lane)

    async def update(
        self, queries: Mapping[str, Query], target: Target, deadline: float
    ) -> engine.Results:
        """Run every selected query; what is not done by ``deadline`` (loop time) is an error."""
        out = engine.Results()
        limit = asyncio.Semaphore(PARALLEL_LANES)

        async def one(lane: Lane, work: list[Query]) -> None:
            async with limit:
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._run_lane(lane, work, out)
                except TimeoutError:
                    out.error(f"on db {lane[0]}: the scrape deadline was reached")
                    await self.connections.drop(lane)

        jobs = []
        for db, work in by_database(selected(queries, target, out), target, out).items():
            jobs += [one((db, i), lane) for i, lane in enumerate(self.lanes(db, work))]
        await asyncio.gather(*jobs)
        await self.connections.keep_only({"postgres", target.default_db})
        return out
