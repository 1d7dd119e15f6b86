"""The instance image run with podman as a pod runs it (tests/image_kit.py).

The image is built once per session by container/build.sh and kept afterwards: the script
reuses it while the sources are unchanged (0.2 s), and rebuilds only what changed. Every
container and volume a test creates is removed when it ends.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instance_manager.pgbackrest import PLUGIN_NAME
from tests.conftest import make_root
from tests.daemon import Instance, base_spec, controldata_state, postmaster_pid, rmtree
from tests.image_kit import (
    REPO_IN_IMAGE,
    Container,
    Pod,
    Podman,
    build_image,
    sweep_stale,
    timed,
    wait_until,
)
from tests.pgbackrest_kit import pgbackrest_spec, sql, switch_segments, wait_archived

pytestmark = [pytest.mark.image, pytest.mark.slow]
VENV_BIN = "/opt/instance-manager/venv/bin"


@pytest.fixture(scope="session")
def image() -> str:
    reference = build_image()  # first: on a fresh machine it installs podman and buildah
    root = make_root()
    sweep_stale(Podman(root, "sweep"))
    rmtree(root)
    return reference


@pytest.fixture
def podman(tmp_root: Path) -> Iterator[Podman]:
    pm = Podman(tmp_root, f"imtest-{os.getpid()}")
    yield pm
    pm.cleanup()


@pytest.fixture
def pod(podman: Podman, image: str, tmp_root: Path) -> Pod:
    inst = Instance(tmp_root)
    inst.write_config(base_spec())
    return Pod(podman, image, inst)


def proc_status(container: Container, pid: int) -> dict[str, str]:
    text = container.exec("cat", f"/proc/{pid}/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_starts_ready_as_pid1_uid26_with_the_arguments_given(pod: Pod) -> None:
    container = pod.start()
    pod.wait_ready(container)
    argv = container.exec("cat", "/proc/1/cmdline").rstrip("\0").split("\0")
    assert argv[1:3] == [f"{VENV_BIN}/instance-manager", "run"], argv
    assert argv[3:] == list(pod.daemon_args())  # --status-port ... reached the daemon
    assert proc_status(container, 1)["Uid"].split() == ["26"] * 4
    postmaster = postmaster_pid(pod.pgdata())
    assert postmaster is not None
    status = proc_status(container, postmaster)
    assert status["PPid"] == "1" and status["Uid"].split() == ["26"] * 4
    assert sql(pod.inst, "SHOW data_directory") == [("/var/lib/postgresql/data/pgdata",)]
    # Every module of the virtualenv was byte-compiled at build time.
    check = (
        "import pathlib, importlib.util as u; "
        "print(sum(1 for p in pathlib.Path('/opt/instance-manager/venv/lib').rglob('*.py') "
        "if not pathlib.Path(u.cache_from_source(str(p))).exists()))"
    )
    assert container.exec(f"{VENV_BIN}/python", "-c", check).strip() == "0"


def test_podman_stop_is_a_staged_shutdown_exiting_0(pod: Pod) -> None:
    container = pod.start()
    pod.wait_ready(container)
    with timed() as elapsed:
        pod.podman("stop", "--time", "30", container.name, timeout=60)
    assert container.wait_exit() == 0, container.tail()
    assert elapsed[0] < 20, "podman had to kill it"
    stages = container.find("shutdown stage ended")
    assert stages and stages[0]["mode"] == "smart" and stages[-1]["outcome"] == "exited", stages
    assert container.find("instance manager stopped")[0]["exit_code"] == 0
    assert controldata_state(pod.pgdata()) == "shut down"


def test_a_killed_postmaster_makes_the_container_exit(pod: Pod) -> None:
    container = pod.start("--on-postmaster-exit", "exit")  # the default in Kubernetes
    pod.wait_ready(container)
    postmaster = postmaster_pid(pod.pgdata())
    container.exec("sh", "-c", f"kill -KILL {postmaster}")
    assert container.wait_exit() == 1, container.tail()
    (line,) = container.find("postmaster exited unexpectedly")
    assert line["policy"] == "exit" and line["pid"] == postmaster, line


# -- the pgBackRest sidecar: one source pod for the module, a second pod restores ----------


class Source:
    def __init__(self, podman: Podman, pod: Pod, daemon: Container, sidecar: Container) -> None:
        self.podman, self.pod, self.daemon, self.sidecar = podman, pod, daemon, sidecar

    def repo(self) -> Path:
        assert self.pod.repo is not None
        return self.podman.mountpoint(self.pod.repo)

    def stored(self, stanza: str) -> set[str]:
        """Names of the files in the stanza's WAL archive (segments without their suffix)."""
        archive = self.repo() / "archive" / stanza
        return {p.name[:24] if len(p.name) > 24 else p.name for p in archive.rglob("0*")}


