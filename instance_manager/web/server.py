"""The two HTTP servers: the status port (probes, operator API) and the local API."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from instance_manager import log
from instance_manager.web import routes
from instance_manager.web.jsonapi import MAX_JSON_BODY, plain_error
from instance_manager.web.liveness import Liveness
from instance_manager.web.local_api import LocalApi
from instance_manager.web.operator import OperatorApi
from instance_manager.web.probes import Checker

Handler = Callable[[], Awaitable[tuple[int, str]]]
RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI_FILE = Path(__file__).with_name("openapi.json")
# On the way out, requests still running get this long to finish (aiohttp's default, 60 s,
# would hold the daemon's exit back behind a slow client).
SHUTDOWN_TIMEOUT = 2.0
_logger = log.get()


def _text(probe: Handler) -> RequestHandler:
    async def handle(_: web.Request) -> web.Response:
        status, body = await probe()
        return web.Response(status=status, text=body)

    return handle


async def _failsafe() -> tuple[int, str]:
    return 200, "OK"


@web.middleware
async def _unexpected_errors(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    """A bug in a handler is logged and answered 500 in plain text, never a traceback."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.event(
            _logger,
            "request failed",
            logging.ERROR,
            path=request.path,
            method=request.method,
            error=repr(exc),
        )
        return plain_error(500, "internal error")


class OpenApiDocument:
    """``/openapi.json``: the document kept beside this module, read once."""

    def __init__(self, path: Path = OPENAPI_FILE) -> None:
        self.path = path
        self._body: bytes | None = None

    async def handle(self, _request: web.Request) -> web.Response:
        if self._body is None:
            try:
                self._body = await asyncio.to_thread(self.path.read_bytes)
            except OSError:
                return plain_error(404, "no OpenAPI document in this build")
        return web.Response(body=self._body, content_type="application/json")


def _application() -> web.Application:
    # client_max_size bounds request.read()/json(); our handlers read with their own limits.
    return web.Application(client_max_size=MAX_JSON_BODY, middlewares=[_unexpected_errors])


def build_app(
    checker: Checker, liveness: Liveness, operator: OperatorApi | None = None
) -> web.Application:
    app = _application()
    for path, probe in (
        (routes.STARTUP, checker.startup),
        (routes.READINESS, checker.readiness),
        (routes.LIVENESS, liveness.check),
        (routes.FAILSAFE, _failsafe),
    ):
        app.router.add_route("*", path, _text(probe))
    if operator is not None:
        operator.add_routes(app)
    app.router.add_get(routes.OPENAPI, OpenApiDocument().handle)
    return app


def build_local_app(local: LocalApi) -> web.Application:
    app = _application()
    local.add_routes(app)
    app.router.add_get(routes.OPENAPI, OpenApiDocument().handle)
    return app


async def serve(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    name: str = "status server",
    started: asyncio.Event | None = None,
) -> None:
    """Serve until cancelled; the listener is closed on the way out."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or None, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        log.event(_logger, f"{name} listening", host=host or "*", port=port, tls=bool(ssl_context))
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
