"""Running the instance image (container/build.sh) with podman, as a pod would run it.

Podman is used as ``../shared/reference/containers.md`` says works on this machine: the vfs
storage driver, runc, cgroupfs, the host's network, and a containers.conf with no default
ulimits. A :class:`Pod` is a set of named volumes (CloudNativePG's ``/var/lib/postgresql/data``,
``/controller`` and ``/plugins``, plus a pgBackRest repository that pods may share) and the
containers started on them; :class:`Podman` removes every container and volume it created.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemon import Instance, http_get

REPO_ROOT = Path(__file__).resolve().parent.parent
GLOBAL_OPTIONS = ("--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
CONFIG_IN_IMAGE = "/etc/instance-manager/cluster.yaml"
REPO_IN_IMAGE = Path("/var/lib/pgbackrest")
# CloudNativePG runs its containers with readOnlyRootFilesystem: only the volumes are writable.
READ_ONLY = ("--read-only", "--read-only-tmpfs=false")
MOUNTS = {
    "data": "/var/lib/postgresql/data",
    "controller": "/controller",
    "plugins": "/plugins",
}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first true value of ``predicate``, polled every 0.2 s (each poll runs podman)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def build_image(timeout: float = 1800) -> str:
    """Build (or reuse) the image with container/build.sh; its reference (the last line)."""
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "container" / "build.sh")],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"container/build.sh failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


class Podman:
    """podman with this machine's options; remembers what it created, for :meth:`cleanup`."""

    def __init__(self, conf_dir: Path, prefix: str) -> None:
        conf = conf_dir / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self.prefix = prefix
        self._count = 0
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *GLOBAL_OPTIONS, *args], capture_output=True, text=True,
            env=self.env, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
        return done

    def name(self, role: str) -> str:
        self._count += 1
        return f"{self.prefix}-{self._count}-{role}"

    def volume(self, role: str) -> str:
        name = self.name(role)
        self.volumes.append(name)
        self("volume", "create", name)
        return name

    def mountpoint(self, volume: str) -> Path:
        out = self("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout
        return Path(out.strip())

    def run(self, role: str, image: str, *args: str, options: tuple[str, ...] = ()) -> Container:
        name = self.name(role)
        self.containers.append(name)
        self("run", "--detach", "--name", name, "--network", "host", *options, image, *args)
        return Container(self, name)

    def cleanup(self) -> None:
        for name in reversed(self.containers):
            self("rm", "--force", "--time", "0", name, check=False)
        for name in self.volumes:
            self("volume", "rm", "--force", name, check=False)
        self.containers.clear()
        self.volumes.clear()


def sweep_stale(podman: Podman) -> None:
    """Remove the containers and volumes of test sessions that died (``imtest-<pid>-...``
    whose process is gone), before this session adds its own."""
    ps = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    volumes = podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
    for kind, names in (("container", ps), ("volume", volumes)):
        for name in names:
            match = re.match(r"imtest-(\d+)-", name)
            if match and not _alive(int(match.group(1))):
                podman(kind, "rm", "--force", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Container:
    podman: Podman
    name: str

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.podman("logs", self.name).stdout.splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"msg": raw, "logger": "raw"})
        return out

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("msg") == msg]

    def tail(self, n: int = 40) -> str:
        done = self.podman("logs", "--tail", str(n), self.name, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        out = self.podman("inspect", "--format", "{{.State.Running}}", self.name).stdout
        return out.strip() == "true"

    def wait_log(self, msg: str, timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            lines = self.find(msg)
            if not lines and not self.running():
                raise AssertionError(f"{self.name} exited:\n{self.tail()}")
            return lines[0] if lines else None

        result: dict[str, Any] = wait_until(found, timeout, f"{msg!r} from {self.name}")
        return result

    def exec(self, *argv: str) -> str:
        return self.podman("exec", self.name, *argv).stdout

    def wait_exit(self, timeout: float = 60) -> int:
        """The container's exit code, once it has exited."""
        try:
            out = self.podman("wait", self.name, timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs:\n{self.tail()}") from None
        return int(out.strip().splitlines()[-1])


@dataclass
class Pod:
    """One instance's volumes and containers; ``repo`` is a volume shared between pods."""

    podman: Podman
    image: str
    inst: Instance
    repo: str | None = None
    volumes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in MOUNTS:
            self.volumes[role] = self.podman.volume(role)

    def mounts(self) -> tuple[str, ...]:
        pairs = [(self.volumes[role], path) for role, path in MOUNTS.items()]
        if self.repo is not None:
            pairs.append((self.repo, str(REPO_IN_IMAGE)))
        return tuple(f"--volume={volume}:{path}" for volume, path in pairs)

    def pgdata(self) -> Path:
        """PGDATA as the host sees it (in the data volume)."""
        return self.podman.mountpoint(self.volumes["data"]) / "pgdata"

    def daemon_args(self) -> tuple[str, ...]:
        """Arguments after the image name: they reach `instance-manager run`."""
        i = self.inst
        return (
            "--config", CONFIG_IN_IMAGE, "--pod-name", "test-1",
            "--pg-port", str(i.pg_port), "--listen-addresses", "127.0.0.1",
            "--status-host", "127.0.0.1", "--status-port", str(i.status_port),
            "--local-port", str(i.local_port), "--metrics-port", str(i.metrics_port),
        )  # fmt: skip

    def start(self, *extra: str) -> Container:
        """The instance manager, PID 1 of its container, with the Cluster of ``inst``."""
        config = f"--volume={self.inst.config_file}:{CONFIG_IN_IMAGE}:ro"
        options = (*self.mounts(), config, *READ_ONLY)
        return self.podman.run("pg", self.image, *self.daemon_args(), *extra, options=options)

    def sidecar(self) -> Container:
        """The pgBackRest plugin from the same image, another command; ready once listening."""
        options = (*self.mounts(), *READ_ONLY, "--entrypoint=instance-manager",
                   f"--env=PGBACKREST_PG1_PORT={self.inst.pg_port}")  # fmt: skip
        # Its work directory on the /controller volume: with a read-only root filesystem
        # there is no writable /tmp to fall back on, and /controller/tmp (the default)
        # appears only once the instance manager, started after the sidecar, has made it.
        container = self.podman.run("pgbackrest", self.image, "plugin", "pgbackrest",
                                    "--work-dir", "/controller/pgbackrest-plugin",
                                    options=options)  # fmt: skip
        container.wait_log("plugin listening")
        return container

    def wait_ready(self, container: Container, timeout: float = 120) -> None:
        def ready() -> bool:
            if http_get(self.inst.url("/readyz"), 1.0)[0] == 200:
                return True
            if not container.running():
                raise AssertionError(f"{container.name} exited:\n{container.tail()}")
            return False

        wait_until(ready, timeout, f"/readyz of {container.name}")


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as elapsed:`` - elapsed[0] is the block's duration once it ends."""
    elapsed: list[float] = []
    started = time.monotonic()
    try:
        yield elapsed
    finally:
        elapsed.append(time.monotonic() - started)
