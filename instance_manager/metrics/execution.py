"""How one query runs on a connection: its own read-only transaction, a safe search_path.

The exporter's sessions are set up once (SESSION): transactions default to READ ONLY,
search_path is ``pg_catalog, public, pg_temp``, standard_conforming_strings is on. A query
then runs alone, with the extended protocol (prepared: a text holding several statements
is refused, as with CloudNativePG's driver), as its own implicit transaction: one round
trip, and PostgreSQL runs it as cheaply as a plain statement (the same statements sent as
one multi-statement message cost it three to five times more on the pg_stat views).

The session is only trusted while nothing could have changed it:
* the server reports changes of default_transaction_read_only (14+),
  standard_conforming_strings and, from 18 on, search_path: any drift restores SESSION;
* a user-supplied (custom) query could change it silently (``set_config(..., false)``),
  so SESSION is restored before the next query on that connection; the built-in and
  default queries are ours and never do;
* a query that turns out to be a utility statement (SET, RESET, DISCARD...) as well.
Where the server cannot confirm (before 14), and for queries with a predicate (which
shares the query's transaction), an explicit ``BEGIN READ ONLY; SET LOCAL search_path``
is used instead, as CloudNativePG does for every query.

Where the session is confirmed, a lane's queries without a predicate go in one pipeline
(``pipeline.py``), each still its own transaction: ours first, then the custom ones. A
custom query, and anything after it in the pipeline, runs right after RESTORE in the
same transaction, which also makes that transaction read-only: if RESTORE fails, the
query does not run. A pipeline holding a custom query ends with RESTORE alone, so that
the session is clean again for the next one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from instance_manager.metrics.connections import Connection
from instance_manager.metrics.pipeline import Failed, Outcome, Prepared, Rows, Statement, run
from instance_manager.metrics.queries import Query

SEARCH_PATH = "pg_catalog, public, pg_temp"
SESSION = (
    "SET default_transaction_read_only TO on; "
    f"SET search_path TO {SEARCH_PATH}; "
    "SET standard_conforming_strings TO on"
).encode()
BEGIN = (
    "BEGIN TRANSACTION READ ONLY; "
    f"SET LOCAL search_path TO {SEARCH_PATH}; "
    "SET LOCAL standard_conforming_strings TO on"
).encode()
# SESSION as one statement (the extended protocol takes one), and this transaction read-only.
RESTORE = (
    "SELECT pg_catalog.set_config('default_transaction_read_only', 'on', false), "
    f"pg_catalog.set_config('search_path', '{SEARCH_PATH}', false), "
    "pg_catalog.set_config('standard_conforming_strings', 'on', false), "
    "pg_catalog.set_config('transaction_read_only', 'on', true)"
).encode()
# BEGIN as two statements, for a pipeline.
OPEN = (
    b"BEGIN TRANSACTION READ ONLY",
    (
        f"SELECT pg_catalog.set_config('search_path', '{SEARCH_PATH}', true), "
        "pg_catalog.set_config('standard_conforming_strings', 'on', true)"
    ).encode(),
)
QUERY_TIMEOUT = 10.0  # one query (predicate included); the scrape deadline may cut it first
REPORTS_SEARCH_PATH = 180000  # server_version_num from which search_path is reported


def confirmed(conn: Connection) -> bool | None:
    """True: the session is as SESSION left it; False: it drifted; None: cannot tell."""
    info = conn.info
    read_only = info.parameter_status("default_transaction_read_only")
    if read_only is None:  # before PostgreSQL 14
        return None
    if read_only != "on" or info.parameter_status("standard_conforming_strings") != "on":
        return False
    if info.server_version >= REPORTS_SEARCH_PATH:
        return info.parameter_status("search_path") == SEARCH_PATH
    return True


async def _rows(conn: Connection, text: bytes) -> tuple[list[str], list[Any], str]:
    import psycopg

    cur = await conn.execute(text, prepare=True)
    result = cur.pgresult
    if result is None or result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        return [], [], cur.statusmessage or ""
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    return names, await cur.fetchall(), cur.statusmessage or ""


async def _in_transaction(conn: Connection, query: Query) -> tuple[list[str], list[Any]] | None:
    import psycopg

    await conn.execute(BEGIN)
    try:
        if query.predicate:
            _, first, _ = await _rows(conn, query.predicate.encode())
            if not first or first[0][0] is not True:
                await conn.execute(b"COMMIT")
                return None
        names, rows, _ = await _rows(conn, query.sql.encode())
    except psycopg.Error:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.execute(b"ROLLBACK")
        raise
    await conn.execute(b"COMMIT")
    return names, rows


async def run_query(
    conn: Connection, query: Query, clean: bool
) -> tuple[tuple[list[str], list[Any]] | None, bool]:
    """Column names and rows of ``query`` (None when its predicate says to skip it), and
    whether the session is still known to be as SESSION left it.

    ``clean`` says so before the query; the caller keeps it per connection.
    """
    async with asyncio.timeout(QUERY_TIMEOUT):
        state = confirmed(conn)
        if state is False or (state and not clean):
            await conn.execute(SESSION)
            state = confirmed(conn)
        if query.predicate or not state:
            return await _in_transaction(conn, query), query.trusted
        names, rows, status = await _rows(conn, query.sql.encode())
        return (names, rows), query.trusted and status.startswith("SELECT")


def ordered(queries: list[Query]) -> deque[Query]:
    """Ours before the custom queries, those with a predicate last (they run alone)."""
    return deque(sorted(queries, key=lambda q: (q.predicate is not None, not q.trusted)))


async def pipeline_ready(conn: Connection, clean: bool) -> bool:
    """Restore SESSION if needed; whether the session is confirmed, so a pipeline may run."""
    state = confirmed(conn)
    if state is False or (state and not clean):
        async with asyncio.timeout(QUERY_TIMEOUT):
            await conn.execute(SESSION)
        state = confirmed(conn)
    return state is True


def take_batch(todo: deque[Query]) -> list[Query]:
    """The queries at the front of ``todo`` that have no predicate (removed from it)."""
    batch = []
    while todo and todo[0].predicate is None:
        batch.append(todo.popleft())
    return batch


async def run_batch(
    conn: Connection, batch: list[Query], prepared: Prepared, done: list[Outcome]
) -> None:
    """Run ``batch`` in one pipeline on a confirmed, clean session; each outcome is
    appended to ``done``, then, after a custom query, that of the closing RESTORE."""
    statements, dirty = [], False
    for query in batch:
        dirty = dirty or not query.trusted
        statements.append(Statement(query.sql.encode(), before=(RESTORE,) if dirty else ()))
    if dirty:
        statements.append(Statement(RESTORE, prepare=False))
    async with asyncio.timeout(QUERY_TIMEOUT):
        await run(conn, statements, prepared, done)


async def run_predicated(
    conn: Connection, query: Query, prepared: Prepared
) -> tuple[list[str], list[Any]] | None:
    """A query with a predicate on a confirmed session, as ``_in_transaction`` runs it, in
    two pipelines: BEGIN and the predicate, then the query (if the predicate says so)
    and COMMIT (a ROLLBACK after an error)."""
    assert query.predicate is not None
    first: list[Outcome] = []
    then: list[Outcome] = []
    async with asyncio.timeout(QUERY_TIMEOUT):
        await run(conn, [Statement(query.predicate.encode(), before=OPEN)], prepared, first)
        found = first[0]
        go = isinstance(found, Rows) and bool(found.rows) and found.rows[0][0] is True
        statements = [Statement(query.sql.encode())] if go else []
        statements.append(Statement(b"COMMIT", prepare=False))
        await run(conn, statements, prepared, then)
    for outcome in first + then:
        if isinstance(outcome, Failed):
            raise outcome.error
    result = then[0]
    return (result.names, result.rows) if go and isinstance(result, Rows) else None
