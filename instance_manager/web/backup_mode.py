"""``/pg/mode/backup``: CNPG's backup mode over HTTP (the session itself: backup/mode.py).

POST ``{"backupName", "immediateCheckpoint", "waitForArchive"}`` opens a session and starts
the backup in the background; PUT ``{"backupName"}`` stops it in the background; GET reports
the phase, the LSNs and, once completed, the backup label and tablespace map (base64).
While a request or a background step holds the session every call answers 422
``ANOTHER_REQUEST_IN_PROGRESS``; ``NO_ONGOING_BACKUP`` is a 400, every other refusal a 422.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from instance_manager.backup.mode import NO_ONGOING_BACKUP, BackupMode, Refused, Session
from instance_manager.web.jsonapi import (
    RequestError,
    data_response,
    error_response,
    json_response,
    read_object,
)

START_FIELDS: dict[str, type] = {
    "immediateCheckpoint": bool,
    "waitForArchive": bool,
    "backupName": str,
}
STOP_FIELDS: dict[str, type] = {"backupName": str}
# The backup's temporary slot is named after it, one character for each (slot_name):
# PostgreSQL's names are 1 to 63 bytes.
MAX_BACKUP_NAME = 63


def result_data(session: Session) -> dict[str, Any]:
    """BackupResultData, with Go's omitempty and []byte as base64."""
    out: dict[str, Any] = {
        "beginLSN": session.begin_lsn,
        "endLSN": session.end_lsn,
        "labelFile": base64.b64encode(session.label_file).decode(),
        "spcmapFile": base64.b64encode(session.spcmap_file).decode(),
        "backupName": session.backup_name,
        "phase": session.phase,
    }
    return {k: v for k, v in out.items() if v}


def backup_name(body: dict[str, Any]) -> str:
    """A start request's backupName; one that cannot name a replication slot is refused."""
    name: str = body.get("backupName", "")
    if not 0 < len(name) <= MAX_BACKUP_NAME:
        raise RequestError(
            400, "FAILED_TO_PARSE_REQUEST", f"backupName must be 1 to {MAX_BACKUP_NAME} characters"
        )
    return name


class BackupModeApi:
    def __init__(self, mode: BackupMode) -> None:
        self.mode = mode

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "POST", "PUT"):
            return error_response(405, "METHOD_NOT_ALLOWED", f"{request.method} not allowed")
        try:
            return await self.mode.exclusive(lambda: self._answer(request))
        except RequestError as exc:
            return exc.response()
        except Refused as exc:
            status = 400 if exc.code == NO_ONGOING_BACKUP else 422
            return error_response(status, exc.code, exc.message)

    async def _answer(self, request: web.Request) -> web.Response:
        if request.method in ("GET", "HEAD"):  # aiohttp sends no body for HEAD
            return self._status()
        if request.method == "POST":
            body = await read_object(request, START_FIELDS)
            session = await self.mode.start(
                backup_name(body),
                body.get("immediateCheckpoint", False),
                body.get("waitForArchive", False),
            )
        else:
            body = await read_object(request, STOP_FIELDS)
            session = await self.mode.stop(body.get("backupName", ""))
        # CNPG answers with the data wrapped twice ({"data": {"data": ...}}); so does this.
        return data_response({"data": result_data(session)})

    def _status(self) -> web.Response:
        session = self.mode.current
        if session is None:
            return data_response({})
        body: dict[str, Any] = {"data": result_data(session)}
        if session.error:
            body["error"] = {"code": "BACKUP_STATUS_CONTAINS_ERROR", "message": session.error}
        return json_response(200, body)
