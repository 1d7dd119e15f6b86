"""Applying the configuration to a running postmaster, and retrying when that fails.

A reload puts the new cluster settings in force (``reloaded``), then applies them.

An application writes the managed files, sends SIGHUP and waits until PostgreSQL reports
the hash of what was written (``cnpg.config_sha256``), then reads which parameters wait for
a restart. Any step may fail while PostgreSQL itself is fine: the files cannot be written
(disk full, a read-only file), every connection slot is taken, the new values are refused.
A failure is logged, kept in the instance state (``/pg/status``, the metrics) and retried
with a growing back-off; PostgreSQL keeps running on what it has.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, LiteralString

from instance_manager import log
from instance_manager.postgres import config
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.postmaster import Postmaster
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

if TYPE_CHECKING:
    from psycopg import AsyncConnection

_logger = log.get()
HASH_CONFIRM_TIMEOUT = 10.0
RETRY_FIRST = 1.0  # seconds before the first retry of a failed application
RETRY_MAX = 30.0  # the back-off doubles up to this
HASH_QUERY = "SELECT current_setting('cnpg.config_sha256', true)"
PENDING_QUERY = (
    "SELECT coalesce(string_agg(name, ',' ORDER BY name), '') "
    "FROM pg_settings WHERE pending_restart"
)


class NotConfirmed(Exception):
    """PostgreSQL did not load the configuration we wrote in time."""


class Reloader:
    """Applies configurations; remembers a failed one and when to try it again."""

    def __init__(self, state: InstanceState) -> None:
        self.state = state
        self._backoff = RETRY_FIRST
        self._retry_at: float | None = None  # time.monotonic() of the next attempt
        # Set whenever a retry is scheduled: the supervision loop then re-reads retry_in().
        self.scheduled = asyncio.Event()

    def retry_in(self) -> float | None:
        """Seconds until the next attempt is due (0 when overdue); None when none is."""
        if self._retry_at is None:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    async def apply(
        self,
        settings: Settings,
        pm: Postmaster,
        data_checksums: bool,
        recovery: Mapping[str, str] | None = None,
        managed: dict[str, str] | None = None,
    ) -> None:
        """Write, SIGHUP, confirm. Never raises: a failure schedules a retry.
        ``recovery``, ``managed``: the cluster layer's override.conf and custom.conf
        settings (config.write_all)."""
        self._retry_at = None
        try:
            rendered, changed = config.write_all(settings, data_checksums, recovery, managed)
            self.state.written_config_hash = rendered.sha256
            log.event(_logger, "configuration reload requested", changed=changed)
            pm.signal(signal.SIGHUP)
            await confirm(settings, self.state)
        except Exception as exc:
            self.failed(exc)
            return
        self._succeeded()

    async def confirm(self, settings: Settings) -> None:
        """Confirm what the start-up wrote. Never raises: a failure schedules a retry."""
        try:
            await confirm(settings, self.state)
        except Exception as exc:
            self.failed(exc)
            return
        self._succeeded()

    def failed(self, exc: BaseException) -> None:
        error = " ".join(str(exc).split()) or type(exc).__name__
        self.state.reload_failed(error)
        self._retry_at = time.monotonic() + self._backoff
        log.event(
            _logger,
            "configuration reload failed; retrying",
            logging.ERROR,
            error=error,
            retry_in=self._backoff,
            failures=self.state.reload_failures,
        )
        self._backoff = min(self._backoff * 2, RETRY_MAX)
        self.scheduled.set()

    def _succeeded(self) -> None:
        self._backoff = RETRY_FIRST
        self._retry_at = None
        self.state.reload_succeeded()


def reloaded(current: Settings, new: Settings) -> Settings:
    """What a reload puts in force: ``new``'s cluster. The instance options, the Kubernetes
    settings and pg_bin stay those the instance manager started with (a warning says when
    the instance options changed)."""
    if new.instance != current.instance:
        log.event(
            _logger,
            "instance options changed: they apply at the next start of the instance manager",
            logging.WARNING,
        )
    return Settings(
        cluster=new.cluster,
        instance=current.instance,
        kubernetes=current.kubernetes,
        pg_bin=current.pg_bin,
    )


async def confirm(settings: Settings, state: InstanceState) -> None:
    """Wait until PostgreSQL reports the hash we wrote; then read pending restarts.

    On a connection of its own: the probes' session must not queue behind this.
    """
    want = state.written_config_hash
    loaded = ""
    conn = await pgsql.connect(settings)
    async with conn:
        try:
            async with asyncio.timeout(HASH_CONFIRM_TIMEOUT):
                # PostgreSQL has no "reload done" notification: ask until it says so.
                while (loaded := await _fetch_text(conn, HASH_QUERY)) != want:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        except TimeoutError:
            state.loaded_config_hash = loaded
            raise NotConfirmed(
                f"PostgreSQL did not load configuration {want[:12]} within "
                f"{HASH_CONFIRM_TIMEOUT:g} s (loaded: {loaded[:12] or 'none'})"
            ) from None
        pending = tuple((await _fetch_text(conn, PENDING_QUERY)).split(","))
    state.loaded_config_hash = loaded
    state.pending_restart = tuple(p for p in pending if p)
    if state.pending_restart:
        log.event(
            _logger,
            "configuration applied; some parameters need a restart",
            logging.WARNING,
            pending_restart=list(state.pending_restart),
            config_sha256=loaded,
        )
    else:
        log.event(_logger, "configuration applied", config_sha256=loaded)


async def _fetch_text(conn: AsyncConnection[Any], query: LiteralString) -> str:
    row = await (await conn.execute(query)).fetchone()
    return "" if row is None or row[0] is None else str(row[0])
