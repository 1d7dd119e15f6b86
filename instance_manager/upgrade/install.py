"""Online upgrade of the instance manager, PostgreSQL staying up (CNPG's ``PUT /update``).

1. The build (see build.py) is streamed to ``SCRATCH/manager/upload-*.pyz``
   (``SCRATCH/manager`` is 0700, the daemon's alone) while its SHA-256 is computed.
2. The hash must equal ``status.availableArchitectures[goArch == ours].hash`` of the
   Cluster, as in CNPG: the operator publishes the hash of what it is allowed to install.
3. The build is unpacked beside the others and imported by a fresh interpreter.
4. It is installed atomically (``SCRATCH/manager/<sha256>``, then ``current``); builds
   older than the one it replaces are removed; a build
   installed before is reused only while it still matches its hash, and cli.py checks it
   once more right before it re-executes into it.
5. ``request_reexec(argv)`` asks the supervisor to re-execute the daemon from the new build
   once it has wound down, leaving the postmaster running (the new daemon adopts it through
   its pidfile). It returns once the re-exec is scheduled, or raises when it is refused:
   then ``current`` goes back to the previous build and this version keeps serving.

One upgrade at a time: ``upgrading`` stays true from the first byte until the process is
replaced, or until the upgrade fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path

from instance_manager import log
from instance_manager.process import spawn
from instance_manager.process.privileges import UnsafeDirectory, private_directory
from instance_manager.settings import Settings
from instance_manager.upgrade import build

ReexecRequest = Callable[[list[str]], Awaitable[None]]
MAX_BUILD_SIZE = 256 * 1024 * 1024
IMPORT_CHECK_TIMEOUT = 60.0  # a cold interpreter importing aiohttp, psycopg, grpc
_logger = log.get("upgrade")


class UpdateError(Exception):
    pass


class UpdateRefused(UpdateError):
    """The request cannot be honoured as sent (not the published build, none published, empty,
    too large, cut off): the client's fault, not the daemon's."""


class AlreadyUpgrading(UpdateError):
    """Another upgrade is under way."""


def expected_hash(settings: Settings, arch: str) -> str:
    """The hash the operator published for our architecture (CNPG's check)."""
    for entry in settings.cluster.status.get("availableArchitectures") or []:
        if isinstance(entry, dict) and entry.get("goArch") == arch:
            return str(entry.get("hash") or "")
    raise UpdateRefused(f"while validating instance manager binary: missing architecture {arch}")


class Upgrader:
    def __init__(
        self,
        settings: Callable[[], Settings],
        request_reexec: ReexecRequest | None,
        argv: list[str] | None = None,
        max_size: int = MAX_BUILD_SIZE,
    ) -> None:
        self._settings = settings
        self._request_reexec = request_reexec
        self._argv = list(argv if argv is not None else sys.argv)
        self.max_size = max_size
        self.upgrading = False

    def root(self) -> Path:
        return self._settings().instance.scratchDir / "manager"

    async def upgrade(self, chunks: AsyncIterable[bytes]) -> None:
        """Receive the build from ``chunks``, check, install, and schedule the re-exec.

        Returns once the re-exec is scheduled. AlreadyUpgrading, UpdateRefused, UpdateError
        or OSError (disk full...) otherwise, the failure logged and this version serving on.
        """
        if self.upgrading:
            raise AlreadyUpgrading("instance manager is already upgrading")
        self.upgrading = True
        try:
            await self._upgrade(chunks)
        except (UpdateError, OSError) as exc:
            self.upgrading = False
            level = logging.WARNING if isinstance(exc, UpdateRefused) else logging.ERROR
            log.event(_logger, "online upgrade failed", level, error=str(exc))
            raise
        except BaseException:
            self.upgrading = False
            raise

    async def _upgrade(self, chunks: AsyncIterable[bytes]) -> None:
        if self._request_reexec is None:
            raise UpdateError("online upgrade is not available in this instance manager")
        root = self.root()
        try:
            await asyncio.to_thread(private_directory, root)
        except UnsafeDirectory as exc:
            raise UpdateError(str(exc)) from None
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, prefix="upload-", suffix=".pyz", dir=root
        )
        upload = Path(name)
        staged = root / f".staged-{upload.stem}"
        try:
            digest = await self._receive(chunks, fd)
            want = expected_hash(self._settings(), build.instance_arch())
            if digest != want:
                log.event(_logger, "received an invalid build", logging.WARNING, hash=digest)
                raise UpdateRefused(
                    "while validating instance manager binary: invalid instance manager binary"
                )
            version = await self._check(upload, staged)
            log.event(_logger, "received a new instance manager", hash=digest, version=version)
            await self._install_and_reexec(root, staged, upload, digest)
        finally:
            await asyncio.to_thread(_remove, upload, staged)

    async def _receive(self, chunks: AsyncIterable[bytes], fd: int) -> str:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_size:
                    raise UpdateRefused(f"the build is larger than {self.max_size} bytes")
                h.update(chunk)
                await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(_sync, out)
        if size == 0:
            raise UpdateRefused("empty request body: no build received")
        return h.hexdigest()

    async def _check(self, upload: Path, staged: Path) -> str:
        try:
            await asyncio.to_thread(build.unpack, upload, staged)
        except build.BuildError as exc:
            raise UpdateError(f"while unpacking the build: {exc}") from exc
        argv = [sys.executable, "-I", "-c", build.IMPORT_CHECK, str(staged)]
        try:
            code, out = await spawn.run(
                argv, env=spawn.base_env(), timeout=IMPORT_CHECK_TIMEOUT, check=False
            )
        except TimeoutError:
            raise UpdateError("the new build did not import in time") from None
        if code != 0:
            tail = " | ".join(out.strip().splitlines()[-3:])
            raise UpdateError(f"the new build cannot be imported: {tail}")
        return out.strip().splitlines()[-1] if out.strip() else ""

    async def _install_and_reexec(
        self, root: Path, staged: Path, upload: Path, digest: str
    ) -> None:
        assert self._request_reexec is not None
        previous = await asyncio.to_thread(build.current, root)
        target = await asyncio.to_thread(build.install, staged, root, digest, upload)
        # Kept: this build and the one it replaces (the re-exec may still fail).
        keep = {digest} | ({previous} if previous else set())
        removed = await asyncio.to_thread(build.prune, root, keep)
        if removed:
            log.event(_logger, "removed older builds", builds=removed)
        argv = build.reexec_argv(target, self._argv)
        try:
            await self._request_reexec(argv)
        except Exception as exc:
            await asyncio.to_thread(build.point_current, root, previous)
            raise UpdateError(f"while replacing instance manager process: {exc}") from exc
        log.event(_logger, "re-executing from the new build", argv=argv)


def _sync(out: object) -> None:
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()
    os.fsync(out.fileno())  # type: ignore[attr-defined]


def _remove(upload: Path, staged: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        upload.unlink()
    shutil.rmtree(staged, ignore_errors=True)
