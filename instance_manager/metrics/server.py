"""The metrics server: ``GET /metrics`` on the metrics port (9187), optionally over TLS.

One component for the supervisor's TaskGroup: ``run()`` serves until cancelled, watches
the custom-query files (reloading them at once) and, with TLS, the server certificate
(re-read when it is rotated); everything is closed in ``finally``. A failure (the port is
taken, the certificate cannot be read, a watcher crashes) is logged and the server starts
again RESTART_SECONDS later: PostgreSQL does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from instance_manager import httpd, log
from instance_manager.metrics import METRICS_PATH
from instance_manager.metrics.collector import Collector
from instance_manager.metrics.connections import Connector
from instance_manager.metrics.exposition import CONTENT_TYPE
from instance_manager.metrics.source import watch
from instance_manager.settings import Settings
from instance_manager.state import InstanceState

if TYPE_CHECKING:
    import ssl

    from instance_manager.plugins.registry import Registry

_logger = log.get("metrics")
CERT_RECHECK = 30.0  # seconds between checks of the certificate files, with TLS
SCRAPE_MARGIN = 0.5  # seconds kept from the scraper's timeout for rendering and sending
RESTART_SECONDS = 5.0  # after a failure, as the local API waits before binding again


class MetricsServer:
    def __init__(
        self,
        settings: Callable[[], Settings],
        state: InstanceState,
        plugins: Callable[[], Registry | None],
        *,
        connector: Connector | None = None,
    ) -> None:
        self.settings = settings
        self.collector = Collector(settings, state, plugins, connector)
        self.port: int | None = None  # the bound port once listening (0 asks the OS for one)

    async def handle(self, request: web.Request) -> web.Response:
        body = await self.collector.scrape(_budget(request))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def pause(self) -> None:
        """Drop our PostgreSQL sessions now (a smart shutdown waits for every session).

        Call it once ``state.stopping`` or ``state.might_be_unavailable`` is set: the
        server does the same by itself within GUARD_INTERVAL (0.1 s) of that, and opens
        sessions again when both are false; calling this saves the delay.
        """
        await self.collector.pause()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(METRICS_PATH, self.handle)
        return app

    async def run(self) -> None:
        """Serve until cancelled, starting again after each failure."""
        while True:
            try:
                await self._serve()
            except Exception as exc:
                text = " ".join(str(exc).split()) or type(exc).__name__
                log.event(
                    _logger,
                    "metrics server failed; restarting",
                    logging.ERROR,
                    error=text,
                    seconds=RESTART_SECONDS,
                )
            await asyncio.sleep(RESTART_SECONDS)

    async def _serve(self) -> None:
        s = self.settings()
        runner = httpd.runner(self.app())
        await runner.setup()
        tasks: list[asyncio.Task[None]] = []
        try:
            tls = await self._tls(s) if s.instance.metricsPortTLS else None
            host, port = s.instance.statusHost, s.instance.metricsPort
            self.port = await httpd.listen(runner, host, port, tls)  # ListenError says why not
            log.event(
                _logger, "metrics server listening", host=host or "*", port=self.port, tls=bool(tls)
            )
            tasks.append(asyncio.create_task(watch(self.collector.source, self.settings)))
            tasks.append(asyncio.create_task(self.collector.guard()))
            if tls is not None:
                tasks.append(asyncio.create_task(self._watch_certificates(s, tls)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
            await self.collector.close()

    @staticmethod
    def _files(s: Settings) -> tuple[Path, Path]:
        return s.certificates_dir / "server.crt", s.certificates_dir / "server.key"

    async def _tls(self, s: Settings) -> ssl.SSLContext:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        await asyncio.to_thread(context.load_cert_chain, *self._files(s))
        return context

    async def _watch_certificates(self, s: Settings, context: ssl.SSLContext) -> None:
        """Load a rotated certificate into the live context (new connections use it)."""
        last = await asyncio.to_thread(_stamp, self._files(s))
        while True:
            await asyncio.sleep(CERT_RECHECK)
            now = await asyncio.to_thread(_stamp, self._files(s))
            if now == last:
                continue
            try:
                await asyncio.to_thread(context.load_cert_chain, *self._files(s))
            except (OSError, ValueError) as exc:
                log.event(
                    _logger, "metrics certificate not reloaded", logging.ERROR, error=str(exc)
                )
                continue
            last = now
            log.event(_logger, "metrics certificate reloaded")


def _budget(request: web.Request) -> float | None:
    """Prometheus says how long it waits: answer a little before that."""
    try:
        return float(request.headers["X-Prometheus-Scrape-Timeout-Seconds"]) - SCRAPE_MARGIN
    except (KeyError, ValueError):
        return None


def _stamp(files: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in files:
        try:
            st = path.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)
