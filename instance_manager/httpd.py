"""What the two aiohttp servers (status/local in web/, metrics in metrics/) share.

- ``runner(app)``: an AppRunner without access log or signal handling, whose connection
  handler logs through :data:`REQUEST_LOGGER`;
- ``listen(runner, host, port)``: binds, or raises ListenError naming the address and why;
- :class:`ClientFaults`: a request that cannot even be parsed (a bad request line, header,
  chunk or body length), or whose body aiohttp cannot decode while draining what a handler
  left unread (``Content-Encoding: deflate`` on bytes that are not), is the client's
  fault. aiohttp logs it with ``logger.exception``, which would make it an ``error`` line;
  it becomes a ``warning`` ``bad request`` line with the reason, so that ``level=error``
  keeps meaning that the daemon has a problem.
"""

from __future__ import annotations

import logging
import socket
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from instance_manager.errors import ListenError

# On the way out, requests still running get this long to finish (aiohttp's default, 60 s,
# would hold the daemon's exit back behind a slow client).
SHUTDOWN_TIMEOUT = 2.0
REASON_LIMIT = 200  # characters of a reason kept in a log line
# A body the client framed, encoded or cut off wrongly, met while a handler reads it.
PAYLOAD_ERRORS = (web.RequestPayloadError, HttpProcessingError)


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    """``text`` with its whitespace runs collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def payload_reason(exc: BaseException) -> str:
    """The parser's own words for one of PAYLOAD_ERRORS, on one line."""
    inner = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
    if isinstance(inner, HttpProcessingError) and inner.message:
        return one_line(inner.message)
    return one_line(str(exc)) or type(exc).__name__


class ClientFaults(logging.Filter):
    """Turns aiohttp's error records about unparseable requests into warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PAYLOAD_ERRORS):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args, record.exc_info = "bad request", (), None
            if isinstance(exc, HttpProcessingError):
                status, reason = exc.code or 400, one_line(exc.message or type(exc).__name__)
            else:
                status, reason = 400, payload_reason(exc)
            record.fields = {"status": status, "reason": reason, "remote": remote}
        return True


REQUEST_LOGGER = logging.getLogger("http")
REQUEST_LOGGER.addFilter(ClientFaults())


def runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        logger=REQUEST_LOGGER,
    )


async def listen(
    app_runner: web.AppRunner,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> int:
    """Bind ``host:port`` ("" is every address), or accept on ``sock`` (bound already);
    the bound port (``port`` 0 asks the OS)."""
    site: web.BaseSite
    if sock is not None:
        site = web.SockSite(app_runner, sock, ssl_context=ssl_context)
    else:
        site = web.TCPSite(
            app_runner, host or None, port, reuse_address=True, ssl_context=ssl_context
        )
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(host, port, exc) from exc
    addresses = app_runner.addresses
    return int(addresses[0][1]) if addresses else port
