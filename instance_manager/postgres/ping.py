"""``SELECT 1`` over PostgreSQL's Unix socket, speaking the wire protocol directly.

The probes' answer while the daemon starts, before psycopg is imported: a new connection
as ``postgres`` (the daemon's own account, admitted by pg_hba's local rule), the query,
Terminate. The outcome is read as the probes read psycopg's: ready for queries and the
query ran (``OK``); refused because the server starts or stops, SQLSTATE 57P03
(``REJECT``); anything else, a password request included (``NO_RESPONSE``).
"""

from __future__ import annotations

import asyncio
import enum
import struct

from instance_manager.postgres.sql import APPLICATION_NAME
from instance_manager.settings import Settings

PROTOCOL_3 = 196608
CANNOT_CONNECT_NOW = "57P03"
_HEADER = struct.Struct("!cI")


class Ping(enum.Enum):
    OK = 0
    REJECT = 1  # pg_isready exit code 1
    NO_RESPONSE = 2  # pg_isready exit code 2


def socket_path(settings: Settings) -> str:
    return str(settings.run_dir / f".s.PGSQL.{settings.instance.port}")


def _startup_packet() -> bytes:
    params = {"user": "postgres", "database": "postgres", "application_name": APPLICATION_NAME}
    body = struct.pack("!I", PROTOCOL_3)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _query(text: str) -> bytes:
    body = text.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


def _error_fields(payload: bytes) -> dict[str, str]:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


async def _until_ready(reader: asyncio.StreamReader) -> tuple[Ping, str]:
    """Messages until ReadyForQuery ('Z') or an error ('E')."""
    while True:
        kind, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        payload = await reader.readexactly(length - 4)
        if kind == b"Z":
            return Ping.OK, ""
        if kind == b"E":
            fields = _error_fields(payload)
            ping = Ping.REJECT if fields.get("C") == CANNOT_CONNECT_NOW else Ping.NO_RESPONSE
            return ping, fields.get("M", "error")
        if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
            return Ping.NO_RESPONSE, "the server asks for a password"


async def select_one(settings: Settings, timeout: float) -> tuple[Ping, str]:
    """Connect, run ``SELECT 1``, disconnect; the outcome and, unless OK, a reason."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path(settings))
            writer.write(_startup_packet())
            ping, reason = await _until_ready(reader)
            if ping is Ping.OK:
                writer.write(_query("SELECT 1"))
                ping, reason = await _until_ready(reader)
            writer.write(b"X\0\0\0\4")
            return ping, reason
    except TimeoutError:
        return Ping.NO_RESPONSE, f"no answer within {timeout:g} s"
    except (OSError, asyncio.IncompleteReadError, struct.error) as exc:
        return Ping.NO_RESPONSE, str(exc) or type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
