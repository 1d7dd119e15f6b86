"""A fake CNPG-I plugin sidecar for tests: Identity, WAL and grpc.health.v1 on a Unix socket.

In a pytest-asyncio test:

    async with FakePlugin(socket_dir, storage_dir, name="fake.example.io") as plugin:
        ...  # the socket is <socket_dir>/fake.example.io
        plugin.fail_archive = "bucket unreachable"  # switches are plain attributes
        await plugin.down(); await plugin.up()

As a separate process (for tests that run the daemon as a subprocess), until SIGTERM:

    python -m tests.fake_plugin --socket-dir D --storage S --name N [--latency 0.1]

Archived WAL files are stored flat as <storage>/<basename of source_file_name>; Restore copies
<storage>/<source_wal_name> to destination_file_name, or fails with NOT_FOUND.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from instance_manager.plugins._gen import (
    identity_pb2,
    identity_pb2_grpc,
    wal_pb2,
    wal_pb2_grpc,
)
from instance_manager.plugins.serve import listen_unix, stop_unix

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    ServiceType: TypeAlias = identity_pb2.PluginCapability.Service.Type
    WALRpcType: TypeAlias = wal_pb2.WALCapability.RPC.Type

DEFAULT_SERVICES: tuple[ServiceType, ...] = (
    identity_pb2.PluginCapability.Service.TYPE_WAL_SERVICE,
)
DEFAULT_WAL_RPCS: tuple[WALRpcType, ...] = (
    wal_pb2.WALCapability.RPC.TYPE_ARCHIVE_WAL,
    wal_pb2.WALCapability.RPC.TYPE_RESTORE_WAL,
)
FAKE_VERSION = "0.0.0-fake"
# Service names the health check answers for, besides "" (the whole server).
SERVED_SERVICES = ("cnpgi.identity.v1.Identity", "cnpgi.wal.v1.WAL")


# --- grpc.health.v1, built at run time (grpcio-health-checking is not a dependency) ---------


def _health_pool() -> descriptor_pool.DescriptorPool:
    """A private pool holding grpc.health.v1's two messages (same names and numbers)."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tests/fake_plugin/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    string_t = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    enum_t = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    request = fdp.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=string_t, label=optional)
    response = fdp.message_type.add(name="HealthCheckResponse")
    status_enum = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status_enum.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=enum_t,
        label=optional,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool


_HEALTH_POOL = _health_pool()
HealthCheckRequest: type[Message] = message_factory.GetMessageClass(
    _HEALTH_POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
)
HealthCheckResponse: type[Message] = message_factory.GetMessageClass(
    _HEALTH_POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
)
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HEALTH_SERVING = 1
HEALTH_NOT_SERVING = 2


def health_status_of(response: Message) -> int:
    """The ServingStatus number of a HealthCheckResponse (0, UNKNOWN, when unset)."""
    values = {fd.name: value for fd, value in response.ListFields()}
    return int(values.get("status", 0))


# --- what the fake records --------------------------------------------------------------


def _decode_cluster(raw: bytes) -> Any:
    """The Cluster JSON as Python data; None when empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class ArchiveCall:
    source_file_name: str
    # None when the caller did not set the field (no presence), else its value.
    check_empty_wal_archive: bool | None
    cluster: Any
    parameters: dict[str, str]

    @classmethod
    def from_request(cls, request: wal_pb2.WALArchiveRequest) -> ArchiveCall:
        has_check = request.HasField("check_empty_wal_archive")
        return cls(
            source_file_name=request.source_file_name,
            check_empty_wal_archive=request.check_empty_wal_archive if has_check else None,
            cluster=_decode_cluster(request.cluster_definition),
            parameters=dict(request.parameters),
        )


@dataclass(frozen=True)
class RestoreCall:
    source_wal_name: str
    destination_file_name: str
    mode: int  # a wal_pb2.WALRestoreRequest.Mode value
    cluster: Any
    parameters: dict[str, str]

    @classmethod
    def from_request(cls, request: wal_pb2.WALRestoreRequest) -> RestoreCall:
        return cls(
            source_wal_name=request.source_wal_name,
            destination_file_name=request.destination_file_name,
            mode=request.mode,
            cluster=_decode_cluster(request.cluster_definition),
            parameters=dict(request.parameters),
        )


# --- file helpers (run in a thread) -------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Write data to a temp file beside target, fsync it, rename it over target."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _owner_of(directory: Path) -> tuple[int, int] | None:
    """As root, hand restored files to the directory's owner (postgres), as a sidecar would."""
    if os.geteuid() != 0:
        return None
    st = directory.stat()
    return st.st_uid, st.st_gid


class MissingFileError(Exception):
    """The file to copy does not exist."""


