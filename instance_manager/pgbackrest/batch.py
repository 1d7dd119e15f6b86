"""Archiving in batches through pgBackRest's asynchronous push.

With ``archive-async`` on, an Archive call for a segment that PostgreSQL has marked
``.ready`` does not start a ``pgbackrest archive-push`` of its own. The sidecar runs
``pgbackrest archive-push:async PG_WAL`` (the process pgBackRest's foreground command
would fork), which pushes every ready segment of that pg_wal with ``process-max``
processes and writes a status file per segment into its spool (spool.py). The call for
segment N returns OK only when ``N.ok`` is there: pgBackRest writes it once the segment
is stored. ``N.error`` fails exactly that call, a failed run fails the calls it was
started for, and calls that arrive while a run is going are served by the next run
(or by this one, if their ``.ok`` appears). One :class:`Pusher` per stanza
configuration and pg_wal; at most one run of it at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import grpc

from instance_manager import log
from instance_manager.pgbackrest import spool
from instance_manager.pgbackrest.options import Config, env_name
from instance_manager.pgbackrest.runner import WAL_TIMEOUT, CommandFailed, Runner

_logger = log.get("pgbackrest")
POLL = 0.01  # seconds between looks at the status files while a run is going
LOCK_RETRY = 0.1  # pause before the next run when another process held the archive lock
EXIT_LOCK = 50  # pgBackRest's LockAcquireError: another push of this stanza is running


def _retrieve(future: asyncio.Future[None]) -> None:
    """A failure nobody waits for any more is not an 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


class Pusher:
    """The asynchronous pushes of one stanza configuration from one pg_wal directory."""

    def __init__(self, runner: Runner, config: Config, pg_wal: Path, out: Path) -> None:
        env = {**config.env, env_name("archive-async"): "y"}
        self.config = Config(config.stanza, env, config.create_stanza, config.origin)
        self.runner = runner
        self.pg_wal = pg_wal
        self.out = out
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._waiters: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def push(self, wal: str, timeout: float) -> None:
        """Return once pgBackRest reports ``wal`` stored; CommandFailed if it reports a
        failure or nothing within ``timeout`` seconds."""
        status = spool.stored(self.out, wal)
        if status is not None:
            self._stored(wal, status)
            return
        loop = asyncio.get_running_loop()
        future = self._pending.get(wal)
        if future is None:
            future = self._pending[wal] = loop.create_future()
            future.add_done_callback(_retrieve)
        self._waiters[wal] += 1
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drive())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        except TimeoutError:
            raise spool.timeout_failure(wal, timeout) from None
        finally:
            self._waiters[wal] -= 1
            if self._waiters[wal] <= 0:
                del self._waiters[wal]
                if not future.done() and self._pending.get(wal) is future:
                    del self._pending[wal]  # nobody waits: the next run need not cover it

    def _stored(self, wal: str, status: spool.Status) -> None:
        if status.message:
            log.event(
                _logger, "pgbackrest warning", logging.WARNING, wal=wal, warning=status.message
            )

    async def _drive(self) -> None:
        """Runs while calls wait: one run after the other, each covering the calls
        registered before it started."""
        try:
            while self._pending:
                covered = set(self._pending)
                spool.clear_errors(self.out, sorted(covered))
                retry = await self._run(covered)
                if retry:
                    await asyncio.sleep(LOCK_RETRY)
        except Exception as exc:  # never leave a caller waiting on a dead task
            log.event(_logger, "asynchronous push failed", logging.ERROR, error=str(exc))
            self._fail(set(self._pending), exc)

    async def _run(self, covered: set[str]) -> bool:
        """One ``archive-push:async``; True when it should be tried again (lock busy)."""
        args = [str(self.pg_wal)]
        run = asyncio.ensure_future(self.runner.run(spool.COMMAND, args, self.config, WAL_TIMEOUT))
        while not run.done():
            await asyncio.wait({run}, timeout=POLL)
            self._settle(covered)
        failure = run.exception()
        self._settle(covered)
        left = covered & set(self._pending)
        if not left:
            return False
        if isinstance(failure, CommandFailed) and failure.status == EXIT_LOCK:
            return True  # another pusher (an earlier sidecar's) runs: its .ok files count
        self._fail(left, failure or self._not_pushed(left))
        return False

    def _settle(self, covered: set[str]) -> None:
        """Answer the calls whose status file is there (errors only for ``covered``: an
        older error file of a later call is not this run's)."""
        names = spool.listing(self.out)
        for wal in list(self._pending):
            status = spool.read(self.out, wal, names, errors=wal in covered)
            if status is None:
                continue
            future = self._pending.pop(wal)
            if status.stored:
                self._stored(wal, status)
                future.set_result(None)
            else:
                future.set_exception(status.failure(wal))

    def _fail(self, wals: set[str], exc: BaseException) -> None:
        for wal in wals:
            future = self._pending.pop(wal, None)
            if future is not None and not future.done():
                future.set_exception(exc)

    def _not_pushed(self, wals: set[str]) -> CommandFailed:
        first = min(wals)
        message = f"{first} ({len(wals)} file(s)) not reported pushed; is it still .ready?"
        return CommandFailed(spool.COMMAND, 0, message, grpc.StatusCode.INTERNAL)