@pytest.fixture(scope="module")
def source(image: str) -> Iterator[Source]:
    """A pod archiving to a repository volume through the sidecar, ready."""
    root = make_root()
    podman = Podman(root, f"imtest-{os.getpid()}-src")
    try:
        inst = Instance(root)
        inst.write_config(pgbackrest_spec(REPO_IN_IMAGE))
        pod = Pod(podman, image, inst, repo=podman.volume("repo"))
        sidecar = pod.sidecar()  # first, as a native sidecar starts before the instance
        daemon = pod.start()
        pod.wait_ready(daemon)
        yield Source(podman, pod, daemon, sidecar)
    finally:
        podman.cleanup()
        rmtree(root)


def test_the_sidecar_archives_wal_through_the_shared_plugins_volume(source: Source) -> None:
    inst = source.pod.inst
    socket = source.podman.mountpoint(source.pod.volumes["plugins"]) / PLUGIN_NAME
    assert socket.is_socket()
    closed = switch_segments(inst, 2)
    wait_archived(inst, closed[-1])
    assert set(closed) <= source.stored("main")
    assert source.sidecar.find("stanza created"), source.sidecar.tail()
    assert not source.daemon.find("WAL request failed")


def recovery_spec(target_name: str) -> dict[str, Any]:
    """A new cluster from stanza main at a restore point, archiving to its own stanza."""
    spec = pgbackrest_spec(REPO_IN_IMAGE, stanza="restored")
    origin = {
        "name": PLUGIN_NAME,
        "parameters": {"stanza": "main", "repo1-path": "/var/lib/pgbackrest"},
    }
    spec["externalClusters"] = [{"name": "origin", "plugin": origin}]
    spec["bootstrap"] = {
        "recovery": {"source": "origin", "recoveryTarget": {"targetName": target_name}}
    }
    return spec


def request_backup(inst: Instance, name: str) -> str:
    """A full plugin backup through the daemon's local API, as the operator asks for one."""
    parameters = {"type": "full", "startFast": "true"}
    configuration = {"name": PLUGIN_NAME, "parameters": parameters}
    backup = {"spec": {"method": "plugin", "pluginConfiguration": configuration}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{inst.local_port}/pg/backup?name={name}",
        data=json.dumps(backup).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(resp.read().decode())


def test_a_second_pod_of_the_image_restores_from_the_repository(
    source: Source, podman: Podman, image: str, tmp_root: Path
) -> None:
    inst = source.pod.inst
    assert request_backup(inst, "base") == "OK"
    source.daemon.wait_log("plugin backup completed", 180)
    sql(inst, "CREATE TABLE kept AS SELECT g FROM generate_series(1, 100) g")
    sql(inst, "SELECT pg_create_restore_point('image-test')")
    sql(inst, "INSERT INTO kept SELECT g FROM generate_series(101, 150) g")
    wait_archived(inst, switch_segments(inst, 1)[-1])

    restored = Instance(tmp_root)
    restored.write_config(recovery_spec("image-test"))
    pod = Pod(podman, image, restored, repo=source.pod.repo)
    pod.sidecar()
    container = pod.start()
    pod.wait_ready(container, 240)
    assert container.find("recovery bootstrap complete"), container.tail()
    assert sql(restored, "SELECT count(*), max(g) FROM kept") == [(100, 100)]
    assert sql(restored, "SELECT pg_is_in_recovery()") == [(False,)]
    # The new timeline's history reached the new cluster's own stanza.
    history = lambda: any(n.startswith("00000002.history") for n in source.stored("restored"))  # noqa: E731
    wait_until(history, 60, "the new timeline's history in stanza restored")
    pod.podman("stop", "--time", "30", container.name, timeout=60)
    assert container.wait_exit() == 0, container.tail()
