"""Tests for the PostgreSQL log FIFO readers (instance_manager.postgres.logpipe, csvlog)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import termios
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from instance_manager.postgres import logpipe
from instance_manager.postgres.csvlog import (
    CSV_FIELDS,
    CsvRecordAssembler,
    format_csv_record,
    parse_csv_fields,
    parse_pgaudit,
    severity_level,
)
from instance_manager.postgres.logpipe import LineSplitter, LogPipes
from tests.waiting import eventually

PG_BIN = Path("/usr/lib/postgresql/15/bin")

Lines = list[dict[str, Any]]


def pg_fields(count: int = 26, **values: str) -> list[str]:
    """A csvlog record with ``count`` fields, all empty except ``values``."""
    fields = {name: "" for name in CSV_FIELDS[:count]}
    fields.update(values)
    assert len(fields) == count
    return list(fields.values())


def pg_csv(fields: list[str]) -> str:
    """Render fields the way PostgreSQL's csvlog does: strings quoted, quotes doubled."""
    return ",".join('"' + v.replace('"', '""') + '"' if v else "" for v in fields) + "\n"


def assemble(text: str) -> list[str]:
    """Feed ``text`` line by line into a CsvRecordAssembler; return the complete records."""
    assembler = CsvRecordAssembler()
    records = [assembler.feed(line) for line in text.rstrip("\n").split("\n")]
    return [r for r in records if r is not None]


# --- CSV record parsing ---------------------------------------------------------------


def test_multiline_message_with_quotes() -> None:
    message = 'line one\nline "two"\n\nline, four'
    text = pg_csv(
        pg_fields(log_time="2024-05-01 10:00:00.123 UTC", error_severity="LOG", message=message)
    )
    records = assemble(text)
    assert len(records) == 1
    entry = format_csv_record(parse_csv_fields(records[0]))
    assert entry["logger"] == "postgres"
    assert entry["msg"] == "record"
    assert entry["level"] == "info"
    assert isinstance(entry["ts"], float)
    assert entry["record"]["message"] == message
    assert list(entry) == ["level", "ts", "logger", "msg", "record"]


def test_assembler_waits_for_closing_quote() -> None:
    assembler = CsvRecordAssembler()
    assert assembler.feed('2024,"a ""quoted') is None
    assert assembler.feed('"" word') is None
    assert assembler.feed('end",x') == '2024,"a ""quoted\n"" word\nend",x'
    assert assembler.feed("next,record") == "next,record"


def test_assembler_limit() -> None:
    assembler = CsvRecordAssembler(max_size=10)
    assert assembler.feed('"abc') is None
    with pytest.raises(ValueError):
        assembler.feed("0123456789")
    assert assembler.feed("a,b") == "a,b"  # the partial record was forgotten


def test_empty_fields_omitted_and_key_order() -> None:
    fields = pg_fields(
        log_time="2024-05-01 10:00:00.123 UTC",
        process_id="42",
        error_severity="WARNING",
        message="hello",
        backend_type="checkpointer",
        query_id="0",
    )
    record = format_csv_record(parse_csv_fields(pg_csv(fields)))["record"]
    assert list(record) == [
        "log_time",
        "process_id",
        "error_severity",
        "message",
        "backend_type",
        "query_id",
    ]
    assert all(isinstance(v, str) for v in record.values())


def test_24_field_prefix() -> None:
    fields = pg_fields(24, error_severity="FATAL", message="boom", backend_type="client backend")
    entry = format_csv_record(parse_csv_fields(pg_csv(fields)))
    assert entry["level"] == "error"
    assert entry["record"] == {
        "error_severity": "FATAL",
        "message": "boom",
        "backend_type": "client backend",
    }


def test_23_field_prefix() -> None:
    fields = pg_fields(23, error_severity="LOG", message="pg12", application_name="psql")
    record = format_csv_record(parse_csv_fields(pg_csv(fields)))["record"]
    assert record == {"error_severity": "LOG", "message": "pg12", "application_name": "psql"}


@pytest.mark.parametrize("count", [0, 1, 22, 25, 27])
def test_wrong_field_count(count: int) -> None:
    with pytest.raises(ValueError, match="number of CSV log fields"):
        format_csv_record(["x"] * count)


