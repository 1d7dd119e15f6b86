"""A clone in a private (0700) home, installed by container/setup.sh as a new user would.

The daemon starts as root and becomes ``postgres``, which cannot read anything in the
clone: it must run, archive a segment through a plugin and restore it all the same. A
package that the account cannot read is refused at start, naming the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import (
    VENV_BIN,
    Daemon,
    Instance,
    chown_tree,
    copy_pgdata,
    kill_postgres,
    pg_user,
)
from tests.test_wal import PluginProcess, plugin_spec, switch_segments, wait_archived

REPO = Path(__file__).resolve().parent.parent


def copy_work_tree(target: Path) -> None:
    """The repository's files as they are now (tracked and new, nothing ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture
def private_clone(tmp_root: Path) -> Iterator[Path]:
    """``container/setup.sh`` run in ``tmp_root/home/project``, with home at mode 0700."""
    home = tmp_root / "home"
    project = home / "project"
    project.mkdir(parents=True)
    os.chown(home, 0, 0)
    home.chmod(0o700)
    copy_work_tree(project)
    setup = subprocess.run(
        ["bash", "container/setup.sh"], cwd=project, capture_output=True, text=True, timeout=900
    )
    venv = (project / ".venv").resolve()
    try:
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert not venv.is_relative_to(home)
        yield project
    finally:
        if venv.is_relative_to("/opt/instance-manager"):
            shutil.rmtree(venv, ignore_errors=True)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.slow
def test_private_clone_runs_archives_and_restores(
    tmp_root: Path, template_pgdata: Path, private_clone: Path
) -> None:
    inst = Instance(tmp_root / "i")
    inst.root.mkdir()
    chown_tree(inst.root)
    copy_pgdata(template_pgdata, inst.pgdata)
    plugin = PluginProcess(inst.root).start()
    daemon = Daemon(inst, program=private_clone / ".venv" / "bin" / "instance-manager")
    try:
        inst.write_config(plugin_spec())
        daemon.wait_ready()
        assert uid_of(daemon.proc.pid) == pg_user().pw_uid
        segment = switch_segments(inst, 1)[0]
        wait_archived(inst, segment)
        stored = plugin.storage / segment
        assert stored.stat().st_size == 16 * 1024 * 1024
        restore = [str(inst.scratch / "bin" / "manager"), "wal-restore", segment, "pg_wal/RESTORED"]
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *restore],
            cwd=inst.pgdata, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (inst.pgdata / "pg_wal" / "RESTORED").read_bytes() == stored.read_bytes()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        plugin.stop()
        kill_postgres(inst.pgdata)


def test_a_package_the_account_cannot_read_is_refused_before_anything_is_created(
    tmp_root: Path,
) -> None:
    """The source tree of a private clone on the import path: exit 2, naming it."""
    home = tmp_root / "home"
    shutil.copytree(REPO / "instance_manager", home / "project" / "instance_manager")
    home.chmod(0o700)
    target = tmp_root / "new"
    argv = [
        sys.executable, "-c",
        "from instance_manager.cli import main; raise SystemExit(main())",
        "run", "--pg-data", str(target / "pgdata"), "--scratch-dir", str(target / "c"),
    ]  # fmt: skip
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(home / "project")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert done.returncode == 2, done.stderr
    assert f"postgres cannot read {home / 'project'}" in done.stderr
    assert not target.exists()


def test_data_directories_the_account_cannot_reach_are_refused(tmp_root: Path) -> None:
    """PGDATA and the scratch tree inside a private home: exit 2, naming it, nothing made."""
    home = tmp_root / "home"
    home.mkdir()
    home.chmod(0o700)
    argv = [
        str(VENV_BIN / "instance-manager"), "run",
        "--pg-data", str(home / "data" / "pgdata"), "--scratch-dir", str(home / "data" / "c"),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 2, done.stderr
    assert f"postgres cannot read {home}," in done.stderr
    assert list(home.iterdir()) == []
