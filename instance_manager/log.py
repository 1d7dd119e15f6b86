"""JSON log lines on stdout, in CloudNativePG's shape.

Every line is one JSON object: ``level``, ``ts`` (epoch seconds, float), ``logger``,
``msg``, ``logging_pod`` and any extra fields passed with ``extra={"fields": {...}}``
or through :func:`event`.

Every line goes through one :class:`Output`. While its ``run()`` task runs, writing a line
never blocks the event loop: lines are queued and written by ``asyncio.to_thread``, so a
stdout that nobody reads cannot hold up the probes or archive_command. PostgreSQL's own
records are written with ``keep=True`` and are never dropped: their producers wait in
:meth:`Output.room`, which stops the log FIFO readers and so pushes back on PostgreSQL.
The manager's own lines are dropped, and counted, once DROP_LIMIT characters are queued.
Without that task (start-up, exit, tools, tests) lines are written at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

from instance_manager.errors import describe

# Queued characters beyond which PostgreSQL's records wait (and the FIFOs stop being read).
QUEUE_LIMIT = 1 << 20
# Queued characters beyond which the manager's own lines are dropped.
DROP_LIMIT = 4 << 20
# At most this many characters go to one write.
WRITE_CHUNK = 256 << 10

_POD_NAME = ""
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one CNPG-style JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": _LEVELS.get(record.levelno, "info"),
            "ts": record.created,
            "logger": record.name,
            "msg": record.getMessage(),
            "logging_pod": _POD_NAME,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            # A group's repr counts its exceptions; what failed is inside it.
            line["error"] = describe(exc) if isinstance(exc, BaseExceptionGroup) else repr(exc)
        return json.dumps(line, default=str, separators=(",", ":"))


class Output:
    """The one writer of stdout (or of ``stream``); see the module's docstring."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: whatever sys.stdout is when a line is written
        self._queue: collections.deque[str] = collections.deque()
        self._queued = 0  # characters queued or being written
        self._dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._pending = asyncio.Event()
        self._drained = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None

    def write(self, line: str, keep: bool = False) -> None:
        """Write one line (without its newline); safe from any thread."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            self._add(line + "\n", keep)
            return
        try:
            loop.call_soon_threadsafe(self._add, line + "\n", keep)
        except RuntimeError:  # the loop is closed
            self._write_now(line + "\n")

    async def room(self) -> None:
        """Return once fewer than QUEUE_LIMIT characters are queued."""
        while self._loop is not None and self._queued >= QUEUE_LIMIT:
            self._drained.clear()
            await self._drained.wait()

    async def run(self) -> None:
        """Write the queued lines until cancelled, then what is left (waiting for it)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._pending, self._drained = asyncio.Event(), asyncio.Event()
        try:
            while True:
                await self._pending.wait()
                await self._flush_once()
        finally:
            try:
                if self._writing is not None:
                    await self._writing  # one write at a time, in order
                while self._queue:
                    await self._flush_once()
            finally:
                self._loop = None
                self._drained.set()

    def _add(self, data: str, keep: bool) -> None:
        if self._loop is None:
            self._write_now(data)
            return
        if not keep and self._queued >= DROP_LIMIT:
            self._dropped += 1
            return
        self._queue.append(data)
        self._queued += len(data)
        self._pending.set()

    async def _flush_once(self) -> None:
        """Hand one chunk of the queue to a worker thread and wait until it is written."""
        parts: list[str] = []
        size = 0
        while self._queue and size < WRITE_CHUNK:
            parts.append(self._queue.popleft())
            size += len(parts[-1])
        if not self._queue:
            self._pending.clear()
        if not parts:
            return
        write = asyncio.ensure_future(asyncio.to_thread(self._write_quietly, "".join(parts)))
        write.add_done_callback(lambda _: self._written(size))
        self._writing = write
        # Shielded: a cancelled run() waits for this write before writing anything else.
        await asyncio.shield(write)

    def _written(self, size: int) -> None:
        self._queued -= size
        if self._queued < QUEUE_LIMIT:
            self._drained.set()
            if self._dropped:
                self._report_dropped()

    def _report_dropped(self) -> None:
        count, self._dropped = self._dropped, 0
        line = {
            "level": "error",
            "ts": time.time(),
            "logger": "instance-manager",
            "msg": "log lines dropped: stdout was not being read",
            "logging_pod": _POD_NAME,
            "dropped": count,
        }
        self._add(json.dumps(line, separators=(",", ":")) + "\n", keep=True)

    def _write_now(self, data: str) -> None:
        out = self.stream or sys.stdout
        out.write(data)
        out.flush()

    def _write_quietly(self, data: str) -> None:
        """In the worker thread: a failing stdout loses the data; nowhere to report it."""
        with contextlib.suppress(OSError, ValueError):
            self._write_now(data)


class OutputHandler(logging.Handler):
    """A logging handler writing formatted records to an :class:`Output`."""

    def __init__(self, output: Output) -> None:
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.write(self.format(record), keep=bool(getattr(record, "keep", False)))
        except Exception:
            self.handleError(record)


_OUTPUT = Output()


def output() -> Output:
    """The process's stdout writer: the supervisor runs its ``run()`` task."""
    return _OUTPUT


def setup(pod_name: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every logger to one JSON handler on stdout (or ``stream``)."""
    global _POD_NAME
    _POD_NAME = pod_name
    _OUTPUT.stream = stream
    handler = OutputHandler(_OUTPUT)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiohttp.access", "asyncio", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get(name: str = "instance-manager") -> logging.Logger:
    return logging.getLogger(name)


def event(
    logger: logging.Logger,
    msg: str,
    level: int = logging.INFO,
    *,
    keep: bool = False,
    **fields: Any,
) -> None:
    """Log ``msg`` with structured fields; ``keep``: never drop it (PostgreSQL's output)."""
    logger.log(level, msg, extra={"fields": fields, "keep": keep})


def emit_raw(line: dict[str, Any], out: Output | None = None) -> None:
    """Write an already-shaped PostgreSQL record (never dropped), adding the pod name."""
    line.setdefault("ts", time.time())
    line.setdefault("logging_pod", _POD_NAME)
    (out or _OUTPUT).write(json.dumps(line, default=str, separators=(",", ":")), keep=True)
