"""The Kubernetes manifests of container/kubernetes/ (pod.yaml, rbac.yaml, podmonitor.yaml).

Without a server: the Pod agrees with the daemon (probe paths, ports, CloudNativePG's probe
thresholds derived from the Cluster's defaults, the environment it reads, the plugin's
socket) and its native sidecar follows the Kubernetes 1.28+ rules, which the test API
server (1.20) cannot check. On the real kube-apiserver (tests/kube_kit.py): every
document is accepted by a server-side dry run, and the Role lets the service account make
each call of the daemon and not the neighbouring ones (SubjectAccessReviews, then the
daemon's own client code run with the service account's token).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest
from kubernetes_asyncio import client

from instance_manager import settings
from instance_manager.cluster.isolation import DEFAULT_LIVENESS_TIMEOUT
from instance_manager.cluster_model import DEFAULT_START_DELAY, DEFAULT_STOP_DELAY, PrimaryLease
from instance_manager.kube import certificates
from instance_manager.kube.client import Kube, Target
from instance_manager.kube.events import event_body
from instance_manager.kube.lease import PrimaryLease as Lease
from instance_manager.kube.quorum import Quorum, quorum_status
from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.web import routes
from tests.kube_kit import ApiServer, KubeApiError
from tests.kube_kit import kube_apiserver as kube_apiserver  # the fixture
from tests.kube_manifests import (
    CLUSTER,
    MANIFESTS,
    POD,
    VALIDATED,
    as_account,
    collection,
    container,
    documents,
    dry_run,
    for_kubernetes_1_20,
    install_rbac,
    kept_in,
    one,
    pod,
    sidecar_problems,
    sidecars,
    token_of,
)

PERIOD = 10  # CloudNativePG's period for the three probes, seconds
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


# -- the manifests themselves --------------------------------------------------------------


def test_the_probes_use_the_daemon_s_paths_and_cloudnativepg_s_thresholds() -> None:
    spec = pod()["spec"]
    postgres = container(spec, "postgres")
    expected = {
        "startupProbe": (routes.STARTUP, DEFAULT_START_DELAY // PERIOD),  # 360
        "livenessProbe": (routes.LIVENESS, DEFAULT_LIVENESS_TIMEOUT // PERIOD),  # 3
        "readinessProbe": (routes.READINESS, 3),
    }
    for probe, (path, failures) in expected.items():
        found = postgres[probe]
        assert found["httpGet"] == {"path": path, "port": routes.STATUS_PORT}, probe
        assert (found["periodSeconds"], found["timeoutSeconds"]) == (PERIOD, 5), probe
        assert found["failureThreshold"] == failures, probe
    assert spec["terminationGracePeriodSeconds"] == DEFAULT_STOP_DELAY


def test_the_ports_and_the_environment_are_the_daemon_s() -> None:
    postgres = container(pod()["spec"], "postgres")
    ports = {p["name"]: p["containerPort"] for p in postgres["ports"]}
    assert ports == {"postgresql": 5432, "metrics": 9187, "status": routes.STATUS_PORT}
    env = {e["name"]: e for e in postgres["env"]}
    read = {*settings.ENV_OPTIONS, *settings.ENV_METADATA}
    assert {"PGDATA", "POD_NAME", "POD_IP", "NAMESPACE", "CLUSTER_NAME"} <= set(env) & read
    assert env["PGDATA"]["value"] == "/var/lib/postgresql/data/pgdata"
    assert env["CLUSTER_NAME"]["value"] == CLUSTER
    downward = {n: env[n]["valueFrom"]["fieldRef"]["fieldPath"] for n in ("POD_NAME", "POD_IP")}
    assert downward == {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    mounts = {m["mountPath"]: m["name"] for m in postgres["volumeMounts"]}
    assert mounts["/var/lib/postgresql/data"] == "pgdata"
    assert mounts["/controller"] == "scratch-data" and mounts["/plugins"] == "plugins"


def test_the_plugin_is_a_native_sidecar_that_starts_once_its_socket_exists() -> None:
    spec = pod()["spec"]
    (sidecar,) = sidecars(spec)
    assert sidecar["command"][1:] == ["plugin", "pgbackrest", "--socket-dir", "/plugins"]
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-S", f"/plugins/{PLUGIN_NAME}"]
    shared = {m["name"] for m in sidecar["volumeMounts"] if m["mountPath"] == "/plugins"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert shared == {"plugins"} and volumes["plugins"] == {"name": "plugins", "emptyDir": {}}
    assert sidecar_problems(spec) == []


def test_the_sidecar_rules_catch_what_a_1_28_server_would_refuse() -> None:
    plain = {"name": "a", "image": "i"}
    bad = {
        "initContainers": [
            {**plain, "restartPolicy": "OnFailure"},
            {**plain, "name": "b", "startupProbe": {"exec": {"command": ["true"]}}},
            {**plain, "name": "c", "restartPolicy": "Always"},
            {**plain, "name": "d", "restartPolicy": "Always",
             "startupProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}},
        ],
        "containers": [plain],
    }  # fmt: skip
    assert sidecar_problems(bad) == [
        "a: restartPolicy 'OnFailure' (only 'Always' is allowed)",
        "b: startupProbe on an init container that is not a sidecar",
        "c: a sidecar without a startupProbe",
        "d: startupProbe.successThreshold must be 1",
    ]


def test_every_container_runs_restricted_as_postgres() -> None:
    spec = pod()["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 26,
        "runAsGroup": 26,
        "fsGroup": 26,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for each in [*spec["initContainers"], *spec["containers"]]:
        context = each["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, each["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, each["name"]
        assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"], each["name"]


def test_every_manifest_is_validated_somewhere() -> None:
    crds = {"cluster-crd.yaml", "failoverquorum-crd.yaml"}  # installed by tests/kube_kit.py
    found = {path.name for path in MANIFESTS.glob("*.yaml")}
    assert found == {*crds, *VALIDATED, "podmonitor.yaml"}


def test_the_names_agree_across_the_files() -> None:
    the_pod = pod()
    assert (
        the_pod["spec"]["serviceAccountName"]
        == one("rbac.yaml", "ServiceAccount")["metadata"]["name"]
    )
    binding = one("rbac.yaml", "RoleBinding")
    assert binding["roleRef"]["name"] == one("rbac.yaml", "Role")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CLUSTER}]
    claim = one("pod.yaml", "PersistentVolumeClaim")["metadata"]["name"]
    volumes = {v["name"]: v for v in the_pod["spec"]["volumes"]}
    assert volumes["pgdata"]["persistentVolumeClaim"]["claimName"] == claim == POD
    monitor = one("podmonitor.yaml", "PodMonitor")["spec"]
    labels = the_pod["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in container(the_pod["spec"], "postgres")["ports"]}
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in ports


# -- on the real kube-apiserver ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.kube
def test_every_document_is_accepted_by_a_server_side_dry_run(kube_apiserver: ApiServer) -> None:
    api = kube_apiserver
    fresh = api.new_namespace("dry")
    for doc in documents("rbac.yaml"):
        answer = dry_run(api, doc, fresh)
        assert (answer["kind"], answer["metadata"]["name"]) == (doc["kind"], CLUSTER)
        with pytest.raises(KubeApiError) as missing:  # a dry run creates nothing
            api.get(f"{collection(doc, fresh)}/{CLUSTER}")
        assert missing.value.status == 404
    namespace = install_rbac(api)  # the Pod's admission looks its service account up
    answers = {}
    for doc in documents("pod.yaml"):
        answers[doc["kind"]] = dry_run(api, for_kubernetes_1_20(doc), namespace)
        assert answers[doc["kind"]]["metadata"]["name"] == POD
    assert set(answers) == {"PersistentVolumeClaim", "Pod"}
    # Nothing else was lost on the way (an unknown field would be dropped silently).
    sent, kept = for_kubernetes_1_20(pod())["spec"], answers["Pod"]["spec"]
    for name in ("postgres", "plugin-pgbackrest"):
        for field, value in container(sent, name).items():
            assert kept_in(container(kept, name)[field], value), (name, field)
    for field in ("securityContext", "serviceAccountName", "terminationGracePeriodSeconds"):
        assert kept[field] == sent[field], field


@pytest.mark.slow
@pytest.mark.kube
def test_kubernetes_1_20_refuses_the_sidecar_probe_and_drops_its_restart_policy(
    kube_apiserver: ApiServer,
) -> None:
    """What the test API server cannot check (why test_the_plugin_is_a_native_sidecar...
    checks the YAML): a server that predates native sidecars refuses the probe and keeps a
    plain init container, which would block the pod. This test fails once the kit runs a
    1.28+ server; the Pod is then to be dry-run whole."""
    api = kube_apiserver
    namespace = install_rbac(api)
    with pytest.raises(KubeApiError) as refused:
        dry_run(api, pod(), namespace)
    assert refused.value.status == 422
    assert "spec.initContainers[0].startupProbe" in refused.value.message
    assert "must not be set for init containers" in refused.value.message
    without_probe = pod()
    del without_probe["spec"]["initContainers"][0]["startupProbe"]
    answer = dry_run(api, without_probe, namespace)
    assert "restartPolicy" not in container(answer["spec"], "plugin-pgbackrest")


# (verb, API group, resource, name): each call of instance_manager/kube/client.py.
DAEMON_CALLS = [
    ("get", "postgresql.cnpg.io", "clusters", CLUSTER),
    ("watch", "postgresql.cnpg.io", "clusters", CLUSTER),  # fieldSelector metadata.name
    ("list", "postgresql.cnpg.io", "clusters", CLUSTER),
    ("patch", "postgresql.cnpg.io", "clusters/status", CLUSTER),
    ("get", "postgresql.cnpg.io", "failoverquorums", CLUSTER),
    ("create", "postgresql.cnpg.io", "failoverquorums", ""),
    ("patch", "postgresql.cnpg.io", "failoverquorums/status", CLUSTER),
    ("get", "coordination.k8s.io", "leases", CLUSTER),
    ("create", "coordination.k8s.io", "leases", ""),
    ("update", "coordination.k8s.io", "leases", CLUSTER),
    ("get", "", "secrets", "pg-ca"),
    ("get", "", "secrets", "pg-server"),
    ("get", "", "secrets", "pg-replication"),
    ("create", "", "events", ""),
]
NOT_THE_DAEMON_S = [
    ("list", "postgresql.cnpg.io", "clusters", ""),  # every Cluster of the namespace
    ("get", "postgresql.cnpg.io", "clusters", "other"),
    ("patch", "postgresql.cnpg.io", "clusters", CLUSTER),  # its spec and metadata
    ("update", "postgresql.cnpg.io", "clusters", CLUSTER),
    ("delete", "postgresql.cnpg.io", "clusters", CLUSTER),
    ("create", "postgresql.cnpg.io", "clusters", ""),
    ("patch", "postgresql.cnpg.io", "clusters/status", "other"),
    ("delete", "postgresql.cnpg.io", "failoverquorums", CLUSTER),
    ("delete", "coordination.k8s.io", "leases", CLUSTER),
    ("update", "coordination.k8s.io", "leases", "other"),
    ("list", "", "secrets", ""),
    ("watch", "", "secrets", ""),
    ("get", "", "secrets", "pg-app"),
    ("get", "", "secrets", "pg-superuser"),
    ("delete", "", "events", "x"),
    ("create", "", "pods", ""),
    ("get", "", "configmaps", "x"),
]


def allowed(
    api: ApiServer, home: str, call: tuple[str, str, str, str], namespace: str = ""
) -> bool:
    """A SubjectAccessReview: may the service account of namespace ``home`` make ``call``
    (in ``namespace``, by default its own)?"""
    verb, group, resource, name = call
    resource, _, subresource = resource.partition("/")
    user = f"system:serviceaccount:{home}:{CLUSTER}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{home}"]
    attributes = {
        "namespace": namespace or home,
        "verb": verb,
        "group": group,
        "resource": resource,
    }
    attributes.update({k: v for k, v in (("subresource", subresource), ("name", name)) if v})
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": [*groups, "system:authenticated"],
                 "resourceAttributes": attributes},
    }  # fmt: skip
    return bool(api.create(SAR_PATH, body)["status"].get("allowed"))


@pytest.mark.slow
@pytest.mark.kube
def test_the_role_allows_the_daemon_s_calls_and_not_their_neighbours(
    kube_apiserver: ApiServer,
) -> None:
    api = kube_apiserver
    namespace = install_rbac(api)
    refused = [call for call in DAEMON_CALLS if not allowed(api, namespace, call)]
    granted = [call for call in NOT_THE_DAEMON_S if allowed(api, namespace, call)]
    assert (refused, granted) == ([], [])
    elsewhere = api.new_namespace("other")  # the Role is the namespace's only
    assert not any(allowed(api, namespace, call, elsewhere) for call in DAEMON_CALLS)


def prepare_objects(api: ApiServer, namespace: str) -> dict[str, str]:
    """What the operator would have made: the Cluster and its certificate Secrets."""
    api.create_cluster(namespace, {"metadata": {"name": CLUSTER}, "spec": {"instances": 1}})
    names = {"serverTLSSecret": "pg-server", "replicationTLSSecret": "pg-replication",
             "serverCASecret": "pg-ca", "clientCASecret": "pg-ca"}  # fmt: skip
    fake = base64.b64encode(b"not checked here").decode()
    for secret in set(names.values()):
        data = {"ca.crt": fake} if secret == "pg-ca" else {"tls.crt": fake, "tls.key": fake}
        api.create(f"/api/v1/namespaces/{namespace}/secrets",
                   {"metadata": {"name": secret}, "data": data})  # fmt: skip
    return names


async def daemon_calls(kube: Kube, names: dict[str, str]) -> None:
    """Every call of Kubernetes mode, through the daemon's own client code."""
    cluster = await kube.get_cluster()
    version = cluster["metadata"]["resourceVersion"]
    watch = cast("AsyncGenerator[dict[str, Any], None]", kube.watch_cluster(version))
    seen = asyncio.ensure_future(anext(watch))
    report = {"instancesReportedState": {POD: {"isPrimary": True}}, "certificates": names}
    patched = await kube.patch_cluster_status({"status": report})
    assert patched["status"]["instancesReportedState"][POD]["isPrimary"] is True
    event = await asyncio.wait_for(seen, 10)
    assert event["type"] == "MODIFIED"
    await watch.aclose()
    files = await certificates.fetch(kube, patched["status"])
    assert len(files) == 6
    await kube.create_event(event_body(patched, "Promoted", "manifest test", False, POD))
    assert await Quorum(kube).publish(quorum_status(None, POD))  # get 404, create, patch
    timings = PrimaryLease(leaseDurationSeconds=3, renewDeadlineSeconds=2,
                           retryPeriodSeconds=1, releasedLeaseDurationSeconds=1)  # fmt: skip
    losses: list[str] = []
    lease = Lease(kube, POD, lambda: timings, losses.append)
    try:
        assert await lease.try_acquire()  # get 404, create
        assert await lease.release()  # get, update
    finally:
        await lease.close()
    assert losses == []


