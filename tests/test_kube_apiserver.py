"""The test Kubernetes API server (tests/kube_kit.py) and the Cluster CRD
(container/kubernetes/cluster-crd.yaml): the semantics Kubernetes mode relies on, checked
against a real kube-apiserver."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.daemon import PYTHON, RUN_AS
from tests.kube_kit import CRD_PATH, ApiServer, KubeApiError
from tests.kube_kit import kube_apiserver as kube_apiserver  # the fixture

pytestmark = [pytest.mark.slow, pytest.mark.kube]

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
HEALTHY = "Cluster in healthy state"


def example_cluster(name: str) -> dict[str, Any]:
    """A Cluster shaped like CloudNativePG's documented examples, with operator-only fields."""
    return {
        "metadata": {"name": name, "labels": {"app": "pg"}},
        "spec": {
            "description": "an example cluster",
            "imageName": "ghcr.io/cloudnative-pg/postgresql:16",
            "instances": 3,
            "primaryUpdateStrategy": "unsupervised",
            "primaryUpdateMethod": "switchover",
            "switchoverDelay": 60,
            "storage": {"size": "1Gi", "storageClass": "standard"},
            "walStorage": {"size": "512Mi"},
            "postgresql": {
                "parameters": {"max_connections": "200", "shared_buffers": "256MB"},
                "pg_hba": ["host all all 10.0.0.0/8 scram-sha-256"],
                "synchronous": {"method": "any", "number": 1},
            },
            "bootstrap": {"initdb": {"database": "app", "owner": "", "secret": {"name": "s"}}},
            "superuserSecret": {"name": "superuser"},
            "enableSuperuserAccess": True,
            "resources": {"requests": {"memory": "512Mi", "cpu": "1"}},
            "affinity": {"enablePodAntiAffinity": True, "topologyKey": "kubernetes.io/hostname"},
            "probes": {"readiness": {"type": "streaming", "maximumLag": "16Mi"}},
            "replicationSlots": {"highAvailability": {"enabled": True}, "updateInterval": 30},
            "plugins": [{"name": "barman-cloud.cloudnative-pg.io", "isWALArchiver": True}],
            "backup": {
                "retentionPolicy": "30d",
                "barmanObjectStore": {"destinationPath": "s3://b"},
            },
        },
    }


