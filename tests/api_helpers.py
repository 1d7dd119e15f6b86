"""Helpers for the API tests: certificates (openssl), settings, in-process servers, clients.

The API components run inside the test process (as root) against the PostgreSQL that a real
daemon runs; the root account reaches it over the daemon's Unix socket through an extra
pg_ident line (``local root postgres``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml

from instance_manager import settings as settings_mod
from instance_manager.backup.plugin import PluginBackups
from instance_manager.postgres.sql import Session
from instance_manager.settings import Settings
from instance_manager.state import InstanceState
from instance_manager.upgrade.install import ReexecRequest
from instance_manager.web.liveness import Liveness
from instance_manager.web.local_api import LocalApi
from instance_manager.web.operator import OperatorApi
from instance_manager.web.probes import Checker
from instance_manager.web.server import build_app, build_local_app, serve
from instance_manager.web.tls import ServerTLS
from tests.daemon import PG_BIN, TEST_HBA, Daemon, Instance, base_spec, free_port, wait_for

OPENSSL = "/usr/bin/openssl"


def api_spec(**overrides: Any) -> dict[str, Any]:
    spec = base_spec(**overrides)
    spec["postgresql"].setdefault("pg_ident", []).append("local root postgres")
    return spec


def write_cluster(
    inst: Instance,
    spec: dict[str, Any],
    status: dict[str, Any] | None,
    instance: dict[str, Any] | None = None,
) -> None:
    """The settings file: a Cluster with a status, and optionally an ``instance`` section."""
    inst.spec = spec
    doc: dict[str, Any] = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "test"},
        "spec": spec,
        "status": status or {},
    }
    if instance:
        doc["instance"] = instance
    inst.config_file.write_text(yaml.safe_dump(doc))


def load_settings(inst: Instance, **options: Any) -> Settings:
    flags = {
        "pgData": str(inst.pgdata),
        "scratchDir": str(inst.scratch),
        "port": inst.pg_port,
        "podName": "test-1",
        "pluginSocketDir": str(inst.root / "plugins"),
        **options,
    }
    return settings_mod.load(inst.config_file, {}, flags)


# -- certificates ----------------------------------------------------------------------------


def _run(*argv: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(argv, input=stdin, capture_output=True, check=True).stdout


def self_signed(directory: Path, name: str, *, rsa: bool = False, ip: str = "") -> Path:
    """``name.crt`` and ``name.key`` in ``directory`` (an EC P-256 key unless ``rsa``)."""
    key_type = ["rsa:2048"] if rsa else ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    extra = ["-addext", f"subjectAltName=IP:{ip}"] if ip else []
    _run(OPENSSL, "req", "-x509", "-newkey", *key_type, "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", str(directory / f"{name}.key"),
         "-out", str(directory / f"{name}.crt"), *extra)  # fmt: skip
    return directory / f"{name}.crt"


def openssl_fingerprint(certificate: Path) -> str:
    """SHA-256 of the SubjectPublicKeyInfo, computed by openssl (independently of our code)."""
    pem = _run(OPENSSL, "x509", "-in", str(certificate), "-pubkey", "-noout")
    der = _run(OPENSSL, "pkey", "-pubin", "-outform", "DER", stdin=pem)
    return hashlib.sha256(der).hexdigest()


@dataclass
class Certs:
    directory: Path
    server: Path
    operator: Path
    intruder: Path
    fingerprint: str  # the operator's

    def client(self, who: str | None = "operator", tls12: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server))
        context.check_hostname = False
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        if who is not None:
            context.load_cert_chain(
                str(self.directory / f"{who}.crt"), str(self.directory / f"{who}.key")
            )
        return context


def make_certs(directory: Path) -> Certs:
    directory.mkdir(exist_ok=True)
    server = self_signed(directory, "server", ip="127.0.0.1")
    operator = self_signed(directory, "operator")
    intruder = self_signed(directory, "intruder")
    return Certs(directory, server, operator, intruder, openssl_fingerprint(operator))


# -- a standby of the daemon's primary ---------------------------------------------------------


def _ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


@dataclass
class Standby:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def conninfo(self) -> str:
        return f"host={self.root / 'run'} port={self.port} user=postgres dbname=postgres"

    def settings(self) -> Settings:
        flags = {"pgData": str(self.data), "scratchDir": str(self.root), "port": self.port}
        return settings_mod.load(None, {}, {**flags, "podName": "test-2"})


def start_standby(root: Path, primary_port: int, application_name: str) -> Standby:
    """A streaming standby connected as streaming_replica, like a CNPG replica."""
    data, run = root / "data", root / "run"
    root.mkdir()
    run.mkdir()
    for path in (root, run):
        os.chown(path, *_ids())
    as_postgres: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []}
    subprocess.run(
        [str(PG_BIN / "pg_basebackup"), "-D", str(data), "-h", "127.0.0.1",
         "-p", str(primary_port), "-U", "postgres", "-X", "stream", "-c", "fast"],
        check=True, capture_output=True, **as_postgres,
    )  # fmt: skip
    (data / "pg_hba.conf").write_text("local all all trust\n")
    (data / "override.conf").write_text(
        f"primary_conninfo = 'host=127.0.0.1 port={primary_port} user=streaming_replica "
        f"application_name={application_name}'\n"
    )
    (data / "standby.signal").touch()
    for name in ("pg_hba.conf", "override.conf", "standby.signal"):
        os.chown(data / name, *_ids())
    port = free_port()
    proc = subprocess.Popen(
        [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"port={port}",
         "-c", "listen_addresses=", "-c", f"unix_socket_directories={run}",
         "-c", "logging_collector=off", "-c", "archive_mode=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_postgres,
    )  # fmt: skip
    standby = Standby(root, port, proc)
    wait_for(lambda: _accepts(standby.conninfo()), 60, "the standby to accept connections")
    return standby


def _accepts(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


# -- in-process servers ---------------------------------------------------------------------


@dataclass
class Api:
    """The operator API (and the local API) of one instance, served by this process."""

    settings: Settings
    state: InstanceState
    session: Session
    operator: OperatorApi
    local: LocalApi
    status_port: int
    local_port: int
    certs: Certs | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def base(self) -> str:
        scheme = "https" if self.certs else "http"
        return f"{scheme}://127.0.0.1:{self.status_port}"

    @property
    def local_base(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def client(self, who: str | None = "operator") -> aiohttp.ClientSession:
        ssl_context: ssl.SSLContext | bool = False
        if self.certs is not None:
            ssl_context = self.certs.client(who)
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


@contextlib.asynccontextmanager
async def serve_api(
    settings: Settings,
    certs: Certs | None = None,
    *,
    request_reexec: ReexecRequest | None = None,
    argv: list[str] | None = None,
    state: InstanceState | None = None,
) -> AsyncIterator[Api]:
    state = state or InstanceState(postmaster_running=True, is_primary=True)
    session = Session(settings)
    operator = OperatorApi(
        lambda: settings, state, session, request_reexec=request_reexec, argv=argv,
    )  # fmt: skip
    local = LocalApi(lambda: settings, PluginBackups(lambda: settings))
    context = None
    if certs is not None:
        context = await ServerTLS(certs.server, certs.directory / "server.key").start()
    api = Api(settings, state, session, operator, local, free_port(), free_port(), certs)
    started, local_started = asyncio.Event(), asyncio.Event()
    checker = Checker(lambda: settings, state, session)
    app = build_app(checker, Liveness(lambda: settings), operator)
    loop = asyncio.get_running_loop()
    api.tasks.append(loop.create_task(serve(app, "127.0.0.1", api.status_port, context,
                                            started=started)))  # fmt: skip
    api.tasks.append(loop.create_task(serve(build_local_app(local), "127.0.0.1", api.local_port,
                                            started=local_started)))  # fmt: skip
    await asyncio.wait_for(asyncio.gather(started.wait(), local_started.wait()), 10)
    try:
        yield api
    finally:
        for task in api.tasks:
            task.cancel()
        await asyncio.gather(*api.tasks, return_exceptions=True)
        await operator.close()
        await local.backups.close()
        await session.close()


@pytest.fixture
def certs(tmp_root: Path) -> Iterator[Certs]:
    yield make_certs(tmp_root / "certs")


@dataclass
class Primary:
    inst: Instance
    daemon: Daemon
    certs: Certs

    def settings(self, **options: Any) -> Settings:
        return load_settings(self.inst, **options)

    def conninfo(self) -> str:
        return self.inst.conninfo()


def operator_status(certs: Certs, **extra: Any) -> dict[str, Any]:
    return {
        "operatorCertificateFingerprint": certs.fingerprint,
        "targetPrimary": "test-1",
        "currentPrimary": "test-1",
        **extra,
    }


@pytest.fixture
def primary(instance: Instance, daemons: Any, certs: Certs) -> Iterator[Primary]:
    """A daemon-run primary whose cluster status pins the test operator's certificate."""
    write_cluster(instance, api_spec(), operator_status(certs))
    daemon = daemons(instance)
    daemon.wait_ready()
    yield Primary(instance, daemon, certs)
    daemon.stop()


def pg(conninfo: str, query: str) -> Any:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(query)
        row = cursor.fetchone() if cursor.description else None
        return row[0] if row else None


__all__ = ["TEST_HBA"]
