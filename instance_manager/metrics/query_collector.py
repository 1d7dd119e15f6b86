"""One update of the query collector: which queries run, on which databases, in parallel.

Queries are skipped on a standby when marked ``primary``, and outside their
``runonserver`` range. ``target_databases`` entries holding ``*``, ``?``, ``[`` or ``]``
are shell patterns matched against the databases the exporter may connect to (listed by
the built-in statement); the default target is the application database.

The queries of one database are spread over a few connections ("lanes", longest first
by their last duration) so that PostgreSQL runs one while we decode another: with two
cores that halves an uncached scrape. A lane sends its queries in one pipeline where it
can (``execution.py`` says when), each still its own transaction with its own errors.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from instance_manager import log
from instance_manager.metrics import engine, execution, pipeline
from instance_manager.metrics.connections import Connection, Connections, Lane
from instance_manager.metrics.queries import Query
from instance_manager.metrics.versions import Version

_logger = log.get("metrics")
_PATTERN = re.compile(r"[][*?]")
PARALLEL_LANES = 6  # connections working at the same time, all databases together
# Command tags of statements that remove prepared statements (the session is replaced).
_FORGETS = ("DEALLOCATE", "DISCARD")
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
        """The lane's queries in order: those a pipeline can take in one round trip, the
        others (a predicate, a session the server cannot confirm) one by one."""
        import psycopg

        todo = execution.ordered(queries)
        while todo:
            started = time.monotonic()
            query = todo[0]
            try:
                conn = await self.connections.get(lane)
                clean = self.connections.clean.get(lane, True)
                ready = await execution.pipeline_ready(conn, clean)
                if ready and query.predicate is None:
                    self.connections.clean[lane] = True
                    await self._pipeline(lane, conn, todo, out)
                    continue
                todo.popleft()
                self.connections.clean[lane] = query.trusted  # until we know better
                if ready:
                    prepared = self.connections.prepared[lane]
                    result = await execution.run_predicated(conn, query, prepared)
                else:
                    result, self.connections.clean[lane] = await execution.run_query(
                        conn, query, clean
                    )
                if result is not None:
                    engine.add_rows(query, *result, out)
            except (psycopg.Error, OSError, engine.ColumnMismatch, TimeoutError) as exc:
                if todo and todo[0] is query:
                    todo.popleft()
                await self._failed(lane, query, exc, out)
            except asyncio.CancelledError:
                await self.connections.drop(lane)  # a statement may still be running
                raise
            self.durations[(query.name, lane[0])] = time.monotonic() - started

    async def _pipeline(
        self, lane: Lane, conn: Connection, todo: deque[Query], out: engine.Results
    ) -> None:
        """Run the front of ``todo`` in one pipeline. Interrupted (timeout, lost
        connection), the query it was waiting for fails and those after it go back into
        ``todo``, for a new connection."""
        import psycopg

        batch = execution.take_batch(todo)
        done: list[pipeline.Outcome] = []
        self.connections.clean[lane] = all(q.trusted for q in batch)
        prepared = self.connections.prepared[lane]
        previous = asyncio.get_running_loop().time()
        try:
            await execution.run_batch(conn, batch, prepared, done)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            todo.extendleft(reversed(batch[len(done) + 1 :]))
            await self._outcomes(lane, batch, done, previous, out)
            if len(done) < len(batch):
                await self._failed(lane, batch[len(done)], exc, out)
            await self.connections.drop(lane)  # still in pipeline mode
            return
        except asyncio.CancelledError:  # the scrape deadline: what arrived still counts
            await self._outcomes(lane, batch, done, previous, out)
            raise
        keep = await self._outcomes(lane, batch, done, previous, out)
        restored = len(done) > len(batch)  # the closing RESTORE
        if restored and isinstance(done[-1], pipeline.Failed):
            await self._failed(lane, batch[-1], done[-1].error, out)
            keep = False
        # A custom query may have left a transaction open, or removed prepared statements.
        if not keep or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await self.connections.drop(lane)
        elif restored:
            self.connections.clean[lane] = True

    async def _outcomes(
        self,
        lane: Lane,
        batch: list[Query],
        done: list[pipeline.Outcome],
        previous: float,
        out: engine.Results,
    ) -> bool:
        """Metrics and errors of the queries done; False if the connection must go."""
        import psycopg

        keep = True
        for query, outcome in zip(batch, done, strict=False):
            self.durations[(query.name, lane[0])] = outcome.at - previous
            previous = outcome.at
            try:
                if isinstance(outcome, pipeline.Failed):
                    raise outcome.error
                if not outcome.status.startswith("SELECT"):
                    keep = keep and not outcome.status.startswith(_FORGETS)
                    self.connections.clean[lane] = False
                engine.add_rows(query, outcome.names, outcome.rows, out)
            except (psycopg.Error, engine.ColumnMismatch) as exc:
                await self._failed(lane, query, exc, out)
        return keep

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
        # ("cached plan must not change result type") or away (a custom DEALLOCATE).
        harmless = isinstance(exc, engine.ColumnMismatch) or (
            isinstance(exc, psycopg.Error)
            and not isinstance(
                exc,
                psycopg.OperationalError
                | psycopg.errors.FeatureNotSupported
                | psycopg.errors.InvalidSqlStatementName,
            )
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
