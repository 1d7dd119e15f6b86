"""``PUT /update``: builds, their checks, atomic installation, the re-exec request."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import instance_manager
from instance_manager.upgrade import build
from instance_manager.upgrade.build import instance_arch
from tests.api_helpers import (
    Api,
    Certs,
    Primary,
    api_spec,
    certs,
    operator_status,
    primary,
    serve_api,
    write_cluster,
)
from tests.daemon import chown_tree, postmaster_pid
from tests.waiting import eventually

__all__ = ["certs", "primary"]  # fixtures
PACKAGE = Path(instance_manager.__file__).parent
INVALID = "while validating instance manager binary"


def make_build(tmp_path: Path, edit: str = "", name: str = "new.pyz") -> tuple[Path, str]:
    """A build of this package with ``__version__`` changed (and ``edit`` appended to it)."""
    source = tmp_path / f"src-{name}"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("__pycache__"))
    init = source / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+') + edit)
    target = tmp_path / name
    return target, build.make_zipapp(target, source)


def publish(primary: Primary, digest: str) -> None:
    arch = [{"goArch": instance_arch(), "hash": digest}]
    write_cluster(
        primary.inst, api_spec(), operator_status(primary.certs, availableArchitectures=arch)
    )


async def put(api: Api, body: bytes, method: str = "PUT") -> tuple[int, str]:
    async with api.client() as client, client.request(method, api.base + "/update", data=body) as r:
        return r.status, await r.text()


async def raw_put(api: Api, body: bytes) -> bytes:
    """PUT /update on a connection of its own, no retry: what comes back before EOF."""
    assert api.certs is not None
    context = api.certs.client("operator")
    reader, writer = await asyncio.open_connection("127.0.0.1", api.status_port, ssl=context)
    head = f"PUT /update HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def test_builds_are_reproducible(tmp_path: Path) -> None:
    first = build.make_zipapp(tmp_path / "a.pyz")
    assert build.make_zipapp(tmp_path / "b.pyz") == first
    names = zipfile.ZipFile(tmp_path / "a.pyz").namelist()
    assert "__main__.py" in names and "instance_manager/wal/thin.py" in names
    assert "instance_manager/web/openapi.json" in names
    assert not any("__pycache__" in n for n in names)


def test_install_switches_current_and_reuses_a_known_build(tmp_path: Path) -> None:
    archive, digest = make_build(tmp_path)
    root = tmp_path / "manager"
    root.mkdir()
    for attempt in range(2):
        staged = root / f".staged-{attempt}"
        build.unpack(archive, staged)
        upload = shutil.copy(archive, root / f"upload-{attempt}.pyz")
        target = build.install(staged, root, digest, Path(upload))
        assert target == root / digest and not staged.exists()
        assert not Path(upload).exists() and (root / f"{digest}.pyz").is_file()
        build.verify_installed(target)
        assert build.current(root) == digest
    marker = (target / build.HASH_FILE).read_text().strip()
    assert marker == digest
    build.point_current(root, None)
    assert build.current(root) is None


@pytest.mark.parametrize(
    "entries",
    [
        {"../evil.py": "x"},
        {"/abs.py": "x"},
        {"__main__.py": "", "other/x.py": ""},
        {"__main__.py": ""},  # no package
    ],
)
def test_unsafe_or_foreign_builds_are_refused(tmp_path: Path, entries: dict[str, str]) -> None:
    archive = tmp_path / "bad.pyz"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in entries.items():
            zf.writestr(name, text)
    with pytest.raises(build.BuildError):
        build.unpack(archive, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()


async def test_upgrade_installs_and_requests_a_reexec(primary: Primary, tmp_path: Path) -> None:
    archive, digest = make_build(tmp_path)
    publish(primary, digest)
    requested: list[list[str]] = []

    async def reexec(argv: list[str]) -> None:
        requested.append(argv)
        raise OSError("exec refused (test)")  # the failure path: old version keeps serving

    settings = primary.settings()
    argv = ["/venv/bin/instance-manager", "run", "--config", "c.yaml"]
    async with serve_api(settings, primary.certs, request_reexec=reexec, argv=argv) as api:
        assert await put(api, b"", "GET") == (405, "wrong method used\n")
        code, text = await put(api, archive.read_bytes())
        assert code == 500 and "exec refused (test)" in text
        root = settings.instance.scratchDir / "manager"
        target = root / digest
        assert requested == [[sys.executable, str(target), *argv[1:]]]
        assert (target / build.HASH_FILE).read_text().strip() == digest
        assert (target / "instance_manager" / "wal" / "thin.py").is_file()
        assert build.current(root) is None  # the failed switch was rolled back
        assert not [p for p in root.iterdir() if p.name.startswith((".staged", "upload-"))]
        api.operator.updater.upgrading = True
        assert await put(api, archive.read_bytes()) == (
            418, "instance manager is already upgrading\n"
        )  # fmt: skip


async def test_each_upgrade_keeps_only_its_build_and_the_one_it_replaces(
    primary: Primary, tmp_path: Path
) -> None:
    builds = [make_build(tmp_path, f"\nSERIAL = {i}\n", f"b{i}.pyz") for i in range(3)]
    requested: list[list[str]] = []

    async def reexec(argv: list[str]) -> None:
        requested.append(argv)  # scheduled; this test process is not replaced

    argv = ["/venv/bin/instance-manager", "run"]
    for archive, digest in builds:
        publish(primary, digest)
        settings = primary.settings()
        async with serve_api(settings, primary.certs, request_reexec=reexec, argv=argv) as api:
            assert await raw_put(api, archive.read_bytes()) == b""  # scheduled: EOF
    root = settings.instance.scratchDir / "manager"
    digests = [digest for _, digest in builds]
    assert [Path(a[1]).name for a in requested] == digests
    assert build.current(root) == digests[2]
    installed = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    # the first build went when the third was installed; "current" is the link
    assert installed == sorted(
        [digests[1], f"{digests[1]}.pyz", digests[2], f"{digests[2]}.pyz", build.CURRENT]
    )
    build.verify_installed(root / digests[1])
    build.verify_installed(root / digests[2])


async def test_scheduled_upgrade_answers_nothing(primary: Primary, tmp_path: Path) -> None:
    archive, digest = make_build(tmp_path)
    publish(primary, digest)
    requested: list[list[str]] = []

    async def reexec(argv: list[str]) -> None:
        requested.append(argv)  # scheduled: the supervisor re-executes once wound down

    settings = primary.settings()
    async with serve_api(settings, primary.certs, request_reexec=reexec) as api:
        assert await raw_put(api, archive.read_bytes()) == b""  # EOF, as CNPG's operator expects
        assert requested and requested[0][1] == str(
            settings.instance.scratchDir / "manager" / digest
        )
        assert build.current(settings.instance.scratchDir / "manager") == digest
        assert api.operator.updater.upgrading  # until the process is replaced
        async with api.client(None) as client, client.get(api.base + "/pg/status") as resp:
            assert (await resp.json())["isInstanceManagerUpgrading"] is True


async def test_refused_builds(primary: Primary, tmp_path: Path) -> None:
    good, digest = make_build(tmp_path)
    broken, broken_digest = make_build(tmp_path, "\nraise RuntimeError('broken build')\n", "b.pyz")

    async def reexec(argv: list[str]) -> None:
        raise AssertionError("must not be reached")

    async with serve_api(primary.settings(), primary.certs, request_reexec=reexec) as api:
        code, text = await put(api, good.read_bytes())
        assert code == 500
        assert text == f"{INVALID}: missing architecture {instance_arch()}\n"
    publish(primary, digest)
    async with serve_api(primary.settings(), primary.certs, request_reexec=reexec) as api:
        code, text = await put(api, good.read_bytes() + b"tampered")
        assert (code, text) == (500, f"{INVALID}: invalid instance manager binary\n")
        assert (await put(api, b""))[0] == 500
    publish(primary, broken_digest)
    async with serve_api(primary.settings(), primary.certs, request_reexec=reexec) as api:
        code, text = await put(api, broken.read_bytes())
        assert code == 500 and "cannot be imported" in text and "broken build" in text
        assert (await put(api, b"x", "PUT"))[0] == 500
    async with serve_api(primary.settings()) as api:  # no TLS: the operator cannot be checked
        assert (await put(api, good.read_bytes()))[0] == 401


@pytest.mark.slow
async def test_reexec_keeps_postgres_running(
    instance: Any, daemons: Any, certs: Certs, tmp_path: Path
) -> None:
    """End to end: the daemon replaces itself; the postmaster's PID does not change."""
    archive, digest = make_build(tmp_path)
    arch = [{"goArch": instance_arch(), "hash": digest}]
    cluster_status = operator_status(certs, availableArchitectures=arch)
    write_cluster(instance, api_spec(), cluster_status, {"statusPortTLS": True})
    tls_dir = instance.scratch / "certificates"
    tls_dir.mkdir(parents=True, exist_ok=True)
    for name in ("server.crt", "server.key"):
        shutil.copy(certs.directory / name, tls_dir / name)
    os.chmod(tls_dir / "server.key", 0o600)
    chown_tree(instance.scratch)
    daemon = daemons(instance)
    url = f"https://127.0.0.1:{instance.status_port}"
    context = certs.client("operator")

    async def status() -> dict[str, Any] | None:
        """/pg/status, or None while the daemon does not answer it (yet)."""
        assert daemon.proc.poll() is None, daemon.tail()
        connector = aiohttp.TCPConnector(ssl=context)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as c,
                c.get(url + "/pg/status") as r,
            ):
                return dict(json.loads(await r.text())) if r.status == 200 else None
        except aiohttp.ClientError:
            return None

    before = await eventually(status, 60, "/pg/status over TLS")
    pid = postmaster_pid(instance.pgdata)
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.status_port, ssl=context)
    body = archive.read_bytes()
    writer.write(f"PUT /update HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    writer.write(body)
    assert await asyncio.wait_for(reader.read(), 60) == b""  # no answer: EOF, as CNPG expects
    writer.close()

    async def replaced() -> dict[str, Any] | None:
        after = await status()
        return after if after and after["sessionID"] != before["sessionID"] else None

    after = await eventually(replaced, 60, "the re-executed daemon's /pg/status")
    assert after["executableHash"] == digest
    assert after["instanceManagerVersion"].startswith("9.9.9+")
    assert postmaster_pid(instance.pgdata) == pid
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
