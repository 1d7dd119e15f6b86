"""The Kubernetes API client of Kubernetes mode: the only importer of kubernetes-asyncio.

That library costs ~470 ms and ~35 MB when imported whole, so this module is imported
only when the daemon runs in Kubernetes mode, and it imports only the library's modules it
uses (the package ``__init__`` files would import every API and model: see kube/lazy.py).
Configuration: the pod's service account (in-cluster:
``KUBERNETES_SERVICE_HOST``/``PORT``, the token and CA files, whose paths
``KUBE_TOKEN_FILE`` and ``KUBE_CA_FILE`` override) or a kubeconfig file.

Every call has a deadline. Failures become two exceptions: ``ApiError`` (the API server
answered with an error status) and ``Unreachable`` (no answer: refused, reset, timed
out). Merge patches are sent as ``application/merge-patch+json``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client.api.coordination_v1_api import CoordinationV1Api
from kubernetes_asyncio.client.api.core_v1_api import CoreV1Api
from kubernetes_asyncio.client.api.custom_objects_api import CustomObjectsApi
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.configuration import Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import load_incluster_config
from kubernetes_asyncio.config.kube_config import load_kube_config

GROUP, VERSION, PLURAL = "postgresql.cnpg.io", "v1", "clusters"
QUORUM_PLURAL = "failoverquorums"
TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 10.0
# A watch request ends after this long without an error; it is then resumed.
WATCH_SECONDS = 240


class KubeError(Exception):
    status = 0


class Unreachable(KubeError):
    """The API server did not answer."""


class ApiError(KubeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


def _api_error(exc: ApiException) -> ApiError:
    message = ""
    try:
        body = json.loads(exc.body or "{}")
        message = str(body.get("message") or "") if isinstance(body, dict) else ""
    except (ValueError, TypeError):
        message = str(exc.body or "")[:200]
    return ApiError(int(exc.status or 0), str(exc.reason or ""), message)


@dataclass(frozen=True)
class Target:
    """Which Cluster this instance belongs to."""

    namespace: str
    name: str


async def load_configuration(env: Mapping[str, str], kubeconfig: Path | None) -> Configuration:
    """The client configuration: a kubeconfig when given, else the service account."""
    configuration = Configuration()
    if kubeconfig is not None:
        await load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        return configuration
    try:
        load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration,
            token_filename=env.get("KUBE_TOKEN_FILE") or TOKEN_FILE,
            cert_filename=env.get("KUBE_CA_FILE") or CA_FILE,
            environ=env,  # KUBERNETES_SERVICE_HOST/PORT
        )
    except ConfigException as exc:
        raise KubeError(f"cannot configure the Kubernetes client: {exc}") from None
    return configuration


class Kube:
    """The calls the instance makes, each bounded by REQUEST_TIMEOUT."""

    def __init__(self, configuration: Configuration, target: Target) -> None:
        self.configuration = configuration
        self.target = target
        self._api: ApiClient | None = None

    @property
    def api(self) -> ApiClient:
        """Made at first use, inside the event loop its HTTP session belongs to."""
        if self._api is None:
            self._api = ApiClient(self.configuration)
        return self._api

    @property
    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self.api)

    @property
    def core(self) -> CoreV1Api:
        return CoreV1Api(self.api)

    @property
    def coordination(self) -> CoordinationV1Api:
        return CoordinationV1Api(self.api)

    @classmethod
    async def connect(
        cls, target: Target, env: Mapping[str, str] = os.environ, kubeconfig: Path | None = None
    ) -> Kube:
        return cls(await load_configuration(env, kubeconfig), target)

    async def close(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.close()

    async def call(
        self, method: Any, *args: Any, timeout: float = REQUEST_TIMEOUT, **kw: Any
    ) -> Any:
        """``method(*args, **kw)`` with a deadline; errors as ApiError / Unreachable."""
        try:
            async with asyncio.timeout(timeout):
                return await method(*args, _request_timeout=timeout, **kw)
        except ApiException as exc:
            if exc.status in (None, 0):
                raise Unreachable(str(exc.reason or "no answer")) from None
            raise _api_error(exc) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None

    # -- the Cluster --
    def _cluster_args(self) -> tuple[str, str, str, str]:
        return GROUP, VERSION, self.target.namespace, PLURAL

    async def get_cluster(self, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        method = self.custom.get_namespaced_custom_object
        found: dict[str, Any] = await self.call(
            method, *self._cluster_args(), self.target.name, timeout=timeout
        )
        return found

    async def patch_cluster_status(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch of the Cluster's status subresource."""
        method = self.custom.patch_namespaced_custom_object_status
        patched: dict[str, Any] = await self.call(
            method, *self._cluster_args(), self.target.name, patch, _content_type=MERGE_PATCH
        )
        return patched

    async def watch_cluster(self, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """The watch events of this Cluster from ``resource_version``, until the server
        ends the request (after about WATCH_SECONDS): ``{"type": ..., "object": ...}``."""
        method = self.custom.list_namespaced_custom_object
        response = await self.call(
            method,
            *self._cluster_args(),
            watch=True,
            field_selector=f"metadata.name={self.target.name}",
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            timeout=WATCH_SECONDS + REQUEST_TIMEOUT,
        )
        if not 200 <= response.status < 300:  # unread content: the library did not check
            raise await _refusal(response)
        try:
            async for line in _lines(response):
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        finally:
            response.release()

    # -- the FailoverQuorum (kube/quorum.py), named after the Cluster --
    def _quorum_args(self) -> tuple[str, str, str, str]:
        return GROUP, VERSION, self.target.namespace, QUORUM_PLURAL

    async def get_quorum(self) -> dict[str, Any]:
        method = self.custom.get_namespaced_custom_object
        found: dict[str, Any] = await self.call(method, *self._quorum_args(), self.target.name)
        return found

    async def create_quorum(self, body: Mapping[str, Any]) -> dict[str, Any]:
        method = self.custom.create_namespaced_custom_object
        found: dict[str, Any] = await self.call(method, *self._quorum_args(), body)
        return found

    async def patch_quorum_status(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        method = self.custom.patch_namespaced_custom_object_status
        patched: dict[str, Any] = await self.call(
            method, *self._quorum_args(), self.target.name, patch, _content_type=MERGE_PATCH
        )
        return patched

    # -- other objects --
    async def create_event(self, body: Mapping[str, Any]) -> None:
        await self.call(self.core.create_namespaced_event, self.target.namespace, body)

    async def get_secret(self, name: str) -> dict[str, Any]:
        found = await self.call(self.core.read_namespaced_secret, name, self.target.namespace)
        secret: dict[str, Any] = self.api.sanitize_for_serialization(found)
        return secret

    # -- the primary Lease (kube/lease.py) --
    async def read_lease(self, name: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        method = self.coordination.read_namespaced_lease
        found = await self.call(method, name, self.target.namespace, timeout=timeout)
        lease: dict[str, Any] = self.api.sanitize_for_serialization(found)
        return lease

    async def create_lease(
        self, body: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        method = self.coordination.create_namespaced_lease
        found = await self.call(method, self.target.namespace, body, timeout=timeout)
        lease: dict[str, Any] = self.api.sanitize_for_serialization(found)
        return lease

    async def replace_lease(
        self, name: str, body: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        """PUT: refused with 409 when ``body``'s metadata.resourceVersion is stale."""
        method = self.coordination.replace_namespaced_lease
        found = await self.call(method, name, self.target.namespace, body, timeout=timeout)
        lease: dict[str, Any] = self.api.sanitize_for_serialization(found)
        return lease


async def _refusal(response: Any) -> ApiError:
    """The error a streamed request was answered with (its body is a Status)."""
    body = b""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            body = await response.read()
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    finally:
        response.release()
    exc = ApiException(status=response.status, reason=response.reason)
    exc.body = body
    return _api_error(exc)


async def _lines(response: Any) -> AsyncIterator[bytes]:
    """Newline-separated records of a streamed body, whatever their length."""
    pending = b""
    async for chunk in response.content.iter_any():
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line, pending = pending[:end], pending[end + 1 :]
            if line.strip():
                yield line
    if pending.strip():
        yield pending
