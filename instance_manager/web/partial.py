"""``/pg/archive/partial``: archive the current REDO segment as ``<segment>.partial``
(wal/partial.py does it).

200 ``{"data": "<segment>"}``; a refusal is a 400 with CNPG's envelope and code, except a
pg_controldata failure: 500 in plain text, as CNPG answers.
"""

from __future__ import annotations

from aiohttp import web

from instance_manager.wal.partial import ControlDataUnreadable, PartialArchiver, PartialRefused
from instance_manager.web.jsonapi import data_response, error_response, plain_error


class ArchivePartial:
    def __init__(self, archiver: PartialArchiver) -> None:
        self.archiver = archiver

    async def handle(self, _request: web.Request) -> web.Response:
        try:
            segment = await self.archiver.archive_partial()
        except PartialRefused as exc:
            return error_response(400, exc.code, exc.message)
        except ControlDataUnreadable as exc:
            return plain_error(500, str(exc))
        return data_response(segment)
