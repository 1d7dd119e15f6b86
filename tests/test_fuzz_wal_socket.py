"""Property-based fuzz of the WAL socket (issue 13 §6): random and mutated requests.

Each example builds a fresh world (tests/wal_fuzz_kit.py: PGDATA, pg_wal with segments and
links out of it, a directory outside that nothing may touch, the fake plugin's storage),
runs the real WalServer with the real archiver, restorer and plugin client against the fake
plugin over gRPC, and sends a handful of requests at once, each on its own connection:
well-formed ones with hostile paths and names, and mutations of them (cut short, a byte
flipped or inserted, a field added, upper case, bytes that are not UTF-8, a line far past
the 64 KiB limit, two lines in one frame), and random bytes.

The oracle:
- a frame with no line feed (the client left mid-request) gets no answer and has no effect;
  a line feed within the limit always gets exactly one reply, ``ok`` or
  ``error NUL (not_found|error) NUL message``;
- ``ok`` for an archive means the plugin holds the source's bytes; ``ok`` for a restore means
  the destination holds the stored bytes;
- nothing changes outside the spools and the plugin's storage but the destinations of
  restores answered ``ok`` (snapshots of the whole tree before and after);
- the server is still running and archives a well-formed request afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.wal_fuzz_kit import ARCHIVABLE, RESTORABLE, Entry, World, paths, serve, wal_names

REPLY = re.compile(rb"ok\n|error\0(not_found|error)\0[^\0\n]*\n")
REQUEST_LIMIT = 65536
MUTATIONS = [
    "none", "none", "none", "truncate", "flip", "insert", "extra_field", "no_lf",
    "two_lines", "upper", "not_utf8", "huge", "huge_no_lf",
]  # fmt: skip
# A world's layout under a placeholder root: the strategies name its paths, and each example
# puts its own root in their place.
LAYOUT = World(Path("/tmp/wf-layout"))


@dataclass
class Sent:
    data: bytes
    reply: bytes = b""

    def fields(self) -> list[str] | None:
        """The request line's fields as the server reads them; None when it has none."""
        line, lf, _ = self.data.partition(b"\n")
        if not lf or len(line) >= REQUEST_LIMIT:
            return None
        try:
            return line.decode().split("\0")
        except UnicodeDecodeError:
            return None


def mutate(data: bytes, how: str, where: int, byte: int) -> bytes:
    at = where % (len(data) + 1)
    if how == "truncate":
        return data[:at]
    if how == "flip" and data:
        return data[:at] + bytes([byte]) + data[at + 1 :] + b"\n"
    if how == "insert":
        return data[:at] + bytes([byte]) + data[at:] + b"\n"
    if how == "extra_field":
        return data + b"\0extra\n"
    if how == "no_lf":
        return data
    if how == "two_lines":
        return data + b"\n" + data + b"\n"
    if how == "upper":
        return data.upper() + b"\n"
    if how == "not_utf8":
        return data[:at] + b"\xff\xfe" + data[at:] + b"\n"
    if how == "huge":
        return data + b"/" + b"a" * (REQUEST_LIMIT + 10) + b"\n"
    if how == "huge_no_lf":
        return data + b"a" * (3 * REQUEST_LIMIT)
    return data + b"\n"


