"""SCRATCH/bin/manager, the program archive_command runs, and the readability check at start."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import threading
from collections.abc import Iterator
from importlib.util import MAGIC_NUMBER
from pathlib import Path

import pytest

from instance_manager.errors import SettingsError
from instance_manager.postgres import config
from instance_manager.process import readable
from instance_manager.wal import install
from tests.daemon import PYTHON
from tests.test_config_render import make_settings


class LineServer:
    """A Unix socket that records one request line and answers ``reply`` (or nothing)."""

    def __init__(self, path: Path, reply: bytes | None) -> None:
        self.path = path
        self.reply = reply
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                if self.reply is None:
                    conn.recv(1)  # hold the connection until the client gives up
                else:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ok_server(tmp_root: Path) -> Iterator[LineServer]:
    server = LineServer(tmp_root / "ok.sock", b"ok\n")
    yield server
    server.close()


def run(
    program: Path | str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(program), *args], capture_output=True, text=True, timeout=30, cwd=cwd, env={}
    )


def test_installed_program_speaks_for_postgresql(tmp_root: Path, ok_server: LineServer) -> None:
    target = install.install(tmp_root / "scratch" / "bin" / "manager", ok_server.path, 5)
    assert target.read_text().startswith(f"#!{config.interpreter()} -IS\n")
    compiled = config.client_path(target)
    assert compiled.read_bytes().startswith(MAGIC_NUMBER)
    for path in (target, compiled):
        assert path.stat().st_mode & 0o777 == 0o700
    assert target.parent.stat().st_mode & 0o777 == 0o700
    client = [config.interpreter(), "-IS", str(compiled)]  # as PostgreSQL's commands run it
    done = run(*client, "wal-archive", "pg_wal/000000010000000000000001", cwd=tmp_root)
    assert done.returncode == 0, done.stderr
    restored = run(target, "wal-restore", "--rewind", "000000010000000000000002", "/x/RECOVERYXLOG")
    assert restored.returncode == 0, restored.stderr
    assert ok_server.requests == [
        f"archive\0{tmp_root}/pg_wal/000000010000000000000001\n".encode(),
        b"restore\x00000000010000000000000002\x00/x/RECOVERYXLOG\x001\n",
    ]


def test_installed_program_gives_up_at_its_deadline(tmp_root: Path) -> None:
    silent = LineServer(tmp_root / "silent.sock", None)
    try:
        target = install.install(tmp_root / "bin" / "manager", silent.path, 0.5)
        done = run(target, "wal-archive", "/pg_wal/000000010000000000000001")
    finally:
        silent.close()
    assert done.returncode == 1
    assert "no answer from the instance manager within 0.5 s" in done.stderr


def test_installed_program_refuses_bad_usage(tmp_root: Path, ok_server: LineServer) -> None:
    target = install.install(tmp_root / "bin" / "manager", ok_server.path, 5)
    for args in ([], ["wal-archive"], ["wal-restore", "only-one"], ["wal-archive", "--bogus", "x"]):
        done = run(target, *args)
        assert done.returncode == 2, args
        assert "usage: manager wal-archive" in done.stderr
    assert ok_server.requests == []


def test_reinstall_replaces_a_changed_copy_and_keeps_an_identical_one(tmp_root: Path) -> None:
    target = install.install(tmp_root / "bin" / "manager", tmp_root / "a.sock", 5)
    compiled = config.client_path(target)
    inodes = target.stat().st_ino, compiled.stat().st_ino
    assert install.install(target, tmp_root / "a.sock", 5) == target
    assert (target.stat().st_ino, compiled.stat().st_ino) == inodes
    install.install(target, tmp_root / "b.sock", 5)
    assert f"# socket: {str(tmp_root / 'b.sock')!r}" in target.read_text()
    assert str(tmp_root / "b.sock").encode() in compiled.read_bytes()
    assert target.stat().st_ino != inodes[0] and compiled.stat().st_ino != inodes[1]
    assert sorted(p.name for p in target.parent.iterdir()) == ["manager", "manager.pyc"]


def test_archive_command_answers_a_marked_segment_in_the_shell(tmp_root: Path) -> None:
    """PostgreSQL runs archive_command with /bin/sh: a segment whose marker is in the spool
    is answered there, with no client and no daemon; any other one goes to the client."""
    current = make_settings(tmp_root)
    install.install(config.manager_path(current), config.wal_socket(current), 5)
    segment = "000000010000000000000007"
    pg_wal = current.pgdata / "pg_wal"
    pg_wal.mkdir()
    (pg_wal / segment).write_bytes(b"wal")
    command = config.archive_command(current).replace("%f", segment)
    command = command.replace("%p", f"pg_wal/{segment}")

    def archive_command() -> subprocess.CompletedProcess[str]:
        return run("/bin/sh", "-c", command, cwd=current.pgdata)

    missed = archive_command()  # no marker, and no daemon behind the socket
    assert missed.returncode == 1
    assert f"wal archive {segment}: instance manager not reachable" in missed.stderr
    current.archive_spool.mkdir(parents=True)
    (current.archive_spool / segment).touch()
    answered = archive_command()
    assert (answered.returncode, answered.stderr) == (0, "")


def test_readability_check_names_a_path_in_a_private_home(tmp_root: Path) -> None:
    owner = pwd.getpwnam("postgres")
    home = tmp_root / "home"
    (home / "project").mkdir(parents=True)
    home.chmod(0o700)
    hidden = home / "project"
    assert readable.unreadable(owner, [(str(hidden), os.R_OK | os.X_OK), ("/usr", os.R_OK)]) == [
        str(hidden)
    ]
    # What the daemon needs, as the installed package (not this clone's tree) sees it.
    probe = (
        "import pwd; from instance_manager.process import readable; "
        "print(readable.unreadable(pwd.getpwnam('postgres'), readable.needed_paths()))"
    )
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, cwd="/")
    assert done.stdout.strip() == "[]", done.stderr
    with pytest.raises(SettingsError, match="postgres cannot read"):
        readable.check(owner, [(str(hidden), os.R_OK)])
