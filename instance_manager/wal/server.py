"""The daemon's end of the thin client: a Unix socket, one request line, one reply line,
fields separated by NUL (the format is in thin.py's docstring).

The socket lives alone in a 0700 directory owned by the daemon's account, so only that
account (the one PostgreSQL runs as) can connect. The paths a request names are handed on
to plugin sidecars, which may run as other users: an archive source must resolve inside
``PGDATA/pg_wal`` (following a ``pg_wal`` symlink to a separate WAL volume), and so must a
restore destination: PostgreSQL restores into ``pg_wal/RECOVERYXLOG`` and the like, and
``pg_rewind`` into the target's ``pg_wal``. Anything else is refused. A frame that
ends before its line feed (a client that left mid-request) is not acted on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from instance_manager import log
from instance_manager.errors import WalNotFound
from instance_manager.process.privileges import private_directory
from instance_manager.wal.archiver import Archiver
from instance_manager.wal.restorer import Restorer

_logger = log.get("wal")
REQUEST_LIMIT = 65536


class BadRequest(Exception):
    pass


class PathRefused(BadRequest):
    """A request names a path outside the directories PostgreSQL's WAL commands use."""


def confined(given: str, roots: list[str], what: str, where: str) -> Path:
    """``given`` resolved (symlinks followed), when it lies strictly inside one of ``roots``."""
    real = os.path.realpath(given)
    for root in roots:
        if real.startswith(root.rstrip("/") + "/"):
            return Path(real)
    shown = given if real == given else f"{given} (resolves to {real})"
    raise PathRefused(f"{what} {shown} is outside {where}")


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
    def __init__(
        self, socket_path: Path, archiver: Archiver, restorer: Restorer, pgdata: Path
    ) -> None:
        self.socket_path = socket_path
        self.archiver = archiver
        self.restorer = restorer
        self.pgdata = pgdata

    def archive_source(self, given: str) -> Path:
        """The file to archive: inside PGDATA/pg_wal, wherever pg_wal really is."""
        pg_wal = os.path.realpath(self.pgdata / "pg_wal")
        return confined(given, [pg_wal], "archive source", f"PGDATA/pg_wal ({pg_wal})")

    def restore_destination(self, given: str) -> Path:
        """Where a restored file goes: inside PGDATA/pg_wal, wherever pg_wal really is."""
        pg_wal = os.path.realpath(self.pgdata / "pg_wal")
        return confined(given, [pg_wal], "restore destination", f"PGDATA/pg_wal ({pg_wal})")

    async def run(self) -> None:
        private_directory(self.socket_path.parent)
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
            if not line.endswith(b"\n"):
                return  # the client left mid-request: what arrived is not a request
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
                await self.archiver.archive(self.archive_source(request["path"]))
            else:
                dest = self.restore_destination(request["dest"])
                await self.restorer.restore(request["name"], dest, bool(request.get("rewind")))
        except PathRefused as exc:
            log.event(_logger, "WAL request refused", logging.WARNING, op=_op(line), error=str(exc))
            return {"ok": False, "code": "error", "error": f"refused: {exc}"}
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
