"""The probes while the daemon starts, before the web stack is imported.

The status port is bound before PostgreSQL is launched, and this small HTTP/1.1 responder
(asyncio streams, no aiohttp, no psycopg) answers on it until the full status server
listens on the same socket:

- ``/healthz`` and ``/failsafe``: 200 ``OK`` (the loop answers);
- ``/startupz`` and ``/readyz``: CloudNativePG's strategies as ``probes.Checker`` applies
  them, with ``SELECT 1`` sent over the wire protocol (postgres/ping.py), except for the
  ``pg_isready`` readiness: PostgreSQL's own word, the pidfile's ``ready`` (or ``standby``)
  status the lifecycle waited for, with the postmaster still running. That answer needs no
  backend: the first one after a start builds its relation cache (10-20 ms) for nothing.
  ``streaming`` needs the full server, so until then it fails;
- any other path: 503 ``the status server is starting`` with ``Retry-After: 1``.

Each connection gets one answer and is closed (``Connection: close``). At the hand-over the
full server starts accepting on the listening socket, then this responder stops: a
connection waiting in the backlog is accepted by one or the other, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from instance_manager import log
from instance_manager.cluster_model import ProbeWithStrategy
from instance_manager.postgres.ping import Ping, select_one
from instance_manager.process import preload
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.web import routes

_logger = log.get("web")
BACKLOG = 128
REQUEST_LIMIT = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 500: "Internal Server Error"}
_REASONS[503] = "Service Unavailable"
STARTING = "the status server is starting"


def listen(host: str, port: int) -> socket.socket:
    """The status port's listening socket ("" is every address, IPv6 and IPv4 alike)."""
    if not host and socket.has_dualstack_ipv6():
        return socket.create_server(
            ("", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


class EarlyProbes:
    def __init__(self, settings: Callable[[], Settings], state: InstanceState) -> None:
        self._settings = settings
        self.state = state

    async def serve(self, sock: socket.socket, until: Coroutine[Any, Any, None]) -> None:
        """Answer on ``sock`` until ``until`` returns; ``sock`` itself stays open."""
        duplicate = sock.dup()
        server = await asyncio.start_server(self._handle, sock=duplicate, limit=REQUEST_LIMIT)
        log.event(_logger, "start-up probes listening", port=sock.getsockname()[1])
        try:
            await until
        finally:
            # Stop accepting first: a connection accepted just before has its transport
            # made in a task of its own, which a closed server would refuse (the client
            # would see a reset). One turn of the loop lets those tasks run.
            asyncio.get_running_loop().remove_reader(duplicate.fileno())
            try:
                await asyncio.sleep(0)
            finally:
                server.close()  # the duplicate descriptor; connections under way finish
        log.event(_logger, "start-up probes handed over to the status server")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The imports of the web stack (process/preload.py) wait while a probe is answered.
        with preload.priority():
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
                method, path = _request_line(head)
                status, body = await self._answer(method, path)
                writer.write(_response(status, body, head_only=method == "HEAD"))
                await writer.drain()
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[int, str]:
        if not method:
            return 400, "bad request line"
        probes = {
            routes.STARTUP: self.startup,
            routes.READINESS: self.readiness,
            routes.LIVENESS: _ok,
            routes.FAILSAFE: _ok,
        }
        probe = probes.get(path)
        if probe is None:
            return 503, STARTING
        if method not in ("GET", "HEAD"):
            return 405, "method not allowed"
        return await probe()

    async def startup(self) -> tuple[int, str]:
        if self.state.might_be_unavailable:
            return 200, "Skipped"
        ok, message = await self._check(self._settings().cluster.spec.probes.startup, True)
        return (200, "OK") if ok else (500, f"startup check failed: {message}")

    async def readiness(self) -> tuple[int, str]:
        if not self.state.postmaster_running or self.state.stopping:
            return 500, "instance is not ready yet"
        probe = self._settings().cluster.spec.probes.readiness
        if probe.type == "pg_isready":
            return 200, "OK"
        ok, message = await self._check(probe, False)
        return (200, "OK") if ok else (500, f"readiness check failed: {message}")

    async def _check(self, probe: ProbeWithStrategy, startup: bool) -> tuple[bool, str]:
        if probe.type == "streaming":
            return False, STARTING
        ping, _ = await select_one(self._settings(), float(probe.timeoutSeconds))
        if ping is Ping.OK or (ping is Ping.REJECT and startup and probe.type == "pg_isready"):
            return True, "OK"
        return False, "rejecting connections" if ping is Ping.REJECT else "no response"


async def _ok() -> tuple[int, str]:
    return 200, "OK"


def _request_line(head: bytes) -> tuple[str, str]:
    """Method and path (without the query); ("", "") when the line is not HTTP/1.x."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return "", ""
    return parts[0].decode("latin-1"), parts[1].decode("latin-1").split("?", 1)[0]


def _response(status: int, body: str, *, head_only: bool) -> bytes:
    data = body.encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(data)}",
        "Connection: close",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    if status == 503:
        lines.append("Retry-After: 1")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else data)