def _read_source(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise MissingFileError(str(source)) from exc


def store_copy(source: Path, storage: Path) -> Path:
    """Archive: keep a durable copy of source as storage/<basename>."""
    target = storage / source.name
    write_durably(target, _read_source(source), 0o644, None)
    return target


def restore_copy(stored: Path, destination: Path) -> None:
    """Restore: copy a stored file to the path the caller asked for."""
    write_durably(destination, _read_source(stored), 0o600, _owner_of(destination.parent))


# --- servicers ----------------------------------------------------------------------------


class _IdentityServicer(identity_pb2_grpc.IdentityServicer):
    def __init__(self, plugin: FakePlugin) -> None:
        self._plugin = plugin

    async def GetPluginMetadata(
        self, request: identity_pb2.GetPluginMetadataRequest, context: Context
    ) -> identity_pb2.GetPluginMetadataResponse:
        self._plugin.calls["GetPluginMetadata"] += 1
        return identity_pb2.GetPluginMetadataResponse(
            name=self._plugin.metadata_name,
            version=FAKE_VERSION,
            display_name="Fake CNPG-I plugin",
            description="Stores WAL files in a local directory, for tests",
            license="Apache-2.0",
            license_url="https://www.apache.org/licenses/LICENSE-2.0",
            maturity="alpha",
            vendor="tests",
        )

    async def GetPluginCapabilities(
        self, request: identity_pb2.GetPluginCapabilitiesRequest, context: Context
    ) -> identity_pb2.GetPluginCapabilitiesResponse:
        self._plugin.calls["GetPluginCapabilities"] += 1
        service = identity_pb2.PluginCapability.Service
        return identity_pb2.GetPluginCapabilitiesResponse(
            capabilities=[
                identity_pb2.PluginCapability(service=service(type=kind))
                for kind in self._plugin.services
            ]
        )

    async def Probe(
        self, request: identity_pb2.ProbeRequest, context: Context
    ) -> identity_pb2.ProbeResponse:
        self._plugin.calls["Probe"] += 1
        return identity_pb2.ProbeResponse(ready=True)


class _WALServicer(wal_pb2_grpc.WALServicer):
    def __init__(self, plugin: FakePlugin) -> None:
        self._plugin = plugin

    async def GetCapabilities(
        self, request: wal_pb2.WALCapabilitiesRequest, context: Context
    ) -> wal_pb2.WALCapabilitiesResult:
        self._plugin.calls["WAL.GetCapabilities"] += 1
        rpc = wal_pb2.WALCapability.RPC
        return wal_pb2.WALCapabilitiesResult(
            capabilities=[
                wal_pb2.WALCapability(rpc=rpc(type=kind)) for kind in self._plugin.wal_rpcs
            ]
        )

    async def Archive(
        self, request: wal_pb2.WALArchiveRequest, context: Context
    ) -> wal_pb2.WALArchiveResult:
        plugin = self._plugin
        plugin.calls["Archive"] += 1
        call = ArchiveCall.from_request(request)
        plugin.archive_requests.append(call)
        plugin.journal_write("archive", asdict(call))
        await plugin.delay()
        if plugin.fail_archive is not None:
            await context.abort(grpc.StatusCode.INTERNAL, plugin.fail_archive)
        source = Path(call.source_file_name)
        if not source.is_absolute():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not absolute: {source}")
        if plugin.discard:
            return wal_pb2.WALArchiveResult()  # a no-op plugin, for benchmarks
        try:
            await asyncio.to_thread(store_copy, source, plugin.storage_dir)
        except MissingFileError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no such WAL file: {source}")
        return wal_pb2.WALArchiveResult()

    async def Restore(
        self, request: wal_pb2.WALRestoreRequest, context: Context
    ) -> wal_pb2.WALRestoreResult:
        plugin = self._plugin
        plugin.calls["Restore"] += 1
        call = RestoreCall.from_request(request)
        plugin.restore_requests.append(call)
        plugin.journal_write("restore", asdict(call))
        await plugin.delay()
        if plugin.fail_restore is not None:
            await context.abort(grpc.StatusCode.INTERNAL, plugin.fail_restore)
        name = call.source_wal_name
        if not name or Path(name).name != name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad WAL name: {name!r}")
        try:
            await asyncio.to_thread(
                restore_copy, plugin.storage_dir / name, Path(call.destination_file_name)
            )
        except MissingFileError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"WAL {name} not found")
        return wal_pb2.WALRestoreResult()

    async def Status(
        self, request: wal_pb2.WALStatusRequest, context: Context
    ) -> wal_pb2.WALStatusResult:
        self._plugin.calls["Status"] += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Status is not implemented")

    async def SetFirstRequired(
        self, request: wal_pb2.SetFirstRequiredRequest, context: Context
    ) -> wal_pb2.SetFirstRequiredResult:
        self._plugin.calls["SetFirstRequired"] += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "SetFirstRequired is not implemented")


