"""A real Kubernetes API server for the tests: kube-apiserver v1.20 and etcd on loopback.

``kube_apiserver`` (session scope) builds or finds the binary (container/kube-apiserver.sh),
starts etcd and kube-apiserver on free ports of 127.0.0.1, installs the Cluster CRD
(container/kubernetes/cluster-crd.yaml) and yields an ``ApiServer``: where it listens, the
files a daemon needs to reach it (readable by the ``postgres`` account), and small
synchronous JSON helpers (tests/kube_api.py) with which a test plays the operator. Both
processes are stopped and their directories removed at the end of the session; they also die
with the test process if it is killed.

Use it with ``from tests.kube_kit import kube_apiserver as kube_apiserver`` and mark the test
``@pytest.mark.kube`` and ``@pytest.mark.slow``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon import free_port
from tests.kube_api import CRD_PATH, GROUP_PATH, ApiServer, KubeApiError

__all__ = ["CRD_PATH", "ApiServer", "KubeApiError", "kube_apiserver"]

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "container" / "kube-apiserver.sh"
CRD_FILE = REPO / "container" / "kubernetes" / "cluster-crd.yaml"
QUORUM_CRD_FILE = REPO / "container" / "kubernetes" / "failoverquorum-crd.yaml"
ETCD = "/usr/bin/etcd"
BUILD_TIMEOUT = 1800.0  # a cold build takes about 5 minutes on 2 cores
START_TIMEOUT = 90.0  # ready in ~7 s when the machine is idle; it is often not


def apiserver_binary() -> str:
    """The kube-apiserver binary: built by container/kube-apiserver.sh unless cached."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({result.returncode}): {result.stderr[-3000:]}")
    return lines[-1]


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, so no server outlives a killed run."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Servers:
    """etcd and kube-apiserver, each in its own process group with a log file."""

    def __init__(self) -> None:
        self.private = Path(tempfile.mkdtemp(prefix="kube", dir="/tmp"))  # 0700
        self.public = Path(tempfile.mkdtemp(prefix="kubepub", dir="/tmp"))
        os.chmod(self.public, 0o755)  # the daemon (postgres) reads the token and CA here
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.token = secrets.token_urlsafe(24)
        self.etcd_port = free_port()
        self.port = free_port()

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.private / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # the test process starts no threads
                cwd=self.private,
            )
        self.processes.append((proc, log))
        return proc

    def start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        data = self.private / "etcd"
        data.mkdir(mode=0o700)
        self.spawn(
            "etcd",
            [
                ETCD,
                "--name=kit",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kit={peer}",
                "--log-level=warn",
            ],
        )

    def start_apiserver(self, binary: str) -> None:
        key = self.private / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        auth = self.private / "tokens.csv"
        auth.write_text(f"{self.token},admin,admin,system:masters\n")
        self.spawn(
            "kube-apiserver",
            [
                binary,
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--token-auth-file={auth}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--cert-dir={self.private / 'certs'}",
                "--service-cluster-ip-range=10.96.0.0/16",
            ],
        )

    def check_running(self) -> None:
        for proc, log in self.processes:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{log.stem} exited with {proc.returncode}:\n{tail}")

    def wait(self, probe: Any, what: str, deadline: float) -> Any:
        """Poll ``probe`` until it returns something true, checking the processes live."""
        while True:
            self.check_running()
            value = probe()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise RuntimeError(f"timed out waiting for {what}; logs in {self.private}")
            time.sleep(0.1)

    def etcd_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def serving_cert(self) -> Path | None:
        """The self-signed certificate (and its CA) kube-apiserver wrote into --cert-dir."""
        found = sorted((self.private / "certs").glob("*.crt"))
        return found[0] if found else None

    def publish(self, cert: Path) -> ApiServer:
        """Copy the CA and the token where the postgres account can read them."""
        ca_file = self.public / "ca.crt"
        token_file = self.public / "token"
        shutil.copyfile(cert, ca_file)
        token_file.write_text(self.token)
        for path in (ca_file, token_file):
            os.chmod(path, 0o644)
        return ApiServer(self.port, self.token, ca_file, token_file)

    def stop(self) -> None:
        for proc, _ in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self.processes.clear()
        shutil.rmtree(self.private, ignore_errors=True)
        shutil.rmtree(self.public, ignore_errors=True)


def _ready(api: ApiServer) -> bool:
    try:
        return api.text("GET", "/readyz", timeout=3).strip() == "ok"
    except (KubeApiError, OSError):
        return False


def _answers(api: ApiServer, path: str) -> bool:
    try:
        api.get(path)
    except (KubeApiError, OSError):
        return False
    return True


def install_crd(servers: Servers, api: ApiServer, deadline: float) -> None:
    """Create our CRDs (the Cluster's and the FailoverQuorum's) and wait until each is
    Established and its resource is served."""
    for crd_file in (CRD_FILE, QUORUM_CRD_FILE):
        crd = yaml.safe_load(crd_file.read_text())
        api.create(CRD_PATH, crd)
        path = f"{CRD_PATH}/{crd['metadata']['name']}"
        plural = crd["spec"]["names"]["plural"]

        def established(path: str = path) -> bool:
            conditions = api.get(path).get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        servers.wait(established, f"the {plural} CRD to be Established", deadline)
        servers.wait(
            lambda p=plural: _answers(api, f"{GROUP_PATH}/{p}"), f"{plural} served", deadline
        )


def start(binary: str) -> tuple[Servers, ApiServer]:
    """Start etcd and kube-apiserver, install the CRD; the caller stops ``Servers``."""
    servers = Servers()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        servers.start_etcd()
        servers.wait(servers.etcd_healthy, "etcd to be healthy", deadline)
        servers.start_apiserver(binary)
        cert = servers.wait(servers.serving_cert, "the serving certificate", deadline)
        api = servers.publish(cert)
        servers.wait(lambda: _ready(api), "kube-apiserver /readyz", deadline)
        install_crd(servers, api, deadline)
    except BaseException:
        servers.stop()
        raise
    return servers, api


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[ApiServer]:
    """A running kube-apiserver with the Cluster CRD installed (see the module docstring)."""
    servers, api = start(apiserver_binary())
    try:
        yield api
    finally:
        servers.stop()
