"""The Kubernetes manifests of container/kubernetes/ for tests/test_kube_manifests.py:
loading them, where each kind is created on the API server, what the test kube-apiserver
(1.20) cannot check about native sidecars, the Kubernetes 1.28+ rules for them, and the
setup a dry run and a service account need on that server."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

from tests.kube_api import ApiServer, KubeApiError

MANIFESTS = Path(__file__).resolve().parent.parent / "container" / "kubernetes"
# The files an API server validates by creating them (podmonitor.yaml needs Prometheus
# Operator's CRDs, which the test API server does not have).
VALIDATED = ("rbac.yaml", "pod.yaml")
CLUSTER = "pg"
POD = "pg-1"

# Where a namespaced object of each kind is created.
COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "Pod": "/api/v1/namespaces/{ns}/pods",
}
# Fields of a native sidecar (an initContainer with restartPolicy Always) that appeared in
# Kubernetes 1.28: 1.20 drops restartPolicy and refuses probes on init containers.
SIDECAR_FIELDS = ("restartPolicy", "startupProbe", "livenessProbe", "readinessProbe")
ADMISSION_DEADLINE = 30.0


def documents(file_name: str) -> list[dict[str, Any]]:
    text = (MANIFESTS / file_name).read_text()
    return [dict(doc) for doc in yaml.safe_load_all(text) if doc is not None]


def one(file_name: str, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents(file_name) if doc["kind"] == kind]
    return found


def pod() -> dict[str, Any]:
    return one("pod.yaml", "Pod")


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    everyone = [*spec.get("initContainers", []), *spec["containers"]]
    (found,) = [c for c in everyone if c["name"] == name]
    return dict(found)


def sidecars(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]


def collection(doc: dict[str, Any], namespace: str) -> str:
    return COLLECTIONS[doc["kind"]].format(ns=namespace)


def for_kubernetes_1_20(pod_doc: dict[str, Any]) -> dict[str, Any]:
    """The Pod without its sidecars' 1.28+ fields, for an API server that predates them."""
    older = copy.deepcopy(pod_doc)
    for init in older["spec"].get("initContainers", []):
        if init.get("restartPolicy") == "Always":
            for name in SIDECAR_FIELDS:
                init.pop(name, None)
    return older


def sidecar_problems(spec: dict[str, Any]) -> list[str]:
    """What Kubernetes 1.28+ validation refuses about init containers (restartPolicy only
    "Always"; probes and lifecycle hooks only on such sidecars; success thresholds of the
    startup and liveness probes 1), plus our own rule: every sidecar has a startup probe,
    so that the main containers start only once it serves."""
    problems = []
    for init in spec.get("initContainers", []):
        name, policy = init["name"], init.get("restartPolicy")
        if policy is not None and policy != "Always":
            problems.append(f"{name}: restartPolicy {policy!r} (only 'Always' is allowed)")
        for field in ("lifecycle", "startupProbe", "livenessProbe", "readinessProbe"):
            if field in init and policy != "Always":
                problems.append(f"{name}: {field} on an init container that is not a sidecar")
        for field in ("startupProbe", "livenessProbe"):
            threshold = (init.get(field) or {}).get("successThreshold", 1)
            if threshold != 1:
                problems.append(f"{name}: {field}.successThreshold must be 1")
        if policy == "Always" and "startupProbe" not in init:
            problems.append(f"{name}: a sidecar without a startupProbe")
    return problems


# -- on the test API server (tests/kube_kit.py) --------------------------------------------


def give_token_secret(api: ApiServer, namespace: str, account: str) -> None:
    """What kube-controller-manager's token controller does for a new service account (the
    kit runs no controller manager): without it, 1.20's ServiceAccount admission refuses
    every Pod that uses the account."""
    found = api.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}")
    secret = f"{account}-token"
    annotations = {
        "kubernetes.io/service-account.name": account,
        "kubernetes.io/service-account.uid": found["metadata"]["uid"],
    }
    body = {
        "metadata": {"name": secret, "annotations": annotations},
        "type": "kubernetes.io/service-account-token",
    }
    api.create(f"/api/v1/namespaces/{namespace}/secrets", body)
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}"
    api.merge_patch(path, {"secrets": [{"name": secret}]})


def dry_run(api: ApiServer, doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The object the server would create; retried while ServiceAccount admission has not
    seen the account's token Secret yet (its cache lags the write)."""
    deadline = time.monotonic() + ADMISSION_DEADLINE
    while True:
        try:
            created: dict[str, Any] = api.create(f"{collection(doc, namespace)}?dryRun=All", doc)
            return created
        except KubeApiError as exc:
            if "No API token found" not in exc.message or time.monotonic() > deadline:
                raise
        time.sleep(0.2)  # polling the admission cache, bounded by the deadline


def kept_in(answer: Any, sent: Any) -> bool:
    """``sent`` is in the server's ``answer``, which may add defaults and mounts."""
    if isinstance(sent, dict):
        return isinstance(answer, dict) and all(
            k in answer and kept_in(answer[k], v) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return isinstance(answer, list) and all(any(kept_in(a, v) for a in answer) for v in sent)
    return bool(answer == sent)


def install_rbac(api: ApiServer) -> str:
    """A fresh namespace holding rbac.yaml's objects (and the account's token Secret)."""
    namespace = api.new_namespace("rbac")
    for doc in documents("rbac.yaml"):
        api.create(collection(doc, namespace), doc)
    give_token_secret(api, namespace, CLUSTER)
    return namespace


def token_of(api: ApiServer, namespace: str) -> str:
    """A token of the service account (TokenRequest), as the kubelet mounts one."""
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{CLUSTER}/token"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    token: str = api.create(path, body)["status"]["token"]
    return token


def as_account(api: ApiServer, token: str) -> ApiServer:
    return ApiServer(api.port, token, Path(api.ca_file), Path(api.token_file))
