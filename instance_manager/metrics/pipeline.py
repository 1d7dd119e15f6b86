"""Several statements sent at once on one connection (libpq's pipeline mode).

A Sync follows every statement, so each one is still its own implicit transaction and
an error fails only its own statement: PostgreSQL skips what follows an error up to the
next Sync, which is the end of that statement. All statements are sent before any
result is read, and results are read as they arrive: one round trip for a lane's
queries instead of one per query, and none of the per-statement cursor work of the
driver. (Statements sharing one Sync would wake us less often, but PostgreSQL holds
their results until that Sync: measured, a scrape was no cheaper, and slower.)

A statement is prepared (named, on that connection) the first time it is sent, in the
same pipeline, so the server plans it once per session. Rows are decoded by psycopg's
loaders, as a cursor would decode them.

``run`` appends each statement's outcome to the caller's list as soon as it is read: a
caller that is interrupted (timeout, lost connection) knows how far the pipeline got.
The connection is then left in pipeline mode and must be dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    from psycopg.pq.abc import PGconn, PGresult

    from instance_manager.metrics.connections import Connection

INVALID_STATEMENT_NAME = b"26000"  # a prepared statement that is gone (DEALLOCATE)


@dataclass(frozen=True)
class Statement:
    text: bytes
    prepare: bool = True  # False: sent unnamed, parsed each time
    # Sent unnamed just before, in the same transaction; if one fails, ``text`` does not run.
    before: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Rows:
    """A statement's result: column names, decoded rows, command tag, arrival (loop time)."""

    names: list[str]
    rows: list[tuple[Any, ...]]
    status: str
    at: float


@dataclass(frozen=True)
class Failed:
    error: psycopg.Error
    at: float


Outcome = Rows | Failed


@dataclass
class Prepared:
    """The statements prepared on one connection: text -> name."""

    names: dict[bytes, bytes] = field(default_factory=dict)
    count: int = 0  # names are never reused, even for a statement that is gone

    def name(self, text: bytes) -> tuple[bytes, bool]:
        """The statement's name, and whether it must be prepared now."""
        found = self.names.get(text)
        if found is not None:
            return found, False
        self.count += 1
        name = self.names[text] = b"cnpg_exporter_%d" % self.count
        return name, True


async def run(
    conn: Connection, statements: Sequence[Statement], prepared: Prepared, done: list[Outcome]
) -> None:
    """Run ``statements`` in one pipeline; append each outcome to ``done`` in order."""
    import psycopg

    pg = conn.pgconn
    busy = (psycopg.pq.TransactionStatus.ACTIVE, psycopg.pq.TransactionStatus.UNKNOWN)
    if pg.pipeline_status or pg.transaction_status in busy:
        raise psycopg.InterfaceError("the connection is busy")
    pg.enter_pipeline_mode()
    preparing = [_send(pg, statement, prepared) for statement in statements]
    sock = _Socket(pg)
    sock.loop.add_reader(sock.fd, sock.wake)
    try:
        await sock.flush()
        reader = _Reader(conn, sock)
        for statement, name in zip(statements, preparing, strict=True):
            done.append(await reader.outcome(statement, name, prepared))
    finally:
        sock.loop.remove_reader(sock.fd)
    pg.exit_pipeline_mode()


def _send(pg: PGconn, statement: Statement, prepared: Prepared) -> bytes | None:
    """Queue one statement and its Sync; the name being prepared with it, if any."""
    for text in statement.before:
        pg.send_query_params(text, None)
    name: bytes | None = None
    if statement.prepare:
        name, new = prepared.name(statement.text)
        if new:
            pg.send_prepare(name, statement.text)
        pg.send_query_prepared(name, None)
        name = name if new else None
    else:
        pg.send_query_params(statement.text, None)
    pg.pipeline_sync()
    return name


class _Socket:
    """Waits on the connection's socket (``wake`` is its reader for the whole pipeline);
    reads what arrives while a write is pending."""

    def __init__(self, pg: PGconn) -> None:
        self.pg = pg
        self.fd = pg.socket
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    async def _wait(self, write: bool) -> None:
        self.ready = self.loop.create_future()
        if write:
            self.loop.add_writer(self.fd, self.wake)
        try:
            await self.ready
        finally:
            self.ready = None
            if write:
                self.loop.remove_writer(self.fd)

    async def flush(self) -> None:
        while self.pg.flush():
            await self._wait(write=True)
            self.pg.consume_input()  # the server may be waiting for us to read

    async def result(self) -> PGresult | None:
        while self.pg.is_busy():
            await self._wait(write=False)
            self.pg.consume_input()
        return self.pg.get_result()


class _Reader:
    def __init__(self, conn: Connection, sock: _Socket) -> None:
        from psycopg.adapt import Transformer

        self.sock = sock
        self.encoding = conn.info.encoding
        self.transformer = Transformer.from_context(conn)

    async def group(self) -> PGresult:
        """The result of one command (libpq ends each with None, but not a Sync)."""
        import psycopg

        first = await self.sock.result()
        if first is None:
            raise psycopg.InternalError("pipeline: a command without a result")
        if first.status != psycopg.pq.ExecStatus.PIPELINE_SYNC:
            while await self.sock.result() is not None:
                pass
        return first

    async def outcome(
        self, statement: Statement, name: bytes | None, prepared: Prepared
    ) -> Outcome:
        """Read the results of one statement: the ones before it and its Parse (if any),
        itself, its Sync."""
        import psycopg

        errors: list[psycopg.Error] = []
        for _ in statement.before:
            self._check(await self.group(), errors)
        if name is not None and not self._check(await self.group(), errors):
            prepared.names.pop(statement.text, None)
        result = await self.group()
        if (await self.group()).status != psycopg.pq.ExecStatus.PIPELINE_SYNC:
            raise psycopg.InternalError("pipeline: results out of step")
        at = self.sock.loop.time()
        if not errors and self._check(result, errors):
            return self._rows(result, at)
        if result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == INVALID_STATEMENT_NAME:
            prepared.names.pop(statement.text, None)  # prepared again next time
        return Failed(errors[0], at)

    def _check(self, result: PGresult, errors: list[psycopg.Error]) -> bool:
        import psycopg

        status = psycopg.pq.ExecStatus
        if result.status in (status.TUPLES_OK, status.COMMAND_OK, status.EMPTY_QUERY):
            return True
        if result.status == status.PIPELINE_ABORTED:
            errors.append(psycopg.errors.PipelineAborted("pipeline aborted"))
        else:
            errors.append(psycopg.errors.error_from_result(result, encoding=self.encoding))
        return False

    def _rows(self, result: PGresult, at: float) -> Outcome:
        import psycopg

        tag = (result.command_status or b"").decode()
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            return Rows([], [], tag, at)
        names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
        self.transformer.set_pgresult(result)
        try:
            rows = self.transformer.load_rows(0, result.ntuples, tuple)
        except psycopg.Error as exc:  # a value the loaders cannot read
            return Failed(exc, at)
        return Rows(names, rows, tag, at)
