"""Composition root: builds the components and runs them in one TaskGroup.

Start-up order is chosen for speed: the status port is bound and the log pipes and the
postmaster start first, with nothing imported that this does not need. Until the web stack
(aiohttp, psycopg: 150-300 ms of imports) is imported, in a worker thread once PostgreSQL
is ready, the start-up responder (web/early.py) answers the probes on the status port;
then the full status server takes that socket over. Shutdown is an explicit sequence owned
by the lifecycle (not ready -> checkpoint -> smart -> fast -> immediate); only after
PostgreSQL has stopped are the servers and the other components cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instance_manager import config_watch, log
from instance_manager.cluster_model import Cluster
from instance_manager.errors import EXIT_FAILURE, EXIT_OK, InstanceManagerError, describe
from instance_manager.postgres import config
from instance_manager.postgres.lifecycle import Lifecycle
from instance_manager.postgres.logpipe import LogPipes
from instance_manager.process import preload
from instance_manager.process.reaper import Reaper
from instance_manager.process.signals import Signals
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.wal.archiver import Archiver
from instance_manager.wal.backend import PluginBackend
from instance_manager.wal.restorer import Restorer
from instance_manager.wal.server import WalServer
from instance_manager.web import early

if TYPE_CHECKING:
    from instance_manager.cluster.reconciler import Reconciler
    from instance_manager.cluster.source import ClusterSource
    from instance_manager.kube.start import Found
    from instance_manager.web.service import WebServices

_logger = log.get()
METRICS_START_WAIT = 5.0
METRICS_START_DELAY = 0.5
# Imported in a worker thread once PostgreSQL is ready (process/preload.py), or at most
# PRELOAD_WAIT s after its launch.
PRELOAD = ("instance_manager.web.service", "instance_manager.process.watch")
PRELOAD_WAIT = 2.0
# Kubernetes mode: the primary Lease's release at the exit gets this long.
LEASE_RELEASE_TIMEOUT = 5.0


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings],
        signals: Signals,
        config_file: Path | None = None,
        kube: Found | None = None,
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.state = InstanceState()
        self.signals = signals
        self.pipes = LogPipes(settings.log_dir)
        source = self._source(settings, config_file, kube)
        if kube is not None:
            reload_settings = _with_cluster_of(source, reload_settings)
        self.lifecycle = Lifecycle(settings, self.state, reload_settings, self.pipes.recent)
        self.reaper = Reaper()
        self.wal_server = self._wal_server(settings)
        self.exit_code = EXIT_OK
        self.web: WebServices | None = None
        self._web_built = asyncio.Event()
        self._status_socket: socket.socket | None = None
        # Set by PUT /update: after a clean detach, cli.py re-executes this command line.
        self.reexec_argv: list[str] | None = None
        self.lifecycle.before_stop.append(self._close_web_sessions)
        self.reconciler: Reconciler | None = None
        if source is not None:
            from instance_manager.cluster.reconciler import Reconciler  # cluster mode only

            self.reconciler = Reconciler(
                self.lifecycle, source, reload_settings, self.wal_server.archiver.archive
            )
        self.source = source

    @staticmethod
    def _source(
        settings: Settings, config_file: Path | None, kube: Found | None
    ) -> ClusterSource | None:
        """Kubernetes mode: the API server. Standalone cluster mode (peers in the
        document): the document and the reports beside it. Else None: one instance."""
        if kube is not None:
            from instance_manager.kube.client import Kube
            from instance_manager.kube.source import KubeSource

            return KubeSource(Kube(kube.configuration, kube.target), kube.obj, settings)
        if settings.instance.peers and config_file is not None:
            from instance_manager.cluster.source import FileSource

            return FileSource(config_file)
        return None

    def _wal_server(self, settings: Settings) -> WalServer:
        def cluster() -> Cluster:
            return self.lifecycle.settings.cluster

        def max_parallel() -> int:
            return cluster().spec.wal_max_parallel

        self.wal_backend = PluginBackend(
            settings.instance.pluginSocketDir,
            cluster,
            settings.pgdata,
            lambda: self.lifecycle.settings.instance.pluginTimeout,
        )
        archiver = Archiver(
            self.wal_backend,
            settings.archive_spool,
            max_parallel,
            self.state.wal,
            inflight=settings.archive_inflight,
        )
        restorer = Restorer(
            self.wal_backend,
            settings.restore_spool,
            max_parallel,
            lambda: self.state.wal_segment_size,
            self.state.wal,
        )
        return WalServer(config.wal_socket(settings), archiver, restorer, settings.pgdata)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        reload = (
            self.lifecycle.request_reload
            if self.reconciler is None
            else self.reconciler.document_changed
        )
        self.signals.attach(loop, self.lifecycle.request_stop, reload)
        self.pipes.prepare()
        self.wal_server.archiver.prepare()
        self.wal_server.restorer.prepare()
        self._status_socket = self._bind_status_port()
        preloading = preload.start(PRELOAD, after=self._postgres_first())
        try:
            async with asyncio.TaskGroup() as tg:
                background = self._start_background(tg)
                life = tg.create_task(self._run_lifecycle())
                await self._first(self.lifecycle.spawned.wait(), life)
                if not life.done():
                    background += self._start_serving(tg)
                await life
                for task in background:
                    task.cancel()
        finally:
            preloading.cancel()
            self.signals.detach(loop)
            await self._close()
        log.event(_logger, "instance manager stopped", exit_code=self.exit_code)
        return self.exit_code

    def _start_background(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """What runs from the start, before PostgreSQL is launched."""
        background = [
            # stdout is written from a worker thread: the loop never waits on it.
            tg.create_task(self._guard("log writer", log.output().run())),
            tg.create_task(self._guard("reaper", self.reaper.run())),
            tg.create_task(self._guard("log pipes", self.pipes.run())),
            # Serves archive_command until PostgreSQL is down: the archiver drains the
            # ready WAL during the shutdown.
            tg.create_task(self._guard("WAL server", self.wal_server.run())),
        ]
        if self._status_socket is not None:
            early_probes = self._optional("start-up probes", self._early_probes())
            background.append(tg.create_task(early_probes))
        if self.reconciler is not None:  # prepares PGDATA before the first start
            reconciler = self._guard("cluster reconciler", self.reconciler.run())
            background.append(tg.create_task(reconciler))
        return background

    def _start_serving(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """What runs once PostgreSQL is launched: the status and metrics servers, and in
        standalone mode the in-place settings and the settings file's watch (in cluster
        mode the reconciler watches the document itself)."""
        serving = [
            tg.create_task(self._guard("status server", self._web())),
            tg.create_task(self._optional("metrics", self._metrics())),
        ]
        if self.reconciler is None:
            serving.append(tg.create_task(self._in_place()))
            if self.config_file is not None:
                watcher = config_watch.watch(self.config_file, self.lifecycle.request_reload)
                serving.append(tg.create_task(self._guard("settings watch", watcher)))
        return serving

    async def _close(self) -> None:
        """After the lifecycle: the plugin channels, the primary Lease, the status port."""
        await self.wal_backend.close()
        if self.source is not None:
            await self._release_primary()
            await self.source.close()
        if self._status_socket is not None:
            self._status_socket.close()

    async def _release_primary(self) -> None:
        """On the way out, PostgreSQL down and its WAL archived: the primary Lease, so that a
        standby promotes without waiting for it to expire. Not on a detach (PUT /update):
        PostgreSQL keeps running, and the next daemon adopts the lease."""
        assert self.source is not None
        if self.lifecycle.detach_requested.is_set() or self.state.postmaster_running:
            return
        try:
            async with asyncio.timeout(LEASE_RELEASE_TIMEOUT):
                await self.source.release_primary()
        except TimeoutError:
            log.event(_logger, "the primary Lease was not released in time", logging.WARNING)

    @staticmethod
    async def _first(event_wait: Coroutine[Any, Any, Any], task: asyncio.Task[None]) -> None:
        waiter = asyncio.ensure_future(event_wait)
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _run_lifecycle(self) -> None:
        try:
            await self.lifecycle.run()
        except InstanceManagerError as exc:
            log.event(_logger, "instance manager failed", logging.ERROR, error=str(exc))
            self.exit_code = exc.exit_code
        except Exception as exc:
            _logger.exception("lifecycle crashed", exc_info=exc)
            self.exit_code = EXIT_FAILURE

    async def _guard(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """A component failure stops the instance cleanly instead of orphaning PostgreSQL."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.event(_logger, f"{name} failed; stopping", logging.ERROR, error=describe(exc))
            self.exit_code = EXIT_FAILURE
            self.lifecycle.request_stop_once()

    async def _in_place(self) -> None:
        """Without peers: pending restarts in place, the local cache and conditions."""
        await preload.wait()  # its imports would hold the loop while PostgreSQL starts
        from instance_manager.cluster.inplace import InPlace

        await self._optional("in-place restarts", InPlace(self.lifecycle).run())

    async def _optional(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """A component PostgreSQL does not need: its failure is logged, nothing stops."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.event(
                _logger,
                f"{name} failed; PostgreSQL keeps running",
                logging.ERROR,
                error=describe(exc),
            )

    async def _metrics(self) -> None:
        # Not on the start-up path: its ~40 ms import would hold up the first probes, so it
        # starts a moment after the status server listens (scrapes come every 10-30 s).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(METRICS_START_WAIT):
                await self._web_built.wait()
                assert self.web is not None
                await self.web.ready.wait()
        await asyncio.sleep(METRICS_START_DELAY)
        from instance_manager.metrics.server import MetricsServer

        server = MetricsServer(
            lambda: self.lifecycle.settings, self.state, self.wal_backend.registry
        )
        await server.run()

    def _bind_status_port(self) -> socket.socket | None:
        """The status port, bound before PostgreSQL's launch for the start-up probes; None
        with TLS (the full server binds it) or when it cannot be bound (the full server
        then fails to listen, naming the reason)."""
        inst = self.settings.instance
        if inst.statusPortTLS:
            return None
        try:
            return early.listen(inst.statusHost, inst.statusPort)
        except OSError:
            return None

    async def _early_probes(self) -> None:
        """The probes until the full status server accepts on the same socket."""

        async def handed_over() -> None:
            await self._web_built.wait()
            assert self.web is not None
            await self.web.ready.wait()

        assert self._status_socket is not None
        probes = early.EarlyProbes(lambda: self.lifecycle.settings, self.state)
        await probes.serve(self._status_socket, handed_over())

    async def _postgres_first(self) -> None:
        """Until a postmaster being launched is ready (at most PRELOAD_WAIT s): PostgreSQL
        gets the CPUs first, and the loop notices its readiness at once. Initdb, a join or
        a restore (no postmaster yet) take long: the web stack is wanted meanwhile."""
        await self.lifecycle.spawned.wait()
        if self.lifecycle.pm is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRELOAD_WAIT):
                    await self.lifecycle.ready.wait()

    async def _web(self) -> None:
        # 150-300 ms of imports (aiohttp, psycopg) in a worker thread, after PostgreSQL's
        # start: meanwhile the start-up probes answer.
        await preload.wait()
        from instance_manager.web.service import WebServices

        self.web = WebServices(
            lambda: self.lifecycle.settings,
            self.state,
            self.lifecycle.session,
            archive=self.wal_server.archiver.archive,
            request_reexec=self.request_reexec,
            argv=list(sys.argv),
            status_socket=self._status_socket,
        )
        self._web_built.set()
        await self.web.run()

    async def _close_web_sessions(self) -> None:
        if self.web is not None:
            await self.web.close()

    async def request_reexec(self, argv: list[str]) -> None:
        """PUT /update: leave PostgreSQL running, stop everything else, re-execute ``argv``.

        Checked before anything stops, so that a refusal leaves this version serving (the
        web layer answers 500). Returns once scheduled: the lifecycle detaches from the
        postmaster, run() returns, and cli.py executes ``argv`` in this same process.
        """
        if not os.access(argv[0], os.X_OK):
            raise OSError(f"{argv[0]} is not executable")
        if len(argv) > 1 and not os.access(argv[1], os.R_OK):
            raise OSError(f"{argv[1]} does not exist")
        pm = self.lifecycle.pm
        if pm is None or not pm.running or self.lifecycle.stop_requested.is_set():
            raise RuntimeError("PostgreSQL is not running under this instance manager")
        self.reexec_argv = list(argv)
        self.lifecycle.request_detach()


def _with_cluster_of(
    source: ClusterSource | None, load: Callable[[], Settings]
) -> Callable[[], Settings]:
    """Kubernetes mode's settings: the instance's own options, the API server's Cluster."""
    from instance_manager.kube.source import KubeSource

    assert isinstance(source, KubeSource)

    def reload() -> Settings:
        return dataclasses.replace(load(), cluster=source.cluster())

    return reload