def test_pgaudit() -> None:
    audit = 'AUDIT: SESSION,1,1,READ,SELECT,,,"SELECT 1,\n ""a""",<not logged>'
    fields = pg_fields(error_severity="LOG", message=audit, user_name="app")
    (text,) = assemble(pg_csv(fields))
    entry = format_csv_record(parse_csv_fields(text))
    assert entry["logger"] == "pgaudit"
    assert "message" not in entry["record"]
    assert entry["record"]["user_name"] == "app"
    assert entry["record"]["audit"] == {
        "audit_type": "SESSION",
        "statement_id": "1",
        "substatement_id": "1",
        "class": "READ",
        "command": "SELECT",
        "object_type": "",
        "object_name": "",
        "statement": 'SELECT 1,\n "a"',
        "parameter": "<not logged>",
    }


def test_pgaudit_rows() -> None:
    audit = parse_pgaudit("AUDIT: OBJECT,3,1,WRITE,INSERT,TABLE,public.t,insert,<none>,5")
    assert audit is not None
    assert audit["object_name"] == "public.t"
    assert audit["rows"] == "5"


@pytest.mark.parametrize("message", ["AUDIT: not,enough", "audit: SESSION,1,1,a,b,c,d,e,f", ""])
def test_not_pgaudit(message: str) -> None:
    assert parse_pgaudit(message) is None


@pytest.mark.parametrize(
    ("severity", "level"),
    [
        ("DEBUG1", "debug"),
        ("DEBUG5", "debug"),
        ("LOG", "info"),
        ("INFO", "info"),
        ("NOTICE", "info"),
        ("WARNING", "warning"),
        ("ERROR", "error"),
        ("FATAL", "error"),
        ("PANIC", "error"),
        ("SOMETHING", "info"),
    ],
)
def test_severity_level(severity: str, level: str) -> None:
    assert severity_level(severity) == level


def test_line_splitter() -> None:
    splitter = LineSplitter(max_line=5)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert splitter.feed(b"ghijk") == [None]  # "fghijk" is over the limit: dropped once
    assert splitter.feed(b"lmn\nok\n") == [b"ok"]
    assert splitter.feed(b"123456\n12345\n") == [None, b"12345"]


# --- FIFOs, without PostgreSQL ---------------------------------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def wait_for(out: io.StringIO, done: Callable[[Lines], bool], within: float = 5.0) -> Lines:
    """Poll the JSON lines written to ``out`` until ``done`` holds."""
    async with asyncio.timeout(within):
        while True:
            lines = [json.loads(line) for line in out.getvalue().splitlines()]
            if done(lines):
                return lines
            await asyncio.sleep(0.01)


async def pumping() -> None:
    """Wait until ``LogPipes.run()`` pumps its three FIFOs (its named tasks exist)."""

    async def started() -> bool:
        return sum(t.get_name().startswith("logpipe ") for t in asyncio.all_tasks()) == 3

    await eventually(started, 5, "the three log pipe pumps")


def unread(path: Path) -> int:
    """Bytes written to the FIFO ``path`` that its reader has not read yet."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # a reader exists: no ENXIO
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, bytes(4)), sys.byteorder)
    finally:
        os.close(fd)


def write_fifo(path: Path, data: bytes) -> None:
    """Blocking write of all of ``data`` (run it in a thread for big payloads)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[LogPipes, io.StringIO]]:
    out = io.StringIO()
    pipes = LogPipes(tmp_path / "log", keep=3, out=out)
    pipes.prepare()
    task = asyncio.create_task(pipes.run())
    try:
        yield pipes, out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_prepare_creates_fifos(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "postgres.csv").write_text("a regular file left behind\n")
    before = open_fds()
    pipes = LogPipes(log_dir / "sub")
    pipes.prepare()
    try:
        assert stat.S_IMODE((log_dir / "sub").stat().st_mode) == 0o700
        for path in (pipes.csv_path, pipes.raw_path, pipes.json_path):
            mode = path.lstat().st_mode
            assert stat.S_ISFIFO(mode)
            assert stat.S_IMODE(mode) == 0o600
        assert len(open_fds() - before) == 6  # a reader and a writer per FIFO
    finally:
        asyncio.run(_cancel_soon(pipes))
    assert open_fds() == before
    # A leftover regular file is replaced by a FIFO.
    pipes = LogPipes(log_dir)
    pipes.prepare()
    asyncio.run(_cancel_soon(pipes))
    assert stat.S_ISFIFO(pipes.csv_path.lstat().st_mode)


