"""The daemon's end of the thin client: a Unix socket speaking JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
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
    """A request line of the thin client (see thin.py for the format)."""
    try:
        fields = line.rstrip(b"\n").decode().split("\0")
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    if fields[0] == "archive" and len(fields) == 2:
        request: dict[str, Any] = {"op": "archive", "path": fields[1]}
    elif fields[0] == "restore" and len(fields) == 4 and fields[3] in ("0", "1"):
        request = {
            "op": "restore",
            "name": fields[1],
            "dest": fields[2],
            "rewind": fields[3] == "1",
        }
    else:
        raise BadRequest("unknown request")
    for key in ("path", "dest"):
        if key in request and not os.path.isabs(request[key]):
            raise BadRequest(f"{key!r} must be an absolute path")
    name = request.get("name")
    if name is not None and (not name or "/" in name):
        raise BadRequest("'name' must be a bare WAL file name")
    return request


def encode(reply: dict[str, Any]) -> bytes:
    if reply.get("ok"):
        return b"ok\n"
    message = str(reply.get("error", "failed")).replace("\0", " ").replace("\n", " ")
    return f"error\0{reply.get('code', 'error')}\0{message}\n".encode()


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
            writer.write(encode(reply))
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
    return line.split(b"\0", 1)[0].decode(errors="replace")