@pytest.mark.slow
@pytest.mark.kube
async def test_the_service_account_can_make_every_call_of_the_daemon(
    kube_apiserver: ApiServer,
) -> None:
    api = kube_apiserver
    namespace = await asyncio.to_thread(install_rbac, api)
    names = await asyncio.to_thread(prepare_objects, api, namespace)
    token = await asyncio.to_thread(token_of, api, namespace)
    configuration = client.Configuration()
    configuration.host = api.url
    configuration.ssl_ca_cert = api.ca_file
    configuration.api_key["BearerToken"] = f"Bearer {token}"
    kube = Kube(configuration, Target(namespace, CLUSTER))
    try:
        await daemon_calls(kube, names)
    finally:
        await kube.close()
    account = as_account(api, token)
    cluster_path = api.clusters_path(namespace, CLUSTER)
    refused = [
        lambda: account.delete(cluster_path),
        lambda: account.merge_patch(cluster_path, {"spec": {"instances": 3}}),
        lambda: account.list(f"/api/v1/namespaces/{namespace}/secrets"),
        lambda: account.get(f"/api/v1/namespaces/{namespace}/secrets/{CLUSTER}-token"),
    ]
    for attempt in refused:
        with pytest.raises(KubeApiError) as denied:
            await asyncio.to_thread(attempt)
        assert denied.value.status == 403
