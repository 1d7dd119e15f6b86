"""The two HTTP servers: the status port (probes, operator API) and the local API."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from instance_manager import httpd, log
from instance_manager.errors import describe
from instance_manager.httpd import PAYLOAD_ERRORS, one_line, payload_reason
from instance_manager.web import routes
from instance_manager.web.jsonapi import MAX_JSON_BODY, REASON, RequestError, plain_error
from instance_manager.web.liveness import Liveness
from instance_manager.web.local_api import LocalApi
from instance_manager.web.operator import OperatorApi
from instance_manager.web.probes import Checker

Handler = Callable[[], Awaitable[tuple[int, str]]]
RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI_FILE = Path(__file__).with_name("openapi.json")
_logger = log.get()


def _text(probe: Handler) -> RequestHandler:
    async def handle(_: web.Request) -> web.Response:
        status, body = await probe()
        return web.Response(status=status, text=body)

    return handle


async def _failsafe() -> tuple[int, str]:
    return 200, "OK"


@web.middleware
async def _answer_errors(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    """Bad input is answered 4xx and logged as the client's fault; a bug is a 500.

    A RequestError, or a body aiohttp cannot read, is answered 400/413 (a handler may also
    return its own refusal). Refusals are logged with the path and the reason, at warning
    level at most. Any other exception is a bug in a handler: logged at error level and
    answered 500 ``internal error`` in plain text, never a traceback.
    """
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # the router's 404 and 405
        _log_refusal(request, exc.status, exc.reason)
        raise
    except asyncio.CancelledError:
        raise
    except RequestError as exc:
        response = exc.response()
    except PAYLOAD_ERRORS as exc:
        response = plain_error(400, "cannot read the request body: " + payload_reason(exc))
    except Exception as exc:
        log.event(
            _logger,
            "request failed",
            logging.ERROR,
            path=request.path,
            method=request.method,
            error=describe(exc),
        )
        return plain_error(500, "internal error")
    if 400 <= response.status < 500:
        _log_refusal(request, response.status, response.get(REASON) or response.reason)
    return response


def _log_refusal(request: web.Request, status: int, reason: str) -> None:
    # Malformed input is worth a warning; other refusals (404, 405, 409, ...) are ordinary.
    level = logging.WARNING if status in (400, 413) else logging.DEBUG
    if _logger.isEnabledFor(level):
        log.event(
            _logger,
            "bad request",
            level,
            path=one_line(request.path),
            method=one_line(request.method),
            status=status,
            reason=one_line(reason),
        )


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
    return web.Application(client_max_size=MAX_JSON_BODY, middlewares=[_answer_errors])


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
        app.router.add_get(path, _text(probe))  # and HEAD; 405 with Allow otherwise
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
    sock: socket.socket | None = None,
) -> None:
    """Serve until cancelled; the listener (``sock`` if given) is closed on the way out.

    ListenError when the address cannot be bound (it names the address and the reason).
    """
    runner = httpd.runner(app)
    await runner.setup()
    try:
        await httpd.listen(runner, host, port, ssl_context, sock)
        log.event(_logger, f"{name} listening", host=host or "*", port=port, tls=bool(ssl_context))
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
