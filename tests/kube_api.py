"""A minimal synchronous JSON client for the test Kubernetes API server (tests/kube_kit.py):
urllib with the server's CA and a bearer token, enough for a test to play the operator."""

from __future__ import annotations

import builtins
import contextlib
import http.client
import json
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GROUP_PATH = "/apis/postgresql.cnpg.io/v1"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
REQUEST_TIMEOUT = 15.0


class KubeApiError(Exception):
    """A request the API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        details = parsed if isinstance(parsed, dict) else {}
        self.reason: str = details.get("reason", "")
        self.message: str = details.get("message", body)
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {self.message}")


class ApiServer:
    """Where the test API server listens, and a minimal JSON client for it (bearer token)."""

    def __init__(self, port: int, token: str, ca_file: Path, token_file: Path) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.url = f"https://{self.host}:{port}"
        self.token = token
        self.ca_file = str(ca_file)
        self.token_file = str(token_file)
        self._ssl = ssl.create_default_context(cafile=self.ca_file)

    def env(self) -> dict[str, str]:
        """The environment a daemon needs to reach this server in Kubernetes mode."""
        return {
            "KUBERNETES_SERVICE_HOST": self.host,
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "KUBE_TOKEN_FILE": self.token_file,
            "KUBE_CA_FILE": self.ca_file,
        }

    # -- raw requests --
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        """The decoded JSON answer to ``method path``; KubeApiError on an error status."""
        text = self.text(method, path, body, content_type, timeout)
        return json.loads(text) if text else None

    def text(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
        accept: str = "application/json",
    ) -> str:
        """The answer to ``method path`` as text; KubeApiError on an error status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                text: str = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise KubeApiError(method, path, exc.code, exc.read().decode()) from None
        return text

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def replace(self, path: str, body: dict[str, Any]) -> Any:
        """PUT: refused with 409 when body's metadata.resourceVersion is stale."""
        return self.request("PUT", path, body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def list(self, path: str) -> list[Any]:
        """The items of a collection."""
        items: list[Any] = self.get(path).get("items") or []
        return items

    # -- the Cluster resource and its neighbours --
    @staticmethod
    def clusters_path(namespace: str, name: str | None = None) -> str:
        base = f"{GROUP_PATH}/namespaces/{namespace}/clusters"
        return base if name is None else f"{base}/{name}"

    def cluster(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(self.clusters_path(namespace, name))
        return result

    def create_cluster(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Cluster; ``status`` in ``body`` is dropped by the server (subresource)."""
        full = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", **body}
        result: dict[str, Any] = self.create(self.clusters_path(namespace), full)
        return result

    def patch_cluster_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge ``status`` into the Cluster's status (a key set to None removes it)."""
        path = self.clusters_path(namespace, name) + "/status"
        result: dict[str, Any] = self.merge_patch(path, {"status": status})
        return result

    def events(self, namespace: str) -> builtins.list[dict[str, Any]]:
        """The core/v1 Events of ``namespace``."""
        return self.list(f"/api/v1/namespaces/{namespace}/events")

    def new_namespace(self, prefix: str = "t") -> str:
        """Create a namespace with a unique name (no controller deletes namespaces here)."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.create("/api/v1/namespaces", {"metadata": {"name": name}})
        return name

    @contextlib.contextmanager
    def watch(
        self, path: str, resource_version: str, timeout: float = 10.0
    ) -> Iterator[WatchStream]:
        """A watch of the collection ``path`` from ``resource_version`` (events after it)."""
        query = urllib.parse.urlencode(
            {
                "watch": "1",
                "resourceVersion": resource_version,
                "timeoutSeconds": str(int(timeout) + 1),
            }
        )
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._ssl)
        try:
            conn.request(
                "GET", f"{path}?{query}", headers={"Authorization": f"Bearer {self.token}"}
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise KubeApiError("GET", path, resp.status, resp.read().decode())
            yield WatchStream(conn, resp)
        finally:
            conn.close()


class WatchStream:
    """The events of an open watch, one JSON line each."""

    def __init__(self, conn: http.client.HTTPSConnection, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp

    def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next event ({"type": ..., "object": ...}); TimeoutError past ``timeout``."""
        sock = self._conn.sock
        if sock is not None:
            sock.settimeout(timeout)
        try:
            line = self._resp.readline()
        except TimeoutError:
            raise TimeoutError(f"no watch event within {timeout} s") from None
        if not line:
            raise EOFError("the API server closed the watch")
        event: dict[str, Any] = json.loads(line)
        return event
