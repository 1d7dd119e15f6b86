"""The postmaster lifecycle loop: one iteration per postmaster lifetime.

Each iteration prepares PGDATA (in cluster mode first ``prepare_data``: join, rewind,
standby files; then initdb on first start, configuration files, WAL space), starts or
adopts the postmaster, then waits for whichever comes first: the postmaster's exit, a
stop request, a reload request, the retry of a reload that failed (reload.py), or a role
command (promote; the switchover stop, after which the next iteration starts PostgreSQL
again through ``prepare_data``).
An unexpected exit either ends the loop with an error (the container restarts, CNPG's
behaviour) or restarts PostgreSQL in place after a growing back-off (standalone mode).
Any other failure stops a postmaster that still runs, staged as for SIGTERM, before the
error leaves ``run()``: the daemon never exits leaving PostgreSQL unwatched.

The steps live beside this loop: the start sequence in startup.py, the stop sequences in
stopping.py, the role commands in commands.py, applying a configuration in reload.py.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from instance_manager import log
from instance_manager.cluster_model import Cluster
from instance_manager.errors import PostmasterExited, SettingsError
from instance_manager.postgres import fencing, postmaster, shutdown, startup, stopping, waits
from instance_manager.postgres import sql as pgsql
from instance_manager.postgres.commands import FENCE, PROMOTE, SWITCHOVER, Commands
from instance_manager.postgres.postmaster import Postmaster
from instance_manager.postgres.reload import Reloader, reloaded
from instance_manager.postgres.stopping import Stopper
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

_logger = log.get()
# A postmaster that ran this long before dying resets the restart back-off.
STABLE_RUN_SECONDS = 60.0
LAST_LINES = 20


class Lifecycle:
    """Owns the postmaster. Commands arrive through request_stop/request_reload and the
    role commands promote/switchover_stop (the cluster reconciler sends those)."""

    def __init__(
        self,
        settings: Settings,
        state: InstanceState,
        reload_settings: Callable[[], Settings],
        recent_logs: Callable[[], list[str]] = list,
    ) -> None:
        self.settings = settings
        self.state = state
        self._reload_settings = reload_settings
        self._recent_logs = recent_logs
        self._stderr: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self.session = pgsql.Session(settings)
        self.stop_requested = asyncio.Event()
        self.stop_requested_at: float | None = None  # time.monotonic(): stopDelay counts from it
        self.escalate = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._new_settings: Settings | None = None  # given with request_reload
        # Cluster mode: run before each start (join, rewind, standby files), and the
        # standby's override.conf settings (primary_conninfo, primary_slot_name...).
        self.prepare_data: Callable[[], Awaitable[None]] | None = None
        self.recovery_settings: Callable[[], Mapping[str, str]] = dict
        # Cluster mode: custom.conf settings of the cluster (synchronous_standby_names).
        self.managed_parameters: Callable[[], dict[str, str]] = dict
        # Online upgrade: stop supervising and leave the postmaster running.
        self.detach_requested = asyncio.Event()
        # Run before PostgreSQL is stopped: sessions of other components (a backup).
        self.before_stop: list[Callable[[], Awaitable[None]]] = []
        settings_now = self._settings_now
        self._stopper = Stopper(settings_now, state, self.session, self.escalate, self.before_stop)
        # Role commands (promote, switchover stop, fence), carried out while supervised.
        self._commands = Commands(settings_now, state, self._stopper)
        self.spawned = asyncio.Event()  # initdb or the first postmaster has started
        self.ready = asyncio.Event()  # a postmaster has accepted connections
        self.pm: Postmaster | None = None
        self.stopped_by: shutdown.Stage | None = None
        self.reloader = Reloader(state)
        self.fence = fencing.Fence(state)
        self._tasks: set[asyncio.Task[None]] = set()  # keeps fire-and-forget tasks alive
        self._data_checksums = False  # from pg_control; decides if wal_log_hints may be off

    def _settings_now(self) -> Settings:
        """The settings in force: a reload or a new Cluster replaces ``self.settings``."""
        return self.settings

    # -- commands (signal handlers call these; they only set events) --
    def request_stop(self) -> None:
        """SIGTERM: the first request stops, each further one escalates one stage."""
        if self.stop_requested.is_set():
            self.escalate.set()
        else:
            self.request_stop_once()

    def request_stop_once(self) -> None:
        """Stop, but never escalate a stop already under way (a component failed)."""
        if not self.stop_requested.is_set():
            self.stop_requested_at = time.monotonic()
            self.stop_requested.set()

    def request_reload(self, new: Settings | None = None) -> None:
        """Apply the settings file again, or ``new`` (already loaded by the reconciler)."""
        self._new_settings = new
        self.reload_requested.set()

    def use_cluster(self, cluster: Cluster) -> None:
        """A new version of the Cluster whose spec and metadata are the running ones (its
        status changed): readers of the settings see it; nothing is applied."""
        self.settings = dataclasses.replace(self.settings, cluster=cluster)

    async def promote(self) -> None:
        """Command: promote the running standby; returns once it runs as a primary."""
        await self._commands.send(PROMOTE)

    async def switchover_stop(self) -> None:
        """Command: stop this former primary fast, then immediate; PostgreSQL starts again
        only through ``prepare_data`` (which rejoins it as a standby). Returns once down."""
        await self._commands.send(SWITCHOVER)

    async def fence_on(self, reason: str) -> None:
        """Command: fence for ``reason``; a running PostgreSQL is stopped (fast, then
        immediate) and none starts while a reason remains. Returns once it is down."""
        if self.fence.add(reason) and self.state.postmaster_running:
            await self._commands.send(FENCE)

    def fence_off(self, reason: str) -> None:
        """Lift ``reason``; with none left the lifecycle starts PostgreSQL again."""
        self.fence.remove(reason)

    def request_detach(self) -> None:
        self.detach_requested.set()

    # -- the loop --
    async def run(self) -> None:
        """Supervise until stopped. If anything fails, a postmaster still running is stopped
        (staged, as for SIGTERM) before the error propagates: never left unwatched."""
        try:
            await self._loop()
        except Exception as exc:
            pm = None if self.detach_requested.is_set() else self._postmaster_to_stop()
            if pm is not None:
                log.event(
                    _logger,
                    "stopping PostgreSQL after a failure",
                    logging.ERROR,
                    pid=pm.pid,
                    error=" ".join(str(exc).split()) or type(exc).__name__,
                )
                await self._shutdown(pm)
            raise

    def _postmaster_to_stop(self) -> Postmaster | None:
        return stopping.postmaster_to_stop(self.pm, self.settings)

    async def _loop(self) -> None:
        backoff = 1.0
        while not self.stop_requested.is_set():
            try:
                started = await self._until_stop(self._start())
            except PostmasterExited as exc:  # died while starting
                if self.pm is None:
                    raise
                pm, reason = self.pm, exc.status
            else:
                if started is None:  # stop requested before PostgreSQL was ready
                    return
                pm = started
                reason = await self._supervise(pm)
                if reason == "stop":
                    await self._shutdown(pm)
                    return
                if reason == "detach":
                    await self._stopper.detach(pm)
                    return
                if reason == "switchover":
                    continue
            ran_for = time.monotonic() - pm.started_at
            self._report_exit(pm, reason)
            if self.settings.on_postmaster_exit == "exit":
                raise PostmasterExited(pm.pid, reason)
            backoff = 1.0 if ran_for > STABLE_RUN_SECONDS else backoff
            log.event(_logger, "restarting PostgreSQL after back-off", seconds=backoff)
            await waits.sleep_unless_set(self.stop_requested, backoff)
            backoff = min(backoff * 2, self.settings.instance.restartBackoffMax)

    async def _until_stop(self, starting: Coroutine[Any, Any, Postmaster]) -> Postmaster | None:
        """Run the start-up, but give up on it if a stop arrives (PostgreSQL is then stopped)."""
        task = asyncio.ensure_future(starting)
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # failed while we were cancelling: nothing to stop
            log.event(_logger, "start-up abandoned", error=str(exc))
        if self.pm is not None and self.pm.running:
            await self._shutdown(self.pm)
        return None

    async def _start(self) -> Postmaster:
        while self.prepare_data is not None:
            self.spawned.set()  # a join takes long: the status server shows its progress
            await self._stop_left_running()
            await self.fence.wait_lifted()
            await self.prepare_data()
            if not self.state.fenced:
                break
        s = self.settings
        self._data_checksums = await startup.prepare_pgdata(
            s, self.state, self.spawned, self.recovery_settings, self.managed_parameters
        )
        self._stderr.clear()
        pm = await postmaster.start(s, self._stderr.append)
        self.pm = pm
        self.state.postmaster_pid = pm.pid
        self.state.postmaster_starts += 1
        self.spawned.set()
        await startup.wait_ready(s, self.state, pm)
        self.session.reopen()
        self.state.postmaster_running = True
        self.ready.set()
        self.state.might_be_unavailable = False  # after a switchover stop, say
        after = startup.after_start(
            pm, self._settings_now, self.state, self.session, self.reloader, self.stop_requested
        )
        task = asyncio.get_running_loop().create_task(after)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pm

    async def _stop_left_running(self) -> None:
        """Fenced, yet a postmaster serves PGDATA (left by a daemon that died): stop it."""
        if not self.state.fenced:
            return
        pm = self._postmaster_to_stop()  # a Postmaster belongs to the loop: not in a thread
        if pm is not None:
            await self._stopper.stop_left_running(pm)

    async def _supervise(self, pm: Postmaster) -> str:
        """Returns 'stop', 'detach', or how the postmaster ended. Meanwhile applies reloads
        and retries a failed one when it is due."""
        # Fenced while it was starting (fence_on sent no command then): stop it now.
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.state.fenced and await self._commands.carry_out(pm, FENCE, answer):
            return "switchover"
        while True:
            self.reloader.scheduled.clear()
            exit_task = asyncio.ensure_future(pm.wait())
            stop = asyncio.ensure_future(self.stop_requested.wait())
            reload = asyncio.ensure_future(self.reload_requested.wait())
            detach = asyncio.ensure_future(self.detach_requested.wait())
            retry = asyncio.ensure_future(self.reloader.scheduled.wait())
            command = asyncio.ensure_future(self._commands.next())
            done, pending = await asyncio.wait(
                {exit_task, stop, reload, detach, retry, command},
                timeout=self.reloader.retry_in(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
            if command in done and (stop in done or exit_task in done):
                self._commands.refuse(command.result(), RuntimeError("PostgreSQL is stopping"))
            elif command in done:
                if await self._commands.carry_out(pm, *command.result()):
                    return "switchover"
                continue
            if stop in done:
                return "stop"
            if detach in done:
                return "detach"
            if exit_task in done:
                self.state.postmaster_running = False
                return exit_task.result()
            if reload in done:
                self.reload_requested.clear()
                await waits.unless_set(self.stop_requested, self._reload(pm))
            elif not done:  # a failed reload is due for another attempt
                await waits.unless_set(self.stop_requested, self._apply(pm))

    async def _apply(self, pm: Postmaster) -> None:
        recovery, managed = self.recovery_settings(), self.managed_parameters()
        await self.reloader.apply(self.settings, pm, self._data_checksums, recovery, managed)

    async def _reload(self, pm: Postmaster) -> None:
        try:
            new, self._new_settings = self._new_settings or self._reload_settings(), None
        except SettingsError as exc:
            log.event(
                _logger,
                "new settings refused; keeping the running ones",
                logging.ERROR,
                error=str(exc),
            )
            return
        self.settings = reloaded(self.settings, new)
        await self._apply(pm)

    def _report_exit(self, pm: Postmaster, reason: str) -> None:
        self.state.postmaster_running = False
        self.state.last_postmaster_exit = reason
        last = [*self._stderr, *self._recent_logs()][-LAST_LINES:]
        log.event(
            _logger,
            "postmaster exited unexpectedly",
            logging.ERROR,
            pid=pm.pid,
            status=reason,
            last_log_lines=last,
            policy=self.settings.on_postmaster_exit,
        )

    async def _shutdown(self, pm: Postmaster) -> None:
        """The explicit stop sequence (stopping.py): not ready, close sessions, staged stop."""
        started = self.stop_requested_at or time.monotonic()  # stopDelay counts from here
        self.stopped_by = await self._stopper.shutdown(pm, started)
