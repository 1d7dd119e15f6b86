"""A real daemon with its three HTTP ports, and what openapi.json says about each path.

The status port has TLS and the Cluster pins the test operator's certificate, so every
operator endpoint can be reached; the local API and the metrics port are plain HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from instance_manager.web.server import OPENAPI_FILE
from tests.api_helpers import Certs, api_spec, make_certs, operator_status, write_cluster
from tests.conftest import make_root
from tests.daemon import (
    Daemon,
    Instance,
    chown_tree,
    copy_pgdata,
    kill_postgres,
    postmaster_pid,
    rmtree,
    wait_for,
)

DOC: dict[str, Any] = json.loads(OPENAPI_FILE.read_text())
OPERATIONS = ("get", "put", "post", "delete", "patch")
SERVERS = ("status", "local", "metrics")


def servers_of(path: str) -> set[str]:
    """The servers that serve a documented path (/openapi.json: both API servers)."""
    if path == "/openapi.json":
        return {"status", "local"}
    servers = DOC["paths"][path].get("servers")
    if not servers:
        return {"status"}
    return {"metrics" if servers[0]["url"].endswith(":9187") else "local"}


def server_of(path: str) -> str:
    return min(servers_of(path))  # "local" < "status" for /openapi.json: either will do


def documented_path(path: str) -> str | None:
    """The openapi.json path a request path matches (``/cache/x`` -> ``/cache/{key}``)."""
    if path in DOC["paths"]:
        return path
    return "/cache/{key}" if path.startswith("/cache/") else None  # any key, "" included


def json_body_operations() -> list[tuple[str, str]]:
    """(path, METHOD) of every operation whose request body is JSON."""
    return [
        (path, method.upper())
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if method in OPERATIONS
        and "application/json" in op.get("requestBody", {}).get("content", {})
    ]


def read_only_paths() -> list[str]:
    """Paths with a GET operation only, and not marked ``x-any-method``."""
    return [
        path
        for path, item in DOC["paths"].items()
        if {m for m in item if m in OPERATIONS} == {"get"} and not item.get("x-any-method")
    ]


def target(path: str) -> str:
    """A request target for a documented path: a real cache key, /pg/backup's name."""
    return path.replace("{key}", "cluster") + ("?name=x" if path == "/pg/backup" else "")


@dataclass
class Served:
    inst: Instance
    daemon: Daemon
    certs: Certs

    def port(self, server: str) -> int:
        return {
            "status": self.inst.status_port,
            "local": self.inst.local_port,
            "metrics": self.inst.metrics_port,
        }[server]

    def connection(self, server: str, who: str | None = "operator") -> http.client.HTTPConnection:
        port = self.port(server)
        if server == "status":
            context = self.certs.client(who)
            return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(
        self,
        server: str,
        method: str,
        target: str,
        body: bytes | None = None,
        who: str | None = "operator",
    ) -> tuple[int, http.client.HTTPMessage, str]:
        conn = self.connection(server, who)
        try:
            conn.request(method, target, body=body)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def answers(self) -> bool:
        try:
            return self.request("status", "GET", "/readyz")[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def errors(self, since: int = 0) -> list[dict[str, Any]]:
        """The error-level lines, from line ``since`` of the log on."""
        return [line for line in self.daemon.lines()[since:] if line.get("level") == "error"]


@contextlib.contextmanager
def tls_daemon(template_pgdata: Path, *extra: str) -> Iterator[Served]:
    """A ready primary (``extra``: more command-line options); stopped cleanly (exit 0)."""
    root = make_root()
    inst = Instance(root)
    copy_pgdata(template_pgdata, inst.pgdata)
    certs = make_certs(root / "certs")
    write_cluster(inst, api_spec(), operator_status(certs), {"statusPortTLS": True})
    tls_dir = inst.scratch / "certificates"
    tls_dir.mkdir(parents=True)
    for name in ("server.crt", "server.key"):
        shutil.copy(certs.directory / name, tls_dir / name)
    (tls_dir / "server.key").chmod(0o600)
    chown_tree(inst.scratch)
    daemon = Daemon(inst, *extra)
    served = Served(inst, daemon, certs)
    try:
        wait_for(served.answers, 60, "the TLS status port to answer /readyz")
        wait_for(lambda: daemon.find("metrics server listening"), 30, "the metrics server")
        yield served
        assert daemon.stop() == 0, daemon.tail()
    finally:
        daemon.kill()
        kill_postgres(inst.pgdata)
        rmtree(root)


# Not installed: a postmaster configured to preload it exits at once ("could not access file").
MISSING_LIBRARY = "no_such_library"
# Lines a postmaster that cannot start makes the daemon log at error level.
POSTGRES_DOWN_ERRORS = frozenset({"postmaster exited unexpectedly"})


@contextlib.contextmanager
def tls_daemon_postgres_down(template_pgdata: Path) -> Iterator[Served]:
    """The daemon serving while PostgreSQL is down, as production gets there in standalone
    mode (``--on-postmaster-exit restart``): a running primary's Cluster gains a preloaded
    library the image lacks (a restart parameter: PostgreSQL keeps running without it, as
    the update is supervised), then the postmaster dies (SIGKILL, as from the OOM killer).
    Every restart the daemon makes exits at once, so PostgreSQL stays down and the daemon
    retries with a growing back-off, serving meanwhile. Exits 0 when stopped during the
    back-off. (Unsupervised, the daemon's own restart in place, within a second, would race
    with the kill: on a slow machine it came first, and no postmaster was left to kill.)"""
    with tls_daemon(template_pgdata, "--on-postmaster-exit", "restart") as served:
        inst, daemon = served.inst, served.daemon
        doc = yaml.safe_load(inst.config_file.read_text())
        doc["spec"]["primaryUpdateStrategy"] = "supervised"
        doc["spec"]["postgresql"]["shared_preload_libraries"] = [MISSING_LIBRARY]
        inst.config_file.write_text(yaml.safe_dump(doc))
        daemon.wait_log("configuration applied; some parameters need a restart")
        pid = postmaster_pid(inst.pgdata)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        daemon.wait_log("restarting PostgreSQL after back-off", 30, count=2)  # one restart failed
        wait_for(lambda: served.request("status", "GET", "/readyz")[0] == 500, 10, "/readyz 500")
        yield served
