"""The start sequence of one postmaster lifetime, in the order the lifecycle runs it.

1. ``prepare_pgdata``: PGDATA restored from a plugin's backup when the bootstrap asks for
   one, initialised on first start, pg_wal placed on the WAL volume, the WAL space checked,
   the configuration files written;
2. the postmaster is started or adopted (postmaster.py; the lifecycle keeps it at once, so
   that a stop arriving meanwhile finds it);
3. ``wait_ready``: until it accepts connections; a primary whose bootstrap is pending gets
   its roles and application database before it counts as ready;
4. ``after_start``, off the start path: roles and bootstrap completion, a SIGHUP to an
   adopted postmaster (it may run an older configuration), the configuration confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Mapping

from instance_manager import log
from instance_manager.postgres import (
    bootstrap,
    config,
    controldata,
    postmaster,
    recovery,
    roles,
    waldir,
)
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.postmaster import Postmaster
from instance_manager.postgres.reload import Reloader
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

_logger = log.get()


async def prepare_pgdata(
    s: Settings,
    state: InstanceState,
    spawned: asyncio.Event,
    recovery_settings: Callable[[], Mapping[str, str]],
    managed_parameters: Callable[[], dict[str, str]],
) -> bool:
    """Everything before the postmaster starts; returns whether data checksums are on
    (pg_control), which decides if wal_log_hints may be off. ``spawned`` is set before a
    long step (a restore, initdb) so that the status server shows its progress."""
    if s.cluster.spec.bootstrap.recovery is not None and recovery.restore_needed(s):
        from instance_manager.plugins.recovery import call_restore  # gRPC only here

        spawned.set()
        await recovery.restore_from_plugin(s, call_restore)
    if not bootstrap.is_initialised(s.pgdata):
        spawned.set()
        await bootstrap.initdb(s)
    await asyncio.to_thread(waldir.place, s)  # pg_wal onto the WAL volume, if any
    segment, data_checksums = await controldata.check_wal_space(s)
    state.wal_segment_size = segment
    rendered, _ = config.write_all(s, data_checksums, recovery_settings(), managed_parameters())
    state.written_config_hash = rendered.sha256
    return data_checksums


async def wait_ready(s: Settings, state: InstanceState, pm: Postmaster) -> None:
    """Until ``pm`` accepts connections (startDelay at most); then its role, and on a
    primary whose bootstrap is pending, the roles and the application database."""
    started = time.monotonic()
    status = await postmaster.wait_ready(s, pm, float(s.cluster.spec.startDelay))
    log.event(
        _logger,
        "PostgreSQL is accepting connections",
        status=status,
        seconds=round(time.monotonic() - started, 3),
        adopted=pm.adopted,
    )
    state.is_primary = not roles.is_standby(s.pgdata)
    if state.is_primary and bootstrap.bootstrap_pending(s.pgdata):
        # Not ready before the application database exists.
        await bootstrap.ensure_roles(s)
        await bootstrap.finish_bootstrap(s)


async def after_start(
    pm: Postmaster,
    settings: Callable[[], Settings],
    state: InstanceState,
    session: pgsql.Session,
    reloader: Reloader,
    stop_requested: asyncio.Event,
) -> None:
    """Off the start path: the probes' connection (opened by the first query, once
    psycopg is imported), roles, bootstrap completion, configuration confirmation."""
    try:
        row = await session.fetchone("SELECT pg_catalog.pg_is_in_recovery()")
        in_recovery = bool(row and row[0])
        if state.is_primary and not in_recovery:  # not during archive recovery
            await bootstrap.ensure_roles(settings())
            await bootstrap.finish_bootstrap(settings())
    except Exception as exc:
        if pm.running and not stop_requested.is_set():
            log.event(_logger, "post-start tasks failed", logging.ERROR, error=str(exc))
    if not pm.running or stop_requested.is_set():
        return
    if pm.adopted:
        pm.signal(signal.SIGHUP)  # it may run an older configuration
    await reloader.confirm(settings())  # a failure is retried by the lifecycle's supervision
