"""The sidecar process: one grpc.aio server on ``SOCKET_DIR/<plugin name>`` until SIGTERM.

    python -m instance_manager.pgbackrest --socket-dir DIR [--name N] [--work-dir W]
        [--allow-option NAME]...

Exit status: 0 after a clean stop, 1 when it cannot serve (no pgbackrest program, socket
not bindable), 2 for a usage error or a work, lock or spool directory that is not private
to the sidecar's account.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc

from instance_manager import log
from instance_manager.errors import EXIT_FAILURE, EXIT_INVALID_SETTINGS, EXIT_OK
from instance_manager.pgbackrest import PLUGIN_NAME, PLUGIN_VERSION, workdir
from instance_manager.pgbackrest.allowlist import OptionPolicy
from instance_manager.pgbackrest.backup import BackupService
from instance_manager.pgbackrest.identity import IdentityService, health_handler
from instance_manager.pgbackrest.metrics import MetricsService
from instance_manager.pgbackrest.options import Config, ConfigError, Resolver, check_private_dirs
from instance_manager.pgbackrest.restore import RestoreService
from instance_manager.pgbackrest.runner import INFO_TIMEOUT, CommandFailed, Runner
from instance_manager.pgbackrest.sidecar import Sidecar
from instance_manager.pgbackrest.wal import WalService
from instance_manager.plugins._gen import (
    backup_pb2_grpc,
    identity_pb2_grpc,
    metrics_pb2_grpc,
    restore_job_pb2_grpc,
    wal_pb2_grpc,
)
from instance_manager.plugins.serve import listen_unix, stop_unix

_logger = log.get("pgbackrest")
# In-flight calls get this long to finish after SIGTERM; then their pgbackrest is killed
# (pgBackRest writes atomically: a killed push leaves nothing half-stored).
STOP_GRACE = 10.0
SOCKET_MODE = 0o660  # the postgres container runs as the same account (or its group)


def default_work_dir(environ: Mapping[str, str]) -> Path:
    """Lock files and the archive-async spool: CNPG's /controller/tmp if it is there."""
    controller = Path("/controller/tmp")
    if os.access(controller, os.W_OK):
        return controller / "pgbackrest-plugin"
    return Path(environ.get("TMPDIR") or tempfile.gettempdir()) / "pgbackrest-plugin"


class PluginServer:
    """The sidecar's services on one Unix socket; ``async with`` serves until the block ends."""

    def __init__(self, sidecar: Sidecar, socket_dir: Path, manifest: dict[str, str]) -> None:
        self.sidecar = sidecar
        self.socket_path = socket_dir / sidecar.name
        self.manifest = manifest
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.aio.server()
        identity = IdentityService(self.sidecar.name, self.sidecar.version, self.manifest)
        identity_pb2_grpc.add_IdentityServicer_to_server(identity, server)
        wal_pb2_grpc.add_WALServicer_to_server(WalService(self.sidecar), server)
        backup_pb2_grpc.add_BackupServicer_to_server(BackupService(self.sidecar), server)
        metrics_pb2_grpc.add_MetricsServicer_to_server(MetricsService(self.sidecar), server)
        restore_job_pb2_grpc.add_RestoreJobHooksServicer_to_server(
            RestoreService(self.sidecar), server
        )
        server.add_generic_rpc_handlers((health_handler(),))
        await listen_unix(server, self.socket_path, SOCKET_MODE)
        self._server = server
        self._share_socket()
        log.event(_logger, "plugin listening", socket=str(self.socket_path), name=self.sidecar.name)

    def _share_socket(self) -> None:
        """Usable by the socket directory's owner: as root, hand the socket to them."""
        if os.geteuid() == 0:
            owner = self.socket_path.parent.stat()
            os.chown(self.socket_path, owner.st_uid, owner.st_gid)

    async def stop(self, grace: float | None = STOP_GRACE) -> None:
        server, self._server = self._server, None
        await stop_unix(server, self.socket_path, grace)

    async def __aenter__(self) -> PluginServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="instance-manager plugin pgbackrest", description="pgBackRest CNPG-I plugin sidecar"
    )
    parser.add_argument(
        "--socket-dir",
        type=Path,
        default=Path(environ.get("PLUGIN_SOCKET_DIR") or "/plugins"),
        help="where the socket is created [env PLUGIN_SOCKET_DIR; /plugins]",
    )
    parser.add_argument("--name", default=PLUGIN_NAME, help=f"plugin name [{PLUGIN_NAME}]")
    parser.add_argument("--work-dir", type=Path, help="lock files and spool [/controller/tmp/...]")
    parser.add_argument("--pgbackrest", help="the pgbackrest program [found in PATH]")
    parser.add_argument(
        "--allow-option",
        action="append",
        default=[],
        metavar="NAME",
        help="let the Cluster's parameters set this pgBackRest option although it runs "
        "programs or names local paths (repeatable; repo-host enables repo1-host, ...)",
    )
    parser.add_argument("--pod-name", default=environ.get("POD_NAME") or socket.gethostname())
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser.parse_args(list(argv))


async def pgbackrest_version(runner: Runner, resolver: Resolver) -> str:
    """'2.45': the program runs, and which version it is."""
    config = Config(stanza="", env=resolver.base, create_stanza=False, origin="start-up")
    done = await runner.run("version", [], config, INFO_TIMEOUT)
    return done.stdout.strip().removeprefix("pgBackRest ").strip()


def prepare_resolver(args: argparse.Namespace, environ: Mapping[str, str]) -> Resolver:
    """The resolver, once the work directory and the configured lock and spool directories
    are known to be private (raises ValueError, ConfigError or workdir.UnsafeDirectory)."""
    policy = OptionPolicy(args.allow_option)
    work_dir = args.work_dir or default_work_dir(environ)
    workdir.prepare(work_dir)
    resolver = Resolver(args.name, environ, work_dir, policy)
    check_private_dirs(resolver.base)
    return resolver


async def serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    binary = args.pgbackrest or shutil.which("pgbackrest", path=environ.get("PATH"))
    if not binary:
        log.event(_logger, "no pgbackrest program in PATH", logging.ERROR)
        return EXIT_FAILURE
    try:
        resolver = prepare_resolver(args, environ)
    except (ValueError, ConfigError, workdir.UnsafeDirectory) as exc:
        log.event(_logger, "refusing to start", logging.ERROR, error=str(exc))
        return EXIT_INVALID_SETTINGS
    runner = Runner(binary)
    try:
        version = await pgbackrest_version(runner, resolver)
    except CommandFailed as exc:
        log.event(_logger, "pgbackrest does not run", logging.ERROR, error=str(exc))
        return EXIT_FAILURE
    sidecar = Sidecar(args.name, PLUGIN_VERSION, runner, resolver, args.pod_name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.event(
        _logger,
        "starting",
        pgbackrest=binary,
        version=version,
        work_dir=str(resolver.work_dir),
        allowed_options=sorted(resolver.policy.enabled),
    )
    async with PluginServer(sidecar, args.socket_dir, {"pgbackrestVersion": version}):
        await stop.wait()
    log.event(_logger, "stopped")
    return EXIT_OK


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    try:
        args = parse_args(argv, env)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID_SETTINGS
    log.setup(args.pod_name, getattr(logging, args.log_level.upper()))
    try:
        return asyncio.run(serve(args, env))
    except OSError as exc:
        log.event(_logger, "cannot serve", logging.ERROR, error=str(exc))
        return EXIT_FAILURE
