"""Command line: ``instance-manager run`` and friends. Maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instance_manager.errors import (
    EXIT_FAILURE,
    EXIT_INVALID_SETTINGS,
    InstanceManagerError,
    SettingsError,
)

if TYPE_CHECKING:
    from instance_manager.kube.start import Found
    from instance_manager.process.signals import Signals
    from instance_manager.settings import Settings


# Packages whose names are imported on first use (process/lazy.py): the daemon serves
# HTTP with aiohttp.web and never loads aiohttp's client half in standalone mode, and it
# needs only the Rust watcher of watchfiles, not its anyio-based API.
LAZY_LIBRARIES = ("aiohttp", "watchfiles")

# flag destination -> settings field (None values are "not given")
_RUN_FLAGS = {
    "pg_data": "pgData",
    "wal_dir": "walDir",
    "pod_name": "podName",
    "cluster_name": "clusterName",
    "namespace": "namespace",
    "pg_port": "port",
    "status_host": "statusHost",
    "status_port": "statusPort",
    "metrics_port": "metricsPort",
    "local_port": "localPort",
    "scratch_dir": "scratchDir",
    "plugin_socket_dir": "pluginSocketDir",
    "pg_bin": "pgBin",
    "on_postmaster_exit": "onPostmasterExit",
    "listen_addresses": "listenAddresses",
    "user": "user",
    "plugin_timeout": "pluginTimeout",
}


def _run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="supervise PostgreSQL (the pod's PID 1)")
    run.add_argument("--config", type=Path, help="Cluster resource (YAML or JSON)")
    run.add_argument("--pg-data", help="data directory [env PGDATA]")
    run.add_argument(
        "--wal-dir",
        help="pg_wal outside PGDATA [/var/lib/postgresql/wal/pg_wal with spec.walStorage]",
    )
    run.add_argument("--pod-name", help="this instance's name [env POD_NAME; host name]")
    run.add_argument("--cluster-name", help="cluster name [env CLUSTER_NAME]")
    run.add_argument("--namespace", help="namespace [env NAMESPACE]")
    run.add_argument("--pg-port", type=int, help="PostgreSQL port [env PGPORT; 5432]")
    run.add_argument("--listen-addresses", help="PostgreSQL listen_addresses ['*']")
    run.add_argument("--status-host", help="address of the status server [all]")
    run.add_argument("--status-port", type=int, help="probes and operator API [8000]")
    run.add_argument("--metrics-port", type=int, help="Prometheus metrics [9187]")
    run.add_argument("--local-port", type=int, help="localhost-only API [8010]")
    run.add_argument("--scratch-dir", help="run/, log/, tmp/ live here [/controller]")
    run.add_argument("--plugin-socket-dir", help="CNPG-I sockets [env PLUGIN_SOCKET_DIR; /plugins]")
    run.add_argument("--pg-bin", help="directory of the PostgreSQL programs [auto-detected]")
    run.add_argument(
        "--on-postmaster-exit",
        choices=["exit", "restart"],
        help="after an unexpected postmaster exit [exit in Kubernetes, else restart]",
    )
    run.add_argument("--user", help="account to run as when started as root [postgres]")
    run.add_argument(
        "--plugin-timeout", type=float, help="deadline of one CNPG-I plugin call, seconds [60]"
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _status_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="print this instance's /pg/status", add_help=False)
    status.add_argument("rest", nargs=argparse.REMAINDER)


def _wal_parsers(sub: Any) -> None:
    help_socket = "the daemon's WAL socket [SCRATCH/run/wal/instance-manager.sock]"
    archive = sub.add_parser("wal-archive", help="archive_command: archive one WAL file (%%p)")
    archive.add_argument("path")
    restore = sub.add_parser("wal-restore", help="restore_command: restore one WAL file (%%f %%p)")
    restore.add_argument("--rewind", action="store_true", help="pg_rewind is asking")
    restore.add_argument("name")
    restore.add_argument("path")
    for parser in (archive, restore):
        parser.add_argument("--scratch-dir", default=os.environ.get("SCRATCH_DIR", "/controller"))
        parser.add_argument("--socket", help=help_socket)
        # CNPG's flags, accepted for compatibility: the daemon knows these already.
        parser.add_argument("--pod-name", help=argparse.SUPPRESS)
        parser.add_argument("--pg-data", help=argparse.SUPPRESS)
        parser.add_argument("--log-destination", help=argparse.SUPPRESS)


def wal_command(args: argparse.Namespace) -> int:
    from instance_manager.postgres.config import wal_socket_in
    from instance_manager.wal import thin

    sock = args.socket or str(wal_socket_in(Path(args.scratch_dir)))
    if args.command == "wal-archive":
        return thin.main(["wal-archive", "--socket", sock, args.path])
    rewind = ["--rewind"] if args.rewind else []
    return thin.main(["wal-restore", "--socket", sock, *rewind, args.name, args.path])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; for ``run`` (the daemon's start) all but switchover/failover,
    whose module and its imports would delay PostgreSQL's launch."""
    parser = argparse.ArgumentParser(prog="instance-manager", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _wal_parsers(sub)
    sub.add_parser("plugin", help="CNPG-I plugin sidecar: plugin pgbackrest --socket-dir DIR")
    _status_parser(sub)
    if command != "run":
        from instance_manager.cluster import cli as cluster_cli

        cluster_cli.add_parsers(sub)
    sub.add_parser("version", help="print the version")
    return parser


def _install_manager(current: Settings) -> None:
    """The program archive_command and restore_command run (see wal/install.py)."""
    from instance_manager.postgres import config
    from instance_manager.wal import install

    target = config.manager_path(current)
    try:
        install.install(target, config.wal_socket(current), config.wal_deadline(current))
    except OSError as exc:
        raise SettingsError(f"cannot install {target}: {exc}") from exc


def prepare_imports() -> None:
    """How the daemon loads its libraries, set before any of them is imported: aiohttp and
    watchfiles by the piece, psycopg's version modules without importlib.metadata, and
    frozenlist (aiohttp's signals, a few lists built once) in its pure-Python form, whose
    C++ build would map libstdc++ (~0.9 MiB of RSS). Children do not inherit the variable:
    process/spawn.py passes them an explicit environment."""
    from instance_manager.process import distversion, lazy

    lazy.register(LAZY_LIBRARIES)
    distversion.register()
    os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")


def run_command(args: argparse.Namespace) -> int:
    # Whatever the daemon creates (sockets, spools, uploads) is private to its account;
    # PostgreSQL sets its own umask from the data directory's mode.
    os.umask(0o077)
    from instance_manager.process.signals import Signals

    signals = Signals()
    signals.install_early()  # before anything slow: PID 1 drops unhandled signals
    prepare_imports()

    from instance_manager import log, settings
    from instance_manager.process import privileges

    flags = {field: getattr(args, dest) for dest, field in _RUN_FLAGS.items()}

    def load() -> settings.Settings:
        return settings.load(args.config, os.environ, flags)

    current = load()
    log.setup(current.instance.podName, getattr(logging, args.log_level.upper()))
    kube = None
    if current.kubernetes:  # the Cluster comes from the API server: wait for it first
        from instance_manager.kube import start

        current, kube = start.fetch(current, os.environ)
    if current.instance.statusPortTLS:
        from instance_manager.web.tls import check_client_certificates

        check_client_certificates()  # exit 2 before anything is touched
    privileges.prepare(current)
    _install_manager(current)

    return _supervise(current, load, signals, args.config, kube)


def _supervise(
    current: Settings,
    load: Callable[[], Settings],
    signals: Signals,
    config_file: Path | None,
    kube: Found | None,
) -> int:
    """Run the supervisor until it stops; after ``PUT /update``, re-execute into the new
    build (PostgreSQL still runs, and the new build adopts it through its pidfile)."""
    import asyncio

    from instance_manager import log
    from instance_manager.supervisor import Supervisor

    while True:
        supervisor = Supervisor(current, load, signals, config_file, kube)
        code = asyncio.run(supervisor.run())
        if supervisor.reexec_argv is None:
            return code
        from instance_manager.upgrade import build

        sys.stdout.flush()
        sys.stderr.flush()
        try:
            build.exec_installed(supervisor.reexec_argv)  # checks the build's files first
        except (OSError, build.BuildError) as exc:
            # Never leave PostgreSQL without a supervisor: this build adopts it again.
            log.event(
                logging.getLogger("instance-manager"),
                "cannot re-execute into the new build; supervising with this one",
                level=logging.ERROR,
                error=str(exc),
            )


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:2] == ["plugin", "pgbackrest"]:  # the sidecar parses its own flags
        from instance_manager.pgbackrest import main as pgbackrest_main

        return pgbackrest_main(raw[2:])
    args = build_parser(raw[0] if raw else None).parse_args(raw)
    if args.command == "version":
        from instance_manager import __version__

        print(__version__)
        return 0
    if args.command in ("wal-archive", "wal-restore"):
        return wal_command(args)
    if args.command == "status":
        from instance_manager import status_cli

        return status_cli.main(args.rest)
    if args.command in ("switchover", "failover"):
        from instance_manager.cluster import cli as cluster_cli

        return cluster_cli.main(args)
    try:
        code = run_command(args)
    except InstanceManagerError as exc:
        print(f"instance-manager: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    # PostgreSQL is stopped and every component has cleaned up: skip the interpreter's
    # finalisation (joining idle library threads, tearing down modules), which takes
    # 50-150 ms a container's shutdown would otherwise wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["EXIT_INVALID_SETTINGS", "main"]