def test_the_cluster_crd_is_established(kube_apiserver: ApiServer) -> None:
    crd = kube_apiserver.get(f"{CRD_PATH}/clusters.postgresql.cnpg.io")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["cluster"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Age", "Instances", "Ready", "Status", "Primary"]


def test_a_cloudnativepg_example_manifest_is_stored_unchanged(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    body = example_cluster("example")
    created = kube_apiserver.create_cluster(ns, body)
    assert created["spec"] == body["spec"]  # nothing pruned, nothing defaulted
    assert created["metadata"]["generation"] == 1
    assert kube_apiserver.cluster(ns, "example")["spec"] == body["spec"]


def test_declared_types_are_enforced(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    body = example_cluster("typed")
    body["spec"]["postgresql"]["parameters"]["max_connections"] = 200  # CNPG wants text
    with pytest.raises(KubeApiError) as refused:
        kube_apiserver.create_cluster(ns, body)
    assert refused.value.status == 422
    assert "spec.postgresql.parameters.max_connections" in refused.value.message


def test_fields_the_model_does_not_know_are_kept(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    spec = {
        "instances": 2,
        "monitoring": {"enablePodMonitor": True, "somethingNew": {"a": [1, 2]}},
        "affinity": {"podAntiAffinityType": "required", "tolerations": [{"key": "k"}]},
        "postgresql": {"parameters": {"work_mem": "4MB"}, "ldap": {"server": "ldap.example"}},
        "aFutureSpecField": {"nested": {"deeper": "yes"}},
    }
    created = kube_apiserver.create_cluster(
        ns, {"metadata": {"name": "future"}, "spec": spec, "status": {"phase": "dropped"}}
    )
    assert created["spec"] == spec
    assert "status" not in created  # a create does not write the status subresource
    status = {
        "currentPrimary": "future-1",
        "instancesReportedState": {
            "future-1": {"isPrimary": True, "timeLineID": 1, "ip": "10.0.0.1", "extra": "kept"}
        },
        "someFutureField": {"x": 1},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "ClusterIsReady",
                "message": "",
                "lastTransitionTime": "2024-01-01T00:00:00Z",
                "aFutureConditionField": 3,
            }
        ],
    }
    kube_apiserver.patch_cluster_status(ns, "future", status)
    stored = kube_apiserver.cluster(ns, "future")
    assert stored["spec"] == spec
    assert stored["status"] == status


def test_a_status_patch_changes_the_status_only(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    created = kube_apiserver.create_cluster(ns, example_cluster("split"))
    path = kube_apiserver.clusters_path(ns, "split")
    patched = kube_apiserver.merge_patch(
        path + "/status",
        {"spec": {"instances": 9}, "status": {"phase": HEALTHY}},
    )
    assert patched["spec"] == created["spec"]
    assert patched["status"] == {"phase": HEALTHY}
    assert patched["metadata"]["generation"] == created["metadata"]["generation"]

    patched = kube_apiserver.merge_patch(
        path, {"spec": {"instances": 2}, "status": {"phase": "ignored"}}
    )
    assert patched["spec"]["instances"] == 2
    assert patched["status"] == {"phase": HEALTHY}
    assert patched["metadata"]["generation"] == created["metadata"]["generation"] + 1

    # A key set to null in a merge patch removes it.
    patched = kube_apiserver.patch_cluster_status(ns, "split", {"phase": None, "systemID": "7"})
    assert patched["status"] == {"systemID": "7"}


def test_a_stale_resource_version_is_refused_with_409(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    kube_apiserver.create_cluster(ns, example_cluster("cas"))
    old = kube_apiserver.cluster(ns, "cas")
    kube_apiserver.patch_cluster_status(ns, "cas", {"targetPrimary": "cas-2"})
    path = kube_apiserver.clusters_path(ns, "cas")
    stale_version = {"metadata": {"resourceVersion": old["metadata"]["resourceVersion"]}}
    with pytest.raises(KubeApiError) as replaced:
        kube_apiserver.replace(path + "/status", old)
    with pytest.raises(KubeApiError) as patched:  # a resourceVersion in a patch is a precondition
        kube_apiserver.merge_patch(path + "/status", {**stale_version, "status": {}})
    for refused in (replaced, patched):
        assert refused.value.status == 409
        assert refused.value.reason == "Conflict"
    assert kube_apiserver.cluster(ns, "cas")["status"] == {"targetPrimary": "cas-2"}


def test_a_watch_from_a_resource_version_sees_a_later_status_patch(
    kube_apiserver: ApiServer,
) -> None:
    ns = kube_apiserver.new_namespace()
    created = kube_apiserver.create_cluster(ns, example_cluster("watched"))
    since = created["metadata"]["resourceVersion"]
    with kube_apiserver.watch(kube_apiserver.clusters_path(ns), since) as stream:
        kube_apiserver.patch_cluster_status(ns, "watched", {"currentPrimary": "watched-2"})
        event = stream.next_event(timeout=10)
    assert event["type"] == "MODIFIED"
    assert event["object"]["status"] == {"currentPrimary": "watched-2"}
    # A watch opened later from the same version replays the change.
    with kube_apiserver.watch(kube_apiserver.clusters_path(ns), since) as stream:
        assert stream.next_event(timeout=10)["object"]["status"]["currentPrimary"] == "watched-2"


def test_printer_columns_show_the_status(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    kube_apiserver.create_cluster(ns, example_cluster("shown"))
    kube_apiserver.patch_cluster_status(
        ns,
        "shown",
        {"instances": 3, "readyInstances": 2, "phase": "Healthy", "currentPrimary": "shown-1"},
    )
    table = json.loads(
        kube_apiserver.text("GET", kube_apiserver.clusters_path(ns, "shown"), accept=TABLE)
    )
    names = [c["name"] for c in table["columnDefinitions"]]
    cells = dict(zip(names, table["rows"][0]["cells"], strict=True))
    assert (cells["Instances"], cells["Ready"], cells["Status"], cells["Primary"]) == (
        3,
        2,
        "Healthy",
        "shown-1",
    )


def test_events_are_listed(kube_apiserver: ApiServer) -> None:
    ns = kube_apiserver.new_namespace()
    kube_apiserver.create(
        f"/api/v1/namespaces/{ns}/events",
        {
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Cluster", "namespace": ns, "name": "c"},
            "reason": "Promoted",
            "message": "pg-2 is the new primary",
            "type": "Normal",
        },
    )
    assert [e["reason"] for e in kube_apiserver.events(ns)] == ["Promoted"]


def test_the_postgres_account_can_reach_the_server_with_env(kube_apiserver: ApiServer) -> None:
    # The daemon drops to postgres before it reads the token and the CA.
    script = (
        "import os, ssl, urllib.request, json\n"
        "e = os.environ\n"
        "ctx = ssl.create_default_context(cafile=e['KUBE_CA_FILE'])\n"
        "token = open(e['KUBE_TOKEN_FILE']).read().strip()\n"
        "url = f\"https://{e['KUBERNETES_SERVICE_HOST']}:{e['KUBERNETES_SERVICE_PORT']}/version\"\n"
        "req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + token})\n"
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", script],
        env=kube_apiserver.env(),
        user=RUN_AS,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("v1.20")
