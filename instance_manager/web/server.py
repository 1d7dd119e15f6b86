"""The status server on port 8000: probes now, operator endpoints later."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from instance_manager import log
from instance_manager.web import routes
from instance_manager.web.liveness import Liveness
from instance_manager.web.probes import Checker

Handler = Callable[[], Awaitable[tuple[int, str]]]
_logger = log.get()


def _text(probe: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_: web.Request) -> web.Response:
        status, body = await probe()
        return web.Response(status=status, text=body)

    return handle


async def _failsafe() -> tuple[int, str]:
    return 200, "OK"


def build_app(checker: Checker, liveness: Liveness) -> web.Application:
    app = web.Application()
    for path, probe in (
        (routes.STARTUP, checker.startup),
        (routes.READINESS, checker.readiness),
        (routes.LIVENESS, liveness.check),
        (routes.FAILSAFE, _failsafe),
    ):
        app.router.add_route("*", path, _text(probe))
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until cancelled; the listener is closed on the way out."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or None, port, reuse_address=True)
        await site.start()
        log.event(_logger, "status server listening", host=host or "*", port=port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
