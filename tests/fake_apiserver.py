"""A small in-process Kubernetes API server for the fast tests of Kubernetes mode.

It serves, over HTTPS on 127.0.0.1 with a self-signed certificate and a bearer token, the
calls ``instance_manager/kube/client.py`` makes: the Cluster (read, merge patch of the
object and of its status subresource, watch), Events (create) and Secrets (read). Objects
live in memory; every change bumps one integer ``resourceVersion`` and is kept in a
history that watches replay from the version they ask for, then follow.

A test plays the operator with the synchronous methods (``create_cluster``,
``patch_status``, ``put_secret``...) and injects faults: ``expire_watches`` (the next
watches answer 410 as an ERROR event), ``conflicts`` (the next patches answer 409),
``forbid``/``allow`` (403 on a path), ``end_watches`` (the server ends the open watches as
at ``timeoutSeconds``), ``stop``/``start`` (the server goes away, its connections cut,
and comes back on the same port). ``requests`` records what the server was asked.

Start it with ``async with FakeApiServer(directory) as server:``; ``server.env()`` is the
environment of an in-cluster client (``KUBERNETES_SERVICE_HOST``/``PORT``,
``KUBE_TOKEN_FILE``, ``KUBE_CA_FILE``).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import ipaddress
import json
import secrets
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.daemon import free_port

CLUSTERS = "/apis/postgresql.cnpg.io/v1/namespaces/{ns}/clusters"
MERGE_PATCH = "application/merge-patch+json"
HOST = "127.0.0.1"


@dataclasses.dataclass
class Seen:
    """One request the server was sent; ``status`` is set once it is answered."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    at: float  # the event loop's time when it came
    status: int = 0


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``target`` with ``patch`` applied (null removes a key; lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def refuse(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_object(code, reason, message), status=code)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "apiserver.crt", directory / "apiserver.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class FakeApiServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.cert_file, key_file = self_signed(directory)
        self.token_file = directory / "token"
        self.token_file.write_text(self.token)
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(self.cert_file, key_file)
        self.version = 100
        self.clusters: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[Seen] = []
        # (resourceVersion, type, object) of every change, in order
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.watching = 0  # watch streams open now
        self.expire_watches = 0  # the next watches answer 410
        self.conflicts = 0  # the next patches answer 409
        self._forbidden: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._cut = asyncio.Event()  # ends the open watches
        self._streams: set[asyncio.Transport] = set()  # of the open watches
        self._runner: web.AppRunner | None = None

    # -- life --
    def env(self) -> dict[str, str]:
        return {
            "KUBERNETES_SERVICE_HOST": HOST,
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "KUBE_TOKEN_FILE": str(self.token_file),
            "KUBE_CA_FILE": str(self.cert_file),
        }

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._gate])
        clusters = CLUSTERS.format(ns="{ns}")
        app.router.add_get(clusters, self._list_or_watch)
        for path in (f"{clusters}/{{name}}", f"{clusters}/{{name}}/{{sub:status}}"):
            app.router.add_get(path, self._get_cluster)
            app.router.add_patch(path, self._patch_cluster)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._get_secret)
        self._cut = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port, ssl_context=self._ssl)
        await site.start()

    async def stop(self) -> None:
        """Close the listener and cut every connection, open watches included."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._cut.set()
        for transport in list(self._streams):
            if not transport.is_closing():
                transport.abort()
        await runner.cleanup()

    # -- the operator's side --
    def create_cluster(self, obj: dict[str, Any]) -> dict[str, Any]:
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        metadata.setdefault("uid", secrets.token_hex(8))
        return self._store("ADDED", copy.deepcopy(obj))

    def cluster(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return copy.deepcopy(self.clusters[namespace, name])

    def patch_status(self, name: str, patch: dict[str, Any], namespace: str = "default") -> None:
        obj = self.cluster(name, namespace)
        obj["status"] = merge_patch(obj.get("status"), patch)
        self._store("MODIFIED", obj)

    def patch_spec(self, name: str, patch: dict[str, Any], namespace: str = "default") -> None:
        obj = self.cluster(name, namespace)
        obj["spec"] = merge_patch(obj.get("spec"), patch)
        self._store("MODIFIED", obj)

    def put_secret(self, name: str, data: dict[str, str], namespace: str = "default") -> None:
        """A Secret whose ``data`` values are already base64."""
        self.version += 1
        metadata = {"name": name, "namespace": namespace, "resourceVersion": str(self.version)}
        self.secrets[namespace, name] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "kubernetes.io/tls",
            "data": dict(data),
        }

    def bookmark(self) -> int:
        """Another object changed (the version moves on) and the watches hear a BOOKMARK."""
        self.version += 1
        marker: dict[str, Any] = {"kind": "Cluster", "apiVersion": "postgresql.cnpg.io/v1"}
        marker["metadata"] = {"resourceVersion": str(self.version)}
        self.history.append((self.version, "BOOKMARK", marker))
        self._wake()
        return self.version

    # -- faults --
    def forbid(self, path: str, message: str) -> None:
        """Answer 403 with ``message`` to every request whose path starts with ``path``."""
        self._forbidden[path] = message

    def allow(self, path: str) -> None:
        self._forbidden.pop(path, None)

    def end_watches(self) -> None:
        """End the open watch streams cleanly, as the server does at ``timeoutSeconds``."""
        self._cut.set()
        self._cut = asyncio.Event()

    def patches(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "PATCH"]

    def watches(self) -> list[Seen]:
        return [r for r in self.requests if r.query.get("watch") in ("1", "true", "True")]

    # -- the server's side --
    def _store(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        metadata = obj["metadata"]
        self.clusters[metadata["namespace"], metadata["name"]] = obj
        self.history.append((self.version, kind, copy.deepcopy(obj)))
        self._wake()
        return copy.deepcopy(obj)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        content_type = request.headers.get("Content-Type", "")
        at = asyncio.get_running_loop().time()
        seen = Seen(request.method, request.path, dict(request.query), content_type, body, at)
        self.requests.append(seen)
        response = await self._answer(request, handler)
        seen.status = response.status
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return refuse(401, "Unauthorized", "Unauthorized")
        for prefix, message in self._forbidden.items():
            if request.path.startswith(prefix):
                return refuse(403, "Forbidden", message)
        response: web.StreamResponse = await handler(request)
        return response

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        return self.clusters.get((request.match_info["ns"], request.match_info["name"]))

    async def _get_cluster(self, request: web.Request) -> web.Response:
        obj = self._find(request)
        if obj is None:
            name = request.match_info["name"]
            return refuse(404, "NotFound", f'clusters.postgresql.cnpg.io "{name}" not found')
        return web.json_response(obj)

    async def _patch_cluster(self, request: web.Request) -> web.Response:
        if request.content_type != MERGE_PATCH:
            return refuse(415, "UnsupportedMediaType", f"unsupported patch {request.content_type}")
        obj = self._find(request)
        if obj is None:
            return refuse(404, "NotFound", "not found")
        if self.conflicts > 0:
            self.conflicts -= 1
            message = "the object has been modified; please apply your changes to the latest"
            return refuse(409, "Conflict", message)
        patch = await request.json()
        if not isinstance(patch, dict):
            return refuse(400, "BadRequest", "a merge patch must be an object")
        updated = copy.deepcopy(obj)
        if request.match_info.get("sub") == "status":
            updated["status"] = merge_patch(obj.get("status"), patch.get("status"))
        else:  # the status subresource keeps the object's status out of this one
            patch.pop("status", None)
            updated = merge_patch(updated, patch)
        return web.json_response(self._store("MODIFIED", updated))

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["ns"]
        if request.query.get("watch") not in ("1", "true", "True"):
            items = [o for (ns, _), o in self.clusters.items() if ns == namespace]
            metadata = {"resourceVersion": str(self.version)}
            return web.json_response({"kind": "ClusterList", "metadata": metadata, "items": items})
        return await self._watch(request, namespace)

    async def _watch(self, request: web.Request, namespace: str) -> web.StreamResponse:
        query = request.query
        since = int(query.get("resourceVersion") or self.version)
        name = query.get("fieldSelector", "").removeprefix("metadata.name=")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "True", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.expire_watches > 0:
            self.expire_watches -= 1
            message = f"too old resource version: {since} ({self.version})"
            gone = {"type": "ERROR", "object": status_object(410, "Expired", message)}
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(query.get("timeoutSeconds") or 1800)
        cut = self._cut
        transport = request.transport
        assert isinstance(transport, asyncio.Transport)
        self._streams.add(transport)
        self.watching += 1
        try:
            while True:
                changed = self._changed
                lines, since = self._pending(since, namespace, name, bookmarks)
                for line in lines:
                    await response.write(line)
                if cut.is_set() or loop.time() >= deadline:
                    break
                waits = [asyncio.ensure_future(e.wait()) for e in (changed, cut)]
                left = max(0.0, deadline - loop.time())
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
        except ConnectionError:
            pass
        finally:
            self.watching -= 1
            self._streams.discard(transport)
        return response

    def _pending(
        self, since: int, namespace: str, name: str, bookmarks: bool
    ) -> tuple[list[bytes], int]:
        """The watch events after version ``since`` of the selected Cluster, and the
        version they bring the watch to."""
        lines = []
        for version, kind, obj in self.history:
            if version <= since:
                continue
            since = version
            meta = obj["metadata"]
            if kind == "BOOKMARK":
                if not bookmarks:
                    continue
            elif meta["namespace"] != namespace or (name and meta["name"] != name):
                continue
            lines.append(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        return lines, since

    async def _create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.events.append(body)
        return web.json_response(body, status=201)

    async def _get_secret(self, request: web.Request) -> web.Response:
        found = self.secrets.get((request.match_info["ns"], request.match_info["name"]))
        if found is None:
            name = request.match_info["name"]
            return refuse(404, "NotFound", f'secrets "{name}" not found')
        return web.json_response(found)
