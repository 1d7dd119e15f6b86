"""The start-up probes: answered before the web stack is imported, handed over to the full
status server on the same socket without dropping a request (web/early.py), and the
wire-protocol ``SELECT 1`` they use (postgres/ping.py)."""

from __future__ import annotations

import asyncio
import http.client
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import pytest

from instance_manager import settings as settings_mod
from instance_manager.postgres.ping import Ping, select_one, socket_path
from tests.daemon import Daemon, Instance, base_spec, wait_for

Start = Callable[..., Daemon]
HANDED_OVER = "start-up probes handed over to the status server"
PATHS = ("/readyz", "/healthz", "/startupz", "/pg/status")
AFTER_HAND_OVER = 40  # requests sent once the hand-over is logged


@dataclass(frozen=True)
class Answer:
    path: str
    sent: float  # time.time()
    received: float
    status: int
    body: str
    full_server: bool  # aiohttp names itself in Server:, the start-up responder does not


def ask(port: int, path: str) -> Answer | None:
    """One GET on a new connection; None when the connection is refused (not bound yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = time.time()
    try:
        conn.request("GET", path)
    except ConnectionRefusedError:
        return None
    try:
        resp = conn.getresponse()
        body = resp.read().decode()
        server = "aiohttp" in (resp.getheader("Server") or "")
        return Answer(path, sent, time.time(), resp.status, body, server)
    finally:
        conn.close()


def poll_through_the_hand_over(daemon: Daemon, port: int) -> list[Answer]:
    """Ask in turn for every path from the launch until AFTER_HAND_OVER requests after the
    hand-over is logged. Any failure after the first answer (a reset, a timeout, an empty
    reply) raises: that request was dropped."""
    answers: list[Answer] = []
    deadline = time.monotonic() + 60
    after = 0
    while after < AFTER_HAND_OVER:
        assert time.monotonic() < deadline, daemon.tail()
        assert daemon.proc.poll() is None, daemon.tail()
        answer = ask(port, PATHS[len(answers) % len(PATHS)])
        if answer is None:
            assert not answers, f"refused after {len(answers)} answers"
            continue
        answers.append(answer)
        if after or daemon.find(HANDED_OVER):
            after += 1
    return answers


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pg_isready", "query"])
def test_probes_answer_before_and_after_the_hand_over_and_none_is_dropped(
    instance: Instance, daemons: Start, kind: str
) -> None:
    """pg_isready: ready on the pidfile's word; query: SELECT 1 over the wire protocol."""
    instance.write_config(
        base_spec(probes={"readiness": {"type": kind}, "startup": {"type": kind}})
    )
    daemon = daemons(instance)
    answers = poll_through_the_hand_over(daemon, instance.status_port)
    early = [a for a in answers if not a.full_server]
    full = [a for a in answers if a.full_server]
    assert early and full
    assert all(a.full_server for a in answers[-len(PATHS) :])
    assert max(a.sent for a in early) < float(daemon.find(HANDED_OVER)[0]["ts"])
    expected = {
        "/healthz": {(200, "OK")},
        "/readyz": {(500, "instance is not ready yet"), (200, "OK")},
        "/pg/status": {(503, "the status server is starting")},
    }
    for a in early:
        if a.path == "/startupz":
            assert a.status == 200 or a.body.startswith("startup check failed:"), a
        else:
            assert (a.status, a.body) in expected[a.path], a
    # Ready only once PostgreSQL is: after the daemon saw its pidfile say so.
    accepting = float(daemon.find("PostgreSQL is accepting connections")[0]["ts"])
    ready = [a for a in answers if a.path == "/readyz" and a.status == 200]
    assert ready and not ready[0].full_server, "the start-up responder never said ready"
    assert ready[0].received >= accepting
    first = answers.index(ready[0])
    assert all(a.status == 200 for a in answers[first:] if a.path != "/pg/status"), answers
    assert [(a.status, a.body) for a in full if a.path == "/readyz"][-1] == (200, "OK")
    assert [a.status for a in full if a.path == "/pg/status"][-1] == 200
    assert daemon.stop() == 0


# -- the wire-protocol ping ----------------------------------------------------------------


def settings_for(inst: Instance) -> settings_mod.Settings:
    flags = {"scratchDir": str(inst.scratch), "port": inst.pg_port}
    return settings_mod.load(inst.config_file, {"PGDATA": str(inst.pgdata)}, flags)


async def test_select_one_without_a_server(instance: Instance) -> None:
    ping, reason = await select_one(settings_for(instance), 2.0)
    assert ping is Ping.NO_RESPONSE and "No such file" in reason


def server_message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


async def answering(path: str, reply: bytes) -> asyncio.Server:
    """A stand-in for the postmaster on ``path``: reads the startup packet, sends ``reply``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        await reader.readexactly(length - 4)
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            server_message(b"E", b"SFATAL\0C57P03\0Mthe database system is starting up\0\0"),
            (Ping.REJECT, "the database system is starting up"),
        ),
        (
            server_message(b"E", b"SFATAL\0C28000\0Mno pg_hba.conf entry\0\0"),
            (Ping.NO_RESPONSE, "no pg_hba.conf entry"),
        ),
        (
            server_message(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"),
            (Ping.NO_RESPONSE, "the server asks for a password"),
        ),
    ],
)
async def test_select_one_reads_refusals_as_the_probes_do(
    instance: Instance, reply: bytes, expected: tuple[Ping, str]
) -> None:
    settings = settings_for(instance)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    server = await answering(socket_path(settings), reply)
    async with server:
        assert await select_one(settings, 5.0) == expected


@pytest.mark.slow
def test_a_settings_change_during_the_start_is_applied(instance: Instance, daemons: Start) -> None:
    """The settings watch imports watchfiles only once PostgreSQL is ready; a change made
    while PostgreSQL starts is still seen (its fingerprint is taken before the launch)."""
    daemon = daemons(instance)
    daemon.wait_log("postmaster started")
    spec = base_spec()
    spec["postgresql"]["parameters"]["work_mem"] = "7MB"
    instance.write_config(spec)
    daemon.wait_log("settings file changed")

    def work_mem() -> str:
        with psycopg.connect(instance.conninfo(), autocommit=True) as conn:
            row = conn.execute("SHOW work_mem").fetchone()
        return str(row[0]) if row else ""

    wait_for(lambda: work_mem() == "7MB", 30, "work_mem = 7MB")
    assert daemon.stop() == 0
