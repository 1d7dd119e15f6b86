"""``PUT /update``: online upgrade of the instance manager (upgrade/install.py does it).

The request body is the build, streamed to the upgrader. When the re-exec is scheduled the
connection is closed without an answer: CNPG's operator takes exactly that (EOF) as
success, and a 200 as an error. 405 for other methods, 418 while an upgrade runs, 500 on
any failure (the message in plain text).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from instance_manager.httpd import PAYLOAD_ERRORS, payload_reason
from instance_manager.upgrade.install import AlreadyUpgrading, UpdateError, UpdateRefused, Upgrader
from instance_manager.web.jsonapi import plain_error

CHUNK = 1024 * 1024


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body; UpdateRefused when the client cuts it off or frames it wrongly."""
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            yield chunk
    except (*PAYLOAD_ERRORS, ConnectionResetError) as exc:
        reason = payload_reason(exc)
        raise UpdateRefused(f"the build was not received whole: {reason}") from None


class UpdateApi:
    def __init__(self, upgrader: Upgrader) -> None:
        self.upgrader = upgrader

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "PUT":
            return plain_error(405, "wrong method used")
        try:
            await self.upgrader.upgrade(_chunks(request))
        except AlreadyUpgrading as exc:
            return plain_error(418, str(exc))
        except (UpdateError, OSError) as exc:  # OSError: disk full, ...
            return plain_error(500, str(exc) or type(exc).__name__)
        # Scheduled: this process is about to be replaced. No answer, as CNPG (EOF).
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)
