"""FIFO readers for PostgreSQL's logging collector, turned into JSON lines on stdout.

PostgreSQL runs with ``logging_collector=on``, ``log_destination=csvlog``,
``log_directory=<log_dir>`` and ``log_filename=postgres``, so its syslogger appends CSV
records to ``<log_dir>/postgres.csv`` and raw stderr lines to ``<log_dir>/postgres``.
We make both paths FIFOs and read them. A third FIFO, ``<log_dir>/postgres.json``,
carries lines that are already JSON (written by short-lived helpers such as
``wal-archive``); they are copied to stdout verbatim.

We keep one write end of every FIFO open ourselves: the readers then never see EOF
when the syslogger restarts, and the syslogger's own ``open()`` for writing never
blocks waiting for a reader.

No record is ever dropped for lack of room: when stdout is not being read and the
output queue is full, the readers stop reading (see ``log.Output.room``), the FIFOs
fill, and PostgreSQL's logging waits, as it does with CloudNativePG. The event loop
itself never waits on stdout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from instance_manager import log
from instance_manager.log import Output, emit_raw
from instance_manager.postgres.csvlog import (
    MAX_RECORD,
    MESSAGE_INDEX,
    SEVERITY_INDEX,
    CsvRecordAssembler,
    format_csv_record,
    parse_csv_fields,
)

_log = log.get("instance-manager")

# CNPG re-creates a failed FIFO reader after one second; so do we.
RETRY_DELAY = 1.0
# Lines on the JSON pipe longer than this are dropped (CNPG's limit).
MAX_JSON_LINE = 1 << 20
# Upper bound for one raw line, the same as for one CSV record (csvlog.py): a writer that
# never sends a newline cannot make us buffer without limit.
MAX_TEXT_LINE = MAX_RECORD
# How much we ask the pipe for at a time.
READ_CHUNK = 64 << 10
# Messages kept by recent() are cut to this many characters.
RECENT_CHARS = 500


class LineSplitter:
    """Cuts a byte stream into lines; a line longer than ``max_line`` bytes becomes None."""

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: discard up to the next newline

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            if self._skipping:
                self._skipping = False
            elif len(self._buf) + len(piece) > self._max_line:
                out.append(None)
            else:
                out.append(bytes(self._buf + piece))
            self._buf.clear()
            start = end + 1
        rest = data[start:]
        if self._skipping:
            return out
        if len(self._buf) + len(rest) > self._max_line:
            self._buf.clear()
            self._skipping = True
            out.append(None)
        else:
            self._buf += rest
        return out


def _ensure_fifo(path: Path) -> None:
    """Make ``path`` a FIFO with mode 0600, replacing any other kind of file."""
    try:
        mode: int | None = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISFIFO(mode):
        path.unlink()
        mode = None
    if mode is None:
        os.mkfifo(path, 0o600)
        os.chmod(path, 0o600)


def _noop() -> None:
    pass


@dataclass
class _Pipe:
    """One FIFO: its path, what to do with each line, and the fds we hold on it."""

    path: Path
    max_line: int
    handle: Callable[[str], None]
    reset: Callable[[], None] = _noop
    reader: BinaryIO | None = field(default=None, repr=False)
    writer: int | None = field(default=None, repr=False)

    def open(self) -> None:
        _ensure_fifo(self.path)
        rfd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            # Succeeds at once (no ENXIO) because a reader now exists: our own.
            self.writer = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except BaseException:
            os.close(rfd)
            raise
        self.reader = os.fdopen(rfd, "rb", buffering=0)

    def close(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(OSError):
                self.reader.close()  # idempotent: the transport may have closed it already
            self.reader = None
        if self.writer is not None:
            with contextlib.suppress(OSError):
                os.close(self.writer)
            self.writer = None


class LogPipes:
    """Reads PostgreSQL's CSV, raw and JSON log FIFOs and writes JSON lines to stdout."""

    def __init__(self, log_dir: Path, *, keep: int = 50, out: TextIO | None = None) -> None:
        """``out``: write there directly instead of through the process's stdout writer."""
        self._log_dir = Path(log_dir)
        self._out = log.output() if out is None else Output(out)
        self._recent: collections.deque[str] = collections.deque(maxlen=keep)
        self._csv = CsvRecordAssembler()
        self._csv_pipe = _Pipe(
            self._log_dir / "postgres.csv", MAX_TEXT_LINE, self._on_csv_line, self._csv.reset
        )
        self._raw_pipe = _Pipe(self._log_dir / "postgres", MAX_TEXT_LINE, self._on_raw_line)
        self._json_pipe = _Pipe(self._log_dir / "postgres.json", MAX_JSON_LINE, self._on_json_line)
        self._pipes = (self._csv_pipe, self._raw_pipe, self._json_pipe)

    @property
    def csv_path(self) -> Path:
        return self._csv_pipe.path

    @property
    def raw_path(self) -> Path:
        return self._raw_pipe.path

    @property
    def json_path(self) -> Path:
        return self._json_pipe.path

    def prepare(self) -> None:
        """Create the log directory and the three FIFOs, and open them (idempotent)."""
        self._ensure_dir()
        try:
            for pipe in self._pipes:
                if pipe.reader is None:
                    pipe.open()
        except BaseException:
            self._close_all()
            raise

    async def run(self) -> None:
        """Read the three FIFOs until cancelled; every fd is closed on the way out."""
        try:
            self.prepare()
            async with asyncio.TaskGroup() as group:
                for pipe in self._pipes:
                    group.create_task(self._pump(pipe), name=f"logpipe {pipe.path.name}")
        finally:
            self._close_all()

    def recent(self) -> list[str]:
        """The last ``keep`` messages seen on any pipe, oldest first."""
        return list(self._recent)

    def _ensure_dir(self) -> None:
        if not self._log_dir.is_dir():
            self._log_dir.mkdir(parents=True)
            os.chmod(self._log_dir, 0o700)

    def _close_all(self) -> None:
        for pipe in self._pipes:
            pipe.close()

    async def _pump(self, pipe: _Pipe) -> None:
        """Read one FIFO forever, re-opening it after a back-off when reading fails."""
        while True:
            try:
                if pipe.reader is None:
                    self._ensure_dir()
                    pipe.open()
                await self._read(pipe)
                log.event(_log, "log pipe reached EOF", logging.ERROR, path=str(pipe.path))
            except Exception as exc:
                log.event(
                    _log, "log pipe failed", logging.ERROR, path=str(pipe.path), error=repr(exc)
                )
            pipe.close()
            pipe.reset()
            await asyncio.sleep(RETRY_DELAY)

    async def _read(self, pipe: _Pipe) -> None:
        """Feed every complete line of ``pipe`` to its handler until EOF."""
        assert pipe.reader is not None
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader(limit=READ_CHUNK)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe.reader
        )
        splitter = LineSplitter(pipe.max_line)
        try:
            while chunk := await stream.read(READ_CHUNK):
                for line in splitter.feed(chunk):
                    if line is None:
                        self._dropped(pipe)
                    else:
                        pipe.handle(line.decode("utf-8", "replace"))
                await self._out.room()  # stdout is behind: stop reading, PostgreSQL waits
        finally:
            transport.close()

    def _dropped(self, pipe: _Pipe) -> None:
        pipe.reset()
        log.event(
            _log,
            "dropping over-long log line",
            logging.ERROR,
            path=str(pipe.path),
            limit=pipe.max_line,
        )

    def _on_csv_line(self, line: str) -> None:
        try:
            text = self._csv.feed(line)
            if text is None:
                return
            fields = parse_csv_fields(text)
            entry = format_csv_record(fields)
        except (ValueError, csv.Error) as exc:
            log.event(
                _log,
                "dropping malformed CSV log record",
                logging.ERROR,
                path=str(self._csv_pipe.path),
                error=str(exc),
            )
            return
        self._remember(f"{fields[SEVERITY_INDEX]}: {fields[MESSAGE_INDEX]}")
        emit_raw(entry, self._out)

    def _on_raw_line(self, line: str) -> None:
        self._remember(line)
        line_out = {
            "level": "info",
            "ts": time.time(),
            "logger": "postgres",
            "msg": line,
            "source": str(self._raw_pipe.path),
        }
        emit_raw(line_out, self._out)

    def _on_json_line(self, line: str) -> None:
        self._remember(line)
        self._out.write(line, keep=True)

    def _remember(self, message: str) -> None:
        self._recent.append(message[:RECENT_CHARS])
