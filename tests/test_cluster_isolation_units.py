"""The isolation check's pieces on real sockets and files: a peer's ``/failsafe`` answer
(any HTTP answer counts; silence and refusals are bounded by the timeouts) and the age of
the peers' reports."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from instance_manager.cluster.isolation import failsafe
from instance_manager.cluster.source import FileSource
from instance_manager.settings import Peer
from tests.daemon import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[Peer]:
    port = free_port()
    srv = await asyncio.start_server(handler, "127.0.0.1", port)
    try:
        yield Peer(host="127.0.0.1", port=5432, statusPort=port)
    finally:
        srv.close()
        await srv.wait_closed()


async def answer_500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the client gives up and closes
    writer.close()


async def test_any_http_answer_counts_as_reachable() -> None:
    async with server(answer_500) as peer:
        assert await failsafe(peer, 1.0, 1.0) == ""


async def test_a_silent_peer_fails_within_the_request_timeout() -> None:
    async with server(silent) as peer:
        started = time.monotonic()
        why = await failsafe(peer, 1.0, 0.2)
        assert why == "no answer within 0.2 s"
        assert time.monotonic() - started < 1.0


async def test_a_closed_port_fails_at_once() -> None:
    peer = Peer(host="127.0.0.1", port=5432, statusPort=free_port())
    why = await failsafe(peer, 1.0, 1.0)
    assert why.startswith("cannot connect"), why


def test_report_ages_leave_out_peers_that_never_reported(tmp_path: Path) -> None:
    source = FileSource(tmp_path / "cluster.yaml")
    source.directory.mkdir()
    for name in ("a", "b"):
        (source.directory / f"{name}.json").write_text("{}")
    now = time.time()
    os.utime(source.directory / "b.json", (now - 60, now - 60))
    ages = source.report_ages(["a", "b", "missing"], now)
    assert sorted(ages) == ["a", "b"]
    assert ages["a"] < 5 and 59 < ages["b"] < 61