def _health_handler(plugin: FakePlugin) -> grpc.GenericRpcHandler:
    async def check(request: Any, context: Context) -> Message:
        plugin.calls["Health.Check"] += 1
        if request.service not in ("", *SERVED_SERVICES):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service}")
        status = HEALTH_SERVING if plugin.serving else HEALTH_NOT_SERVING
        return HealthCheckResponse(status=status)

    handler = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=HealthCheckRequest.FromString,
        response_serializer=HealthCheckResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})


# --- the plugin ---------------------------------------------------------------------------


class FakePlugin:
    """One fake plugin sidecar. Every public attribute can be changed while it runs."""

    def __init__(
        self,
        socket_dir: Path | str,
        storage_dir: Path | str,
        name: str = "fake.example.io",
        *,
        metadata_name: str | None = None,
        services: Sequence[ServiceType] = DEFAULT_SERVICES,
        wal_rpcs: Sequence[WALRpcType] = DEFAULT_WAL_RPCS,
        latency: float = 0.0,
        fail_archive: str | None = None,
        fail_restore: str | None = None,
        journal: Path | str | None = None,
        discard: bool = False,
    ) -> None:
        self.socket_dir = Path(socket_dir)
        self.storage_dir = Path(storage_dir)
        self.name = name
        # What GetPluginMetadata answers: by default the socket file name, as CNPG requires.
        self.metadata_name = name if metadata_name is None else metadata_name
        self.services = list(services)  # PluginCapability.Service.Type values
        self.wal_rpcs = list(wal_rpcs)  # WALCapability.RPC.Type values
        self.latency = latency  # seconds added to every Archive and Restore
        self.fail_archive = fail_archive  # if set: Archive fails with INTERNAL and this message
        self.fail_restore = fail_restore  # same for Restore
        self.serving = True  # the grpc.health.v1 answer
        self.discard = discard  # Archive answers OK without storing anything (benchmarks)
        self.journal = None if journal is None else Path(journal)  # JSON lines of requests
        self.archive_requests: list[ArchiveCall] = []
        self.restore_requests: list[RestoreCall] = []
        self.calls: Counter[str] = Counter()  # RPC name -> number of calls
        self._server: grpc.aio.Server | None = None

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / self.name

    @property
    def status_calls(self) -> int:
        return self.calls["Status"]

    @property
    def set_first_required_calls(self) -> int:
        return self.calls["SetFirstRequired"]

    @property
    def running(self) -> bool:
        return self._server is not None

    async def delay(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    def journal_write(self, kind: str, record: dict[str, Any]) -> None:
        if self.journal is None:
            return
        line = json.dumps({"kind": kind, **record}, sort_keys=True)
        with self.journal.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def _prepare_dirs(self) -> None:
        for directory in (self.socket_dir, self.storage_dir):
            if not directory.is_dir():
                directory.mkdir(parents=True)
                directory.chmod(0o755)

    async def up(self) -> None:
        """Start serving (again) on the same socket path."""
        if self._server is not None:
            return
        self._prepare_dirs()
        server = grpc.aio.server()
        identity_pb2_grpc.add_IdentityServicer_to_server(_IdentityServicer(self), server)
        wal_pb2_grpc.add_WALServicer_to_server(_WALServicer(self), server)
        server.add_generic_rpc_handlers((_health_handler(self),))
        # The daemon's wal-archive/wal-restore run as the postgres user.
        await listen_unix(server, self.socket_path, 0o777)
        self._server = server

    async def down(self, grace: float | None = None) -> None:
        """Stop serving; in-flight calls are cancelled unless a grace period is given."""
        server, self._server = self._server, None
        await stop_unix(server, self.socket_path, grace)

    async def __aenter__(self) -> FakePlugin:
        await self.up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()


# --- command line -------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_plugin", description=__doc__)
    parser.add_argument("--socket-dir", required=True, type=Path)
    parser.add_argument("--storage", required=True, type=Path)
    parser.add_argument("--name", default="fake.example.io")
    parser.add_argument("--metadata-name", default=None)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--fail-archive", default=None, metavar="MESSAGE")
    parser.add_argument("--fail-restore", default=None, metavar="MESSAGE")
    parser.add_argument("--journal", type=Path, default=None, help="append requests as JSON")
    parser.add_argument("--discard", action="store_true", help="archive nothing (benchmarks)")
    return parser.parse_args(argv)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve(args: argparse.Namespace) -> None:
    plugin = FakePlugin(
        args.socket_dir,
        args.storage,
        name=args.name,
        metadata_name=args.metadata_name,
        latency=args.latency,
        fail_archive=args.fail_archive,
        fail_restore=args.fail_restore,
        journal=args.journal,
        discard=args.discard,
    )
    stop = _stop_event()
    async with plugin:
        print(f"fake plugin {plugin.metadata_name} listening on {plugin.socket_path}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    asyncio.run(_serve(_parse_args(argv)))
    sys.exit(0)


if __name__ == "__main__":
    main()