@st.composite
def messages(draw: st.DrawFn, world: World) -> bytes:
    kind = draw(st.sampled_from(["archive", "archive", "restore", "restore", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "archive":
        fields = ["archive", draw(paths(world))]
    else:
        rewind = draw(st.sampled_from(["0", "1", "0", "2", "", "true"]))
        fields = ["restore", draw(wal_names()), draw(paths(world)), rewind]
    data = "\0".join(fields).encode()
    how = draw(st.sampled_from(MUTATIONS))
    return mutate(data, how, draw(st.integers(0, 10_000)), draw(st.integers(0, 255)))


async def exchange(world: World, sent: Sent) -> None:
    """Send one frame, close the sending side, read until the server closes."""
    reader, writer = await asyncio.open_unix_connection(str(world.socket))
    try:
        writer.write(sent.data)
        await writer.drain()
        writer.write_eof()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading a line past its limit
    try:
        sent.reply = await asyncio.wait_for(reader.read(), 30)
    except ConnectionResetError:
        sent.reply = b""
    finally:
        writer.close()


def check_reply(world: World, sent: Sent, before: dict[str, Entry], allowed: set[str]) -> None:
    lf = sent.data.find(b"\n")
    if lf == -1:
        assert sent.reply == b"", sent  # an unfinished request is no request
        return
    if sent.reply == b"" and lf >= REQUEST_LIMIT - 1:
        return  # a line past the limit: closed unanswered
    assert REPLY.fullmatch(sent.reply), sent
    if sent.reply != b"ok\n":
        return
    fields = sent.fields()
    assert fields is not None, sent
    if fields[0] == "archive":
        assert len(fields) == 2 and world.archived_intact(fields[1], before), sent
    else:
        assert fields[0] == "restore" and len(fields) == 4 and fields[3] in ("0", "1"), sent
        allowed.add(os.path.realpath(fields[2]))


def check_restores(world: World, sent: list[Sent]) -> None:
    """Each destination answered ok holds what one of the restores it got asked for."""
    wanted: dict[str, set[str]] = {}
    for item in sent:
        fields = item.fields()
        if item.reply == b"ok\n" and fields and fields[0] == "restore":
            wanted.setdefault(os.path.realpath(fields[2]), set()).add(fields[1])
    for destination, names in wanted.items():
        assert any(world.restored_intact(n, destination) for n in names), (destination, names)


async def run(world: World, frames: list[bytes]) -> list[Sent]:
    """Send ``frames`` at once, check each reply, then what changed on disk."""
    sent = [Sent(frame) for frame in frames]
    allowed: set[str] = set()
    async with serve(world) as task:
        before = world.snapshot()
        await asyncio.gather(*(exchange(world, s) for s in sent))
        for item in sent:
            check_reply(world, item, before, allowed)
        assert not task.done(), "the WAL server stopped"
        probe = Sent(f"archive\0{world.pg_wal / ARCHIVABLE[-1]}\n".encode())
        await exchange(world, probe)
        assert probe.reply == b"ok\n", probe
        sent.append(probe)
        changed = world.unexpected_changes(before, world.snapshot(), allowed)
        assert changed == [], [s.data[:200] for s in sent]
    return sent


@pytest.mark.slow
@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames=st.lists(messages(LAYOUT), min_size=1, max_size=8))
def test_the_wal_socket_answers_or_closes_and_writes_only_where_it_may(frames: list[bytes]) -> None:
    world = World().build()
    try:
        frames = [f.replace(str(LAYOUT.root).encode(), str(world.root).encode()) for f in frames]
        sent = asyncio.run(run(world, frames))
        check_restores(world, sent)
        for item in sent[:-1]:
            op = item.data.split(b"\0", 1)[0]
            op = op if op.lower() in (b"archive", b"restore") else b"other"
            answer = item.reply.split(b"\0")[:2]
            event(f"{op!r} -> {answer!r}")
    finally:
        world.remove()


# -- regression examples ------------------------------------------------------------------------


def test_a_request_without_its_line_feed_is_not_acted_on() -> None:
    """A client that leaves mid-request (no LF) used to have the part it sent archived."""
    world = World().build()
    try:
        segment = world.pg_wal / ARCHIVABLE[0]
        cut = Sent(f"archive\0{segment}".encode())
        whole = Sent(f"restore\0{RESTORABLE[0]}\0{world.pg_wal / 'RECOVERYXLOG'}\01".encode())

        async def scenario() -> None:
            async with serve(world, max_parallel=1):
                await exchange(world, cut)
                await exchange(world, whole)

        asyncio.run(scenario())
        assert cut.reply == b"" and whole.reply == b""
        assert not (world.storage / ARCHIVABLE[0]).exists()
        assert not (world.pg_wal / "RECOVERYXLOG").exists()
    finally:
        world.remove()
