"""cnpgi.identity.v1.Identity, and grpc.health.v1.Health for a sidecar startup probe.

grpcio-health-checking is not a dependency: the two health messages are described here
(same package, names and field numbers as grpc/health/v1/health.proto) in a private
descriptor pool, and only ``Check`` is served, which is what probes call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from instance_manager.plugins._gen import identity_pb2, identity_pb2_grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

Service = identity_pb2.PluginCapability.Service
SERVICES = (
    Service.TYPE_WAL_SERVICE,
    Service.TYPE_BACKUP_SERVICE,
    Service.TYPE_METRICS,
    Service.TYPE_RESTORE_JOB,
)
# The gRPC services this sidecar serves, by full name (health checks may name one).
SERVICE_NAMES = (
    "cnpgi.identity.v1.Identity",
    "cnpgi.wal.v1.WAL",
    "cnpgi.backup.v1.Backup",
    "cnpgi.metrics.v1.Metrics",
    "cnpgi.wal.v1.RestoreJobHooks",
)


class IdentityService(identity_pb2_grpc.IdentityServicer):
    def __init__(self, name: str, version: str, manifest: dict[str, str]) -> None:
        self.name = name
        self.version = version
        self.manifest = manifest

    async def GetPluginMetadata(
        self, request: identity_pb2.GetPluginMetadataRequest, context: Context
    ) -> identity_pb2.GetPluginMetadataResponse:
        return identity_pb2.GetPluginMetadataResponse(
            name=self.name,
            version=self.version,
            display_name="pgBackRest",
            description="WAL archiving, backups, metrics and recovery with pgBackRest",
            license="Apache-2.0",
            license_url="https://www.apache.org/licenses/LICENSE-2.0",
            maturity="alpha",
            vendor="instance-manager",
            manifest=self.manifest,
        )

    async def GetPluginCapabilities(
        self, request: identity_pb2.GetPluginCapabilitiesRequest, context: Context
    ) -> identity_pb2.GetPluginCapabilitiesResponse:
        return identity_pb2.GetPluginCapabilitiesResponse(
            capabilities=[
                identity_pb2.PluginCapability(service=Service(type=kind)) for kind in SERVICES
            ]
        )

    async def Probe(
        self, request: identity_pb2.ProbeRequest, context: Context
    ) -> identity_pb2.ProbeResponse:
        return identity_pb2.ProbeResponse(ready=True)


# -- grpc.health.v1 ----------------------------------------------------------------------

SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
SERVING = 1
_HEALTH_PACKAGE = "grpc.health.v1"


def _health_messages() -> tuple[type[Message], type[Message]]:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="instance_manager/pgbackrest/health.proto", package=_HEALTH_PACKAGE, syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    statuses = response.enum_type.add(name="ServingStatus")
    for number, status in enumerate(SERVING_STATUSES):
        statuses.value.add(name=status, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        label=field.LABEL_OPTIONAL,
        type_name=f".{_HEALTH_PACKAGE}.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)

    def message(name: str) -> type[Message]:
        return message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{_HEALTH_PACKAGE}.{name}")
        )

    return message("HealthCheckRequest"), message("HealthCheckResponse")


HealthCheckRequest, HealthCheckResponse = _health_messages()


def health_handler() -> grpc.GenericRpcHandler:
    """``/grpc.health.v1.Health/Check``: SERVING for the server and each of its services."""

    async def check(request: Any, context: Context) -> Message:
        if request.service and request.service not in SERVICE_NAMES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service}")
        return HealthCheckResponse(status=SERVING)

    method = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=HealthCheckRequest.FromString,
        response_serializer=HealthCheckResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(f"{_HEALTH_PACKAGE}.Health", {"Check": method})
