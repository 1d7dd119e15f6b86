"""Property-based fuzz of the thin client's command line (issue 13 §6).

``python -I -S thin.py`` runs as PostgreSQL runs it (working directory PGDATA) with random
arguments: either command or another word, ``--socket`` to the running WAL server or
elsewhere or without its value, ``--timeout`` with numbers and non-numbers (``inf``,
``nan``, ``1e300``, ``-1``), ``--rewind`` and unknown options, and zero to three words
drawn from relative and absolute paths (``..``, links out of pg_wal, paths elsewhere),
WAL names, bytes that are not UTF-8, and very long names. The server is the real one of
tests/wal_fuzz_kit.py with the fake plugin behind it.

The oracle: the exit status is 0, 1 or 2; a non-zero exit writes a message (never a
traceback) on stderr; exit 0 writes nothing there and means the segment is durably stored
(the plugin holds the source's bytes) or restored (the destination holds the stored bytes);
nothing changes outside the spools and the plugin's storage but the destination of a
restore that exited 0.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from instance_manager.wal import thin
from tests.wal_fuzz_kit import ARCHIVABLE, RESTORABLE, Entry, World, paths, serve, wal_names

THIN = Path(thin.__file__).resolve()
PYTHON = os.path.realpath(sys.executable)
LAYOUT = World(Path("/tmp/wf-layout"))  # placeholder root: each example puts its own in
TIMEOUTS = ["10", "0", "-1", "nan", "inf", "-inf", "1e300", "abc", "1e-9", "", "0x10"]


def words() -> st.SearchStrategy[bytes]:
    return st.one_of(
        paths(LAYOUT).map(os.fsencode),
        wal_names().map(os.fsencode),
        st.sampled_from([f"pg_wal/{n}" for n in [*ARCHIVABLE, "RECOVERYXLOG"]]).map(os.fsencode),
        st.sampled_from([b"pg_wal/\xff\xfe", b"\xc3(", b"-", b"--", b"a" * 5000, b"x" * 300]),
        st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\0", b"0")),
    )


def options() -> st.SearchStrategy[list[bytes]]:
    socket = os.fsencode(LAYOUT.socket)
    one = st.one_of(
        st.just([b"--socket", socket]),
        st.sampled_from([[b"--socket", b"/nonexistent.sock"], [b"--socket", b""], [b"--socket"]]),
        st.sampled_from(TIMEOUTS).map(lambda t: [b"--timeout", t.encode()]),
        st.sampled_from([[b"--rewind"], [b"--unknown"], [b"--timeout"]]),
    )
    return st.lists(one, max_size=3).map(lambda groups: [w for g in groups for w in g])


def well_formed(draw: st.DrawFn) -> list[bytes]:
    """A command line PostgreSQL could run, with hostile paths and names."""
    head = [b"--socket", os.fsencode(LAYOUT.socket)]
    head += draw(st.sampled_from([[], [], [b"--timeout", b"10"], [b"--timeout", b"0.5"]]))
    if draw(st.booleans()):
        return [b"wal-archive", *head, draw(words())]
    name = draw(st.sampled_from(RESTORABLE).map(str.encode) | words())
    rewind = draw(st.sampled_from([[], [b"--rewind"]]))
    return [b"wal-restore", *head, *rewind, name, draw(words())]


@st.composite
def command_lines(draw: st.DrawFn) -> list[bytes]:
    if draw(st.integers(0, 9)) < 6:
        return well_formed(draw)
    command = draw(st.sampled_from([b"wal-archive", b"wal-restore"] * 3 + [b"wal-x", b""]))
    socket = [b"--socket", os.fsencode(LAYOUT.socket)] if draw(st.booleans()) else []
    rest = draw(options()) + draw(st.lists(words(), max_size=3))
    return [command, *socket, *draw(st.permutations(rest))]


def request_of(world: World, argv: list[str]) -> list[str]:
    """The request fields thin.parse makes of ``argv``, relative paths taken from PGDATA
    (parse makes them absolute against this process's directory)."""
    fields = thin.parse(argv).fields
    at = 1 if fields[0] == "archive" else 2
    here = os.getcwd() + "/"
    if fields[at] not in argv and fields[at].startswith(here):
        fields[at] = f"{world.pgdata}/{fields[at][len(here) :]}"
    return fields


async def run_client(world: World, argv: list[bytes]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-I", "-S", THIN, *argv,
        cwd=world.pgdata, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stderr.decode(errors="replace")


def check_exit(
    world: World, argv: list[bytes], code: int, stderr: str, before: dict[str, Entry]
) -> set[str]:
    """The oracle for one run; the paths the run was right to change are returned."""
    assert code in (0, 1, 2), (code, stderr)
    assert "Traceback" not in stderr, stderr
    if code != 0:
        assert stderr.strip() and stderr.endswith("\n"), (code, stderr)
        return set()
    assert stderr == "", stderr
    fields = request_of(world, [os.fsdecode(a) for a in argv])
    if fields[0] == "archive":
        assert world.archived_intact(fields[1], before), fields
        return set()
    assert world.restored_intact(fields[1], fields[2]), fields
    return {os.path.realpath(fields[2])}


async def scenario(world: World, argv: list[bytes]) -> tuple[int, str]:
    async with serve(world) as task:
        before = world.snapshot()
        code, stderr = await run_client(world, argv)
        allowed = check_exit(world, argv, code, stderr, before)
        assert world.unexpected_changes(before, world.snapshot(), allowed) == [], argv
        assert not task.done(), "the WAL server stopped"
    return code, stderr


@pytest.mark.slow
@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(argv=command_lines())
def test_the_thin_client_exits_0_only_when_stored_and_writes_only_where_it_may(
    argv: list[bytes],
) -> None:
    world = World().build()
    try:
        layout, root = os.fsencode(LAYOUT.root), os.fsencode(world.root)
        argv = [a.replace(layout, root) for a in argv]
        code, stderr = asyncio.run(scenario(world, argv))
        kinds = ("usage:", "refused", "bad request", "not valid UTF-8", "not found", "timeout")
        kind = next((k for k in kinds if k in stderr), "other" if stderr else "")
        event(f"{argv[0]!r} exit {code} {kind}")
    finally:
        world.remove()


# -- regression examples ------------------------------------------------------------------------


def client(*argv: bytes) -> tuple[int, str]:
    world = World().build()
    try:
        return asyncio.run(
            scenario(world, [a.replace(b"@SOCK", bytes(world.socket)) for a in argv])
        )
    finally:
        world.remove()


def test_a_timeout_too_large_for_a_socket_is_a_usage_error() -> None:
    """``--timeout inf`` (or 1e300) used to end in an OverflowError traceback."""
    for value in (b"inf", b"1e300", b"nan"):
        code, stderr = client(b"wal-archive", b"--socket", b"@SOCK", b"--timeout", value, b"x")
        assert code == 2 and "--timeout must be positive and at most" in stderr, stderr


def test_a_word_that_is_not_utf8_is_a_usage_error() -> None:
    """It used to reach the socket and fail as "instance manager not reachable"."""
    code, stderr = client(b"wal-archive", b"--socket", b"@SOCK", b"pg_wal/\xff")
    assert code == 2 and "is not valid UTF-8" in stderr, stderr
    code, stderr = client(b"wal-restore", b"--socket", b"@SOCK", RESTORABLE[0].encode(), b"\xc3(")
    assert code == 2 and "is not valid UTF-8" in stderr, stderr
