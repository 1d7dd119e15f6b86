"""The daemon's end of the thin client: a Unix socket speaking JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from instance_manager import log
from instance_manager.errors import WalNotFound
from instance_manager.wal.archiver import Archiver
from instance_manager.wal.restorer import Restorer

_logger = log.get("wal")
REQUEST_LIMIT = 65536


class BadRequest(Exception):
    pass


def parse(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError:
        raise BadRequest("request is not JSON") from None
    if not isinstance(request, dict) or request.get("op") not in ("archive", "restore"):
        raise BadRequest("unknown request")
    keys = ("path",) if request["op"] == "archive" else ("name", "dest")
    for key in keys:
        value = request.get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            raise BadRequest(f"missing or invalid {key!r}")
    for key in ("path", "dest"):
        if key in request and not os.path.isabs(request[key]):
            raise BadRequest(f"{key!r} must be an absolute path")
    if request["op"] == "restore" and "/" in request["name"]:
        raise BadRequest("'name' must be a bare WAL file name")
    return request


class WalServer:
    def __init__(self, socket_path: Path, archiver: Archiver, restorer: Restorer) -> None:
        self.socket_path = socket_path
        self.archiver = archiver
        self.restorer = restorer

    async def run(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=REQUEST_LIMIT
        )
        os.chmod(self.socket_path, 0o600)
        log.event(_logger, "WAL socket listening", path=str(self.socket_path))
        try:
            async with server:
                await server.serve_forever()
        finally:
            await self.archiver.close()
            await self.restorer.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self.handle(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away or sent garbage: nothing to answer
        finally:
            writer.close()

    async def handle(self, line: bytes) -> dict[str, Any]:
        started = time.monotonic()
        try:
            request = parse(line)
            if request["op"] == "archive":
                await self.archiver.archive(Path(request["path"]))
            else:
                dest = Path(request["dest"])
                await self.restorer.restore(request["name"], dest, bool(request.get("rewind")))
        except BadRequest as exc:
            return {"ok": False, "code": "error", "error": f"bad request: {exc}"}
        except WalNotFound as exc:
            return {"ok": False, "code": "not_found", "error": str(exc)}
        except Exception as exc:
            log.event(
                _logger,
                "WAL request failed",
                op=_op(line),
                error=str(exc),
                seconds=round(time.monotonic() - started, 3),
            )
            return {"ok": False, "code": "error", "error": str(exc) or type(exc).__name__}
        return {"ok": True}


def _op(line: bytes) -> str:
    try:
        return str(json.loads(line).get("op"))
    except (ValueError, AttributeError):
        return "?"
