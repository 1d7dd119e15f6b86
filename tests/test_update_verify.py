"""An installed build runs only while it matches the hash it was installed under.

``PUT /update`` keeps each build as ``SCRATCH/manager/<sha256>/`` beside the zipapp
``<sha256>.pyz``; cli.py re-executes into it through ``build.exec_installed``.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from instance_manager.upgrade import build
from tests.api_helpers import Primary, certs, primary, serve_api
from tests.test_api_update import make_build, publish, put, raw_put

__all__ = ["certs", "primary"]  # fixtures
MODULE = "instance_manager/wal/names.py"


def installed(tmp_path: Path) -> tuple[Path, str]:
    archive, digest = make_build(tmp_path)
    root = tmp_path / "manager"
    root.mkdir()
    staged = root / ".staged"
    build.unpack(archive, staged)
    return build.install(staged, root, digest, archive), digest


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def swap_for_link(path: Path) -> None:
    copy = path.with_name("copy.py")
    shutil.copy(path, copy)
    path.unlink()
    path.symlink_to(copy)


TAMPERING: dict[str, Callable[[Path], None]] = {
    "module changed": lambda b: append(b / MODULE, "\nraise SystemExit('tampered')\n"),
    "module added": lambda b: (b / "instance_manager" / "extra.py").write_text("x = 1\n"),
    "module removed": lambda b: (b / MODULE).unlink(),
    "module replaced by a link": lambda b: swap_for_link(b / MODULE),
    "marker changed": lambda b: (b / build.HASH_FILE).write_text("0" * 64 + "\n"),
    "zipapp changed": lambda b: append(b.parent / f"{b.name}.pyz", "x"),
    "zipapp removed": lambda b: (b.parent / f"{b.name}.pyz").unlink(),
}


def test_an_intact_build_verifies_bytecode_caches_aside(tmp_path: Path) -> None:
    target, digest = installed(tmp_path)
    assert target.name == digest and (target.parent / f"{digest}.pyz").is_file()
    (target / "instance_manager" / "__pycache__").mkdir(exist_ok=True)
    (target / "instance_manager" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"pyc")
    build.verify_installed(target)


@pytest.mark.parametrize("how", list(TAMPERING))
def test_a_tampered_installed_build_is_refused_before_exec(tmp_path: Path, how: str) -> None:
    target, _ = installed(tmp_path)
    TAMPERING[how](target)
    argv = build.reexec_argv(target, ["instance-manager", "run"])
    with pytest.raises(build.BuildError, match=f"installed build {target} refused"):
        build.exec_installed(argv)  # raises instead of replacing this process


async def test_upload_replaces_a_tampered_installed_build(primary: Primary, tmp_path: Path) -> None:
    archive, digest = make_build(tmp_path)
    publish(primary, digest)
    requested: list[list[str]] = []

    async def reexec(argv: list[str]) -> None:
        requested.append(argv)
        raise OSError("exec refused (test)")  # the build stays installed, not current

    settings = primary.settings()
    target = settings.instance.scratchDir / "manager" / digest
    async with serve_api(settings, primary.certs, request_reexec=reexec) as api:
        assert (await put(api, archive.read_bytes()))[0] == 500
        build.verify_installed(target)
        append(target / MODULE, "\nraise SystemExit('tampered')\n")
        assert (await put(api, archive.read_bytes()))[0] == 500
    assert [argv[1] for argv in requested] == [str(target)] * 2
    assert "tampered" not in (target / MODULE).read_text()
    build.verify_installed(target)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".stale-")]


async def test_manager_directory_is_private(primary: Primary, tmp_path: Path) -> None:
    archive, digest = make_build(tmp_path)
    publish(primary, digest)

    async def reexec(argv: list[str]) -> None:
        return None

    settings = primary.settings()
    root = settings.instance.scratchDir / "manager"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.symlink_to(elsewhere)
    async with serve_api(settings, primary.certs, request_reexec=reexec) as api:
        code, text = await put(api, archive.read_bytes())
        assert code == 500 and "not a directory of its own" in text
        assert not any(elsewhere.iterdir())
        root.unlink()
        root.mkdir(mode=0o755)
        os.chmod(root, 0o755)
        assert await raw_put(api, archive.read_bytes()) == b""  # scheduled: EOF, no answer
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert build.current(root) == digest
    build.verify_installed(root / digest)
