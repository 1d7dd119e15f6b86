"""A stdout that nobody reads must not stop the daemon answering; no record is lost.

The daemon's stdout is a FIFO whose buffer is shrunk to one page and which the test does
not read at first: the daemon must still start and answer /readyz quickly while
PostgreSQL writes a few megabytes of log records. Once the test reads again, every
record comes out, once and in order: the back-pressure went to PostgreSQL's logging, not
to the event loop, and nothing was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from instance_manager import log
from tests.daemon import PG_BIN, Daemon, Instance, http_get

Start = Callable[..., Daemon]
RECORDS = 10_000  # about 4 MB of JSON: far more than every buffer on the way holds
PROBE_LIMIT = 1.0  # seconds a probe may take while stdout is blocked


class Stdout:
    """The read end of the FIFO the daemon writes its stdout to."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path, 0o600)
        self.path = path
        # Opened first and non-blocking, so the daemon's open() for writing does not wait.
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, 4096)
        self.partial = b""
        self.parsed: list[dict[str, Any]] = []

    def prefix(self) -> tuple[str, ...]:
        return ("/bin/sh", "-c", f'exec "$@" > {self.path}', "sh")

    def read_available(self, wait: float) -> bool:
        """Read what is there (waiting up to ``wait`` s for something); False at EOF."""
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        chunk = os.read(self.fd, 1 << 16)
        *complete, self.partial = (self.partial + chunk).split(b"\n")
        self.parsed.extend(json.loads(line) for line in complete if line.strip())
        return bool(chunk)

    def lines(self) -> list[dict[str, Any]]:
        """The complete lines read so far."""
        return self.parsed

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def stdout(tmp_root: Path) -> Iterator[Stdout]:
    out = Stdout(tmp_root / "stdout")
    yield out
    out.close()


def numbers(lines: list[dict[str, Any]]) -> list[int]:
    """The N of every 'backpressure N' record, in output order."""
    found = []
    for line in lines:
        message = line.get("record", {}).get("message", "")
        if line.get("logger") == "postgres" and message.startswith("backpressure "):
            found.append(int(message.split()[1]))
    return found


def start_logging(inst: Instance) -> subprocess.Popen[bytes]:
    sql = f"DO $$ BEGIN FOR i IN 1..{RECORDS} LOOP RAISE LOG 'backpressure %', i; END LOOP; END $$"
    return subprocess.Popen(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            inst.conninfo(),
            "-c",
            sql,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def timed_probe(inst: Instance) -> float:
    started = time.monotonic()
    status, body = http_get(inst.url("/readyz"), timeout=10)
    elapsed = time.monotonic() - started
    assert status == 200, body
    return elapsed


@pytest.mark.slow
def test_unread_stdout_delays_neither_probes_nor_loses_records(
    instance: Instance, stdout: Stdout, daemons: Start
) -> None:
    daemon = daemons(instance, prefix=stdout.prefix())
    daemon.wait_ready()  # stdout has not been read at all so far
    psql = start_logging(instance)
    try:
        probes = [timed_probe(instance) for _ in range(20)]
        assert max(probes) < PROBE_LIMIT, probes
        # The records cannot all fit in the buffers: PostgreSQL is held up, not the daemon.
        assert psql.poll() is None
        deadline = time.monotonic() + 120
        while len(numbers(stdout.lines())) < RECORDS and time.monotonic() < deadline:
            stdout.read_available(0.5)
        assert numbers(stdout.lines()) == list(range(1, RECORDS + 1))
        assert psql.wait(30) == 0
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    daemon.signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while stdout.read_available(0.5) and time.monotonic() < deadline:
        pass
    assert daemon.wait_exit() == 0
    assert "instance manager stopped" in [line.get("msg") for line in stdout.lines()]


class GatedStream(io.StringIO):
    """A stdout whose writes wait until the gate opens, as a pipe nobody reads does."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, s: str) -> int:
        if not self.gate.wait(30):
            raise OSError("the test never opened the gate")
        return super().write(s)


async def test_output_keeps_records_drops_own_lines_and_pushes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(log, "QUEUE_LIMIT", 100)
    monkeypatch.setattr(log, "DROP_LIMIT", 400)
    stream = GatedStream()
    output = log.Output(stream)
    writer = asyncio.create_task(output.run())
    try:
        await asyncio.sleep(0)  # let run() start
        records = [f"record {i:03d}" for i in range(60)]  # 660 characters, kept
        for record in records:
            output.write(record, keep=True)  # returns at once: the loop never waits
        own = [f"own {i}" for i in range(20)]  # beyond DROP_LIMIT: dropped
        for line in own:
            output.write(line)
        room = asyncio.create_task(output.room())
        done, _ = await asyncio.wait({room}, timeout=0.2)
        assert not done  # record producers wait while stdout is behind
        stream.gate.set()
        async with asyncio.timeout(10):
            await room
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    lines = stream.getvalue().splitlines()
    assert [line for line in lines if line.startswith("record")] == records
    assert not any(line.startswith("own") for line in lines)
    (report,) = [json.loads(line) for line in lines if line.startswith("{")]
    assert report["msg"] == "log lines dropped: stdout was not being read"
    assert report["dropped"] == len(own)
    output.write("after the writer stopped")  # written at once again
    assert stream.getvalue().endswith("after the writer stopped\n")