async def _cancel_soon(pipes: LogPipes) -> None:
    task = asyncio.create_task(pipes.run())
    await pumping()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_csv_pipe(running: tuple[LogPipes, io.StringIO]) -> None:
    pipes, out = running
    text = pg_csv(pg_fields(error_severity="ERROR", message='multi\n"line"'))
    # One record split over two writes, in the middle of the quoted message.
    write_fifo(pipes.csv_path, text[:-12].encode())
    await eventually(lambda: unread(pipes.csv_path) == 0, 5, "the first part to be read")
    write_fifo(pipes.csv_path, text[-12:].encode())
    lines = await wait_for(out, lambda lines: len(lines) >= 1)
    assert lines[0]["logger"] == "postgres"
    assert lines[0]["level"] == "error"
    assert lines[0]["record"] == {"error_severity": "ERROR", "message": 'multi\n"line"'}
    assert "logging_pod" in lines[0]
    assert pipes.recent() == ['ERROR: multi\n"line"']


async def test_csv_pipe_drops_bad_record(
    running: tuple[LogPipes, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    pipes, out = running
    bad = pg_csv(["a", "b", "c"])
    good = pg_csv(pg_fields(24, error_severity="LOG", message="after the bad one"))
    with caplog.at_level(logging.ERROR, logger="instance-manager"):
        write_fifo(pipes.csv_path, (bad + good).encode())
        lines = await wait_for(out, lambda lines: len(lines) >= 1)
    assert [line["record"]["message"] for line in lines] == ["after the bad one"]
    errors = [r for r in caplog.records if r.name == "instance-manager"]
    assert errors and "malformed CSV" in errors[0].getMessage()


async def test_raw_and_json_pipes(
    running: tuple[LogPipes, io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    pipes, out = running
    write_fifo(pipes.raw_path, b"could not write to log file\n")
    lines = await wait_for(out, lambda lines: len(lines) >= 1)
    assert lines[0]["level"] == "info"
    assert lines[0]["logger"] == "postgres"
    assert lines[0]["msg"] == "could not write to log file"
    assert lines[0]["source"] == str(pipes.raw_path)

    huge = b'{"msg":"' + b"x" * logpipe.MAX_JSON_LINE + b'"}\n'
    small = b'{"level":"info","logger":"wal-archive","msg":"archived"}\n'
    with caplog.at_level(logging.ERROR, logger="instance-manager"):
        await asyncio.to_thread(write_fifo, pipes.json_path, huge + small)
        lines = await wait_for(out, lambda lines: len(lines) >= 2)
    assert out.getvalue().splitlines()[1] == small.decode().rstrip("\n")  # verbatim
    assert len(lines) == 2
    assert any("over-long" in r.getMessage() for r in caplog.records)
    assert pipes.recent() == ["could not write to log file", small.decode().rstrip("\n")]


class FailOnce(io.StringIO):
    """An output stream whose first write fails, like a broken stdout would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = asyncio.Event()

    def write(self, s: str) -> int:
        if not self.failed.is_set():
            self.failed.set()
            raise OSError("write failed")
        return super().write(s)


async def test_error_reopens_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(logpipe, "RETRY_DELAY", 0.05)
    out = FailOnce()
    pipes = LogPipes(tmp_path / "log", out=out)
    task = asyncio.create_task(pipes.run())
    try:
        await pumping()
        with caplog.at_level(logging.ERROR, logger="instance-manager"):
            write_fifo(pipes.raw_path, b"lost\n")
            async with asyncio.timeout(5):
                await out.failed.wait()
        assert any("log pipe failed" in r.getMessage() for r in caplog.records)
        # The pipe is closed now; the blocking open in the thread waits for the re-open.
        await asyncio.to_thread(write_fifo, pipes.raw_path, b"after reopen\n")
        lines = await wait_for(out, lambda lines: len(lines) >= 1)
        assert [line["msg"] for line in lines] == ["after reopen"]
        assert stat.S_ISFIFO(pipes.raw_path.lstat().st_mode)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_recent_keeps_last(running: tuple[LogPipes, io.StringIO]) -> None:
    pipes, out = running
    write_fifo(pipes.raw_path, b"".join(b"line %d\n" % i for i in range(5)))
    await wait_for(out, lambda lines: len(lines) >= 5)
    assert pipes.recent() == ["line 2", "line 3", "line 4"]  # keep=3


async def test_cancel_closes_fds(tmp_path: Path) -> None:
    before = open_fds()
    pipes = LogPipes(tmp_path / "log", out=io.StringIO())
    task = asyncio.create_task(pipes.run())
    await pumping()
    assert len(open_fds() - before) >= 6
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # The transports close their fds in connection_lost callbacks, on a later loop turn.
    await eventually(lambda: open_fds() == before, 1, "every fd to be closed")


# --- real PostgreSQL 15 ----------------------------------------------------------------


@dataclass
class PgRun:
    pipes: LogPipes
    out: io.StringIO
    socket_dir: Path
    port: int


def _as_postgres() -> dict[str, Any]:
    """subprocess arguments that drop root to the postgres user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    """A short temp dir (Unix socket paths must stay < 100 bytes) owned by postgres."""
    path = Path(tempfile.mkdtemp(prefix="lp", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _run_checked(*argv: str | Path, cwd: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        **_as_postgres(),
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode(errors="replace")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Fast shutdown (SIGINT); SIGKILL if it does not finish in time."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        async with asyncio.timeout(30):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@pytest.fixture
async def postgres(pg_dir: Path) -> AsyncIterator[PgRun]:
    """initdb, the log FIFOs, then a postmaster writing its logs into them."""
    data, log_dir, port = pg_dir / "data", pg_dir / "log", 5432
    await _run_checked(
        PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", cwd=pg_dir
    )
    out = io.StringIO()
    pipes = LogPipes(log_dir, out=out)
    pipes.prepare()
    if os.geteuid() == 0:
        for path in (log_dir, pipes.csv_path, pipes.raw_path, pipes.json_path):
            shutil.chown(path, "postgres", "postgres")
    reader = asyncio.create_task(pipes.run())
    settings = {
        "listen_addresses": "",
        "port": str(port),
        "unix_socket_directories": str(pg_dir),
        "logging_collector": "on",
        "log_destination": "csvlog",
        "log_directory": str(log_dir),
        "log_filename": "postgres",
        "log_rotation_age": "0",
        "log_rotation_size": "0",
    }
    options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    proc = await asyncio.create_subprocess_exec(
        str(PG_BIN / "postgres"), "-D", str(data), *options,
        cwd=pg_dir, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, **_as_postgres(),
    )  # fmt: skip
    try:
        yield PgRun(pipes, out, pg_dir, port)
    finally:
        await _stop(proc)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _has_message(text: str) -> Callable[[Lines], bool]:
    def done(lines: Lines) -> bool:
        return any(text in line.get("record", {}).get("message", "") for line in lines)

    return done


async def test_real_postgres_csvlog(postgres: PgRun) -> None:
    await wait_for(postgres.out, _has_message("ready to accept connections"), within=30)
    sql = """DO $$ BEGIN RAISE LOG 'logpipe "one"%logpipe two', E'\\n'; END $$;"""
    await _run_checked(
        PG_BIN / "psql", "-X", "-v", "ON_ERROR_STOP=1",
        "-h", postgres.socket_dir, "-p", str(postgres.port), "-U", "postgres", "-d", "postgres",
        "-c", sql, cwd=postgres.socket_dir,
    )  # fmt: skip
    lines = await wait_for(postgres.out, _has_message('logpipe "one"\nlogpipe two'), within=10)
    (line,) = [x for x in lines if "logpipe two" in x.get("record", {}).get("message", "")]
    assert line["logger"] == "postgres"
    assert line["level"] == "info"
    record = line["record"]
    assert record["error_severity"] == "LOG"
    assert record["user_name"] == "postgres"
    assert record["application_name"] == "psql"
    assert record["backend_type"] == "client backend"
    assert 'LOG: logpipe "one"\nlogpipe two' in postgres.pipes.recent()
