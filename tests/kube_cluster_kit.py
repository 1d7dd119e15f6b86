"""Three daemons in Kubernetes mode against the real test API server (tests/kube_kit.py).

``kube_trio`` gives a ``KubeTrio``: the same three instances as tests/cluster_kit.py
(``pg-1`` from the template PGDATA, the others empty, one fake CNPG-I plugin), but no
shared document: the Cluster ``trio`` lives in a namespace of its own on the API server,
and the test plays the operator (it creates the Cluster, sets ``status.targetPrimary``,
patches the spec). The daemons find each other through
``status.instancesReportedState``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster_kit import NAMES, Trio
from tests.daemon import Daemon, wait_for
from tests.kube_kit import ApiServer
from tests.kube_kit import kube_apiserver as kube_apiserver

CLUSTER = "trio"


class KubeTrio(Trio):
    def __init__(self, root: Path, template: Path, api: ApiServer) -> None:
        super().__init__(root, template)
        self.api = api
        self.namespace = api.new_namespace("trio")
        body = {"metadata": {"name": CLUSTER}, "spec": self.spec}
        api.create_cluster(self.namespace, body)
        self.set_status(targetPrimary="pg-1")

    # -- playing the operator --
    def set_status(self, **status: Any) -> dict[str, Any]:
        return self.api.patch_cluster_status(self.namespace, CLUSTER, status)

    def patch_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        path = self.api.clusters_path(self.namespace, CLUSTER)
        result: dict[str, Any] = self.api.merge_patch(path, {"spec": spec})
        return result

    def cluster(self) -> dict[str, Any]:
        return self.api.cluster(self.namespace, CLUSTER)

    # -- daemons --
    def start(self, name: str, *extra: str) -> Daemon:
        inst = self.members[name]
        # The instance's own file: its options only (the Cluster comes from the API).
        inst.config_file.write_text(yaml.safe_dump({"instance": dict(self.instance_options)}))
        env = {**self.api.env(), "POD_IP": "127.0.0.1"}
        daemon = Daemon(
            inst,
            "--pod-name", name,
            "--cluster-name", CLUSTER,
            "--namespace", self.namespace,
            "--plugin-socket-dir", str(self.plugin.socket_dir),
            *extra,
            env=env,
        )  # fmt: skip
        self.daemons[name] = daemon
        return daemon

    # -- observing --
    def report(self, name: str) -> dict[str, Any]:
        status = self.cluster().get("status") or {}
        found: dict[str, Any] = (status.get("instancesReportedState") or {}).get(name) or {}
        return found

    def current_primary(self) -> str | None:
        value = (self.cluster().get("status") or {}).get("currentPrimary")
        return str(value) if value else None

    def wait_started(self, timeout: float = 180) -> None:
        self.start_all()
        for name in NAMES:
            self.daemons[name].wait_ready(timeout)
        self.wait_streaming("pg-1", {"pg-2", "pg-3"})


@pytest.fixture
def kube_trio(
    tmp_root: Path, template_pgdata: Path, kube_apiserver: ApiServer
) -> Iterator[KubeTrio]:
    trio = KubeTrio(tmp_root, template_pgdata, kube_apiserver)
    try:
        yield trio
    finally:
        trio.close()


__all__ = ["NAMES", "KubeTrio", "kube_apiserver", "kube_trio", "wait_for"]
