"""Wire compatibility of proto/*.proto with CNPG-I, checked on the generated descriptors.

The tables below are written from the protocol reference (service and method names, message
names, field numbers, types, presence, enum values). A wrong number or type fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto

from instance_manager.plugins._gen import (
    backup_pb2,
    backup_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
    operator_lifecycle_pb2,
    operator_pb2,
    postgres_pb2,
    postgres_pb2_grpc,
    reconciler_pb2,
    restore_job_pb2,
    restore_job_pb2_grpc,
    wal_pb2,
    wal_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

ID = "cnpgi.identity.v1"
WAL = "cnpgi.wal.v1"
BK = "cnpgi.backup.v1"
MT = "cnpgi.metrics.v1"
MAP = "map<string,string>"

# --- services -----------------------------------------------------------------------------

# full service name -> [(method, request message, response message)]
SERVICES: dict[str, list[tuple[str, str, str]]] = {
    f"{ID}.Identity": [
        ("GetPluginMetadata", "GetPluginMetadataRequest", "GetPluginMetadataResponse"),
        ("GetPluginCapabilities", "GetPluginCapabilitiesRequest", "GetPluginCapabilitiesResponse"),
        ("Probe", "ProbeRequest", "ProbeResponse"),
    ],
    f"{WAL}.WAL": [
        ("GetCapabilities", "WALCapabilitiesRequest", "WALCapabilitiesResult"),
        ("Archive", "WALArchiveRequest", "WALArchiveResult"),
        ("Restore", "WALRestoreRequest", "WALRestoreResult"),
        ("Status", "WALStatusRequest", "WALStatusResult"),
        ("SetFirstRequired", "SetFirstRequiredRequest", "SetFirstRequiredResult"),
    ],
    f"{WAL}.RestoreJobHooks": [
        (
            "GetCapabilities",
            "RestoreJobHooksCapabilitiesRequest",
            "RestoreJobHooksCapabilitiesResult",
        ),
        ("Restore", "RestoreRequest", "RestoreResponse"),
    ],
    f"{ID}.Postgres": [
        ("GetCapabilities", "PostgresCapabilitiesRequest", "PostgresCapabilitiesResult"),
        ("EnrichConfiguration", "EnrichConfigurationRequest", "EnrichConfigurationResult"),
    ],
    f"{BK}.Backup": [
        ("GetCapabilities", "BackupCapabilitiesRequest", "BackupCapabilitiesResult"),
        ("Backup", "BackupRequest", "BackupResult"),
    ],
    f"{MT}.Metrics": [
        ("GetCapabilities", "MetricsCapabilitiesRequest", "MetricsCapabilitiesResult"),
        ("Define", "DefineMetricsRequest", "DefineMetricsResult"),
        ("Collect", "CollectMetricsRequest", "CollectMetricsResult"),
    ],
}

SERVICE_MODULES: dict[str, tuple[ModuleType, ModuleType, str]] = {
    f"{ID}.Identity": (identity_pb2, identity_pb2_grpc, "Identity"),
    f"{WAL}.WAL": (wal_pb2, wal_pb2_grpc, "WAL"),
    f"{WAL}.RestoreJobHooks": (restore_job_pb2, restore_job_pb2_grpc, "RestoreJobHooks"),
    f"{ID}.Postgres": (postgres_pb2, postgres_pb2_grpc, "Postgres"),
    f"{BK}.Backup": (backup_pb2, backup_pb2_grpc, "Backup"),
    f"{MT}.Metrics": (metrics_pb2, metrics_pb2_grpc, "Metrics"),
}

OTHER_SERVICES: dict[str, tuple[ModuleType, list[str]]] = {
    "cnpgi.operator.v1.Operator": (
        operator_pb2,
        [
            "GetCapabilities",
            "ValidateClusterCreate",
            "ValidateClusterChange",
            "MutateCluster",
            "SetStatusInCluster",
            "Deregister",
        ],
    ),
    "cnpgi.operator_lifecycle.v1.OperatorLifecycle": (
        operator_lifecycle_pb2,
        ["GetCapabilities", "LifecycleHook"],
    ),
    "cnpgi.reconciler.v1.ReconcilerHooks": (reconciler_pb2, ["GetCapabilities", "Pre", "Post"]),
}

# --- messages -----------------------------------------------------------------------------
# full message name -> {field number: (field name, spec)}. Spec is a scalar type name or a
# full type name, prefixed by "repeated ", "optional " (proto3 presence) or "oneof <name> ".

Fields = dict[int, tuple[str, str]]

IDENTITY_MESSAGES: dict[str, Fields] = {
    f"{ID}.GetPluginMetadataRequest": {},
    f"{ID}.GetPluginMetadataResponse": {
        1: ("name", "string"),
        2: ("version", "string"),
        3: ("display_name", "string"),
        4: ("description", "string"),
        5: ("project_url", "string"),
        6: ("repository_url", "string"),
        7: ("license", "string"),
        8: ("license_url", "string"),
        9: ("maturity", "string"),
        10: ("vendor", "string"),
        11: ("manifest", MAP),
    },
    f"{ID}.GetPluginCapabilitiesRequest": {},
    f"{ID}.GetPluginCapabilitiesResponse": {
        1: ("capabilities", f"repeated {ID}.PluginCapability"),
    },
    f"{ID}.PluginCapability": {1: ("service", f"oneof type {ID}.PluginCapability.Service")},
    f"{ID}.PluginCapability.Service": {1: ("type", f"{ID}.PluginCapability.Service.Type")},
    f"{ID}.ProbeRequest": {},
    f"{ID}.ProbeResponse": {1: ("ready", "bool")},
}

WAL_MESSAGES: dict[str, Fields] = {
    f"{WAL}.WALArchiveRequest": {
        1: ("cluster_definition", "bytes"),
        2: ("source_file_name", "string"),
        3: ("parameters", MAP),
        4: ("check_empty_wal_archive", "optional bool"),
    },
    f"{WAL}.WALArchiveResult": {},
    f"{WAL}.WALRestoreRequest": {
        1: ("cluster_definition", "bytes"),
        2: ("source_wal_name", "string"),
        3: ("destination_file_name", "string"),
        4: ("parameters", MAP),
        5: ("mode", f"{WAL}.WALRestoreRequest.Mode"),
    },
    f"{WAL}.WALRestoreResult": {},
    f"{WAL}.WALStatusRequest": {1: ("cluster_definition", "bytes")},
    f"{WAL}.WALStatusResult": {
        1: ("first_wal", "string"),
        2: ("last_wal", "string"),
        4: ("additional_information", MAP),
    },
    f"{WAL}.SetFirstRequiredRequest": {
        1: ("cluster_definition", "bytes"),
        2: ("first_required_wal", "string"),
    },
    f"{WAL}.SetFirstRequiredResult": {},
    f"{WAL}.WALCapabilitiesRequest": {},
    f"{WAL}.WALCapabilitiesResult": {1: ("capabilities", f"repeated {WAL}.WALCapability")},
    f"{WAL}.WALCapability": {1: ("rpc", f"oneof type {WAL}.WALCapability.RPC")},
    f"{WAL}.WALCapability.RPC": {1: ("type", f"{WAL}.WALCapability.RPC.Type")},
}

BACKUP_MESSAGES: dict[str, Fields] = {
    f"{BK}.BackupCapabilitiesRequest": {},
    f"{BK}.BackupCapabilitiesResult": {1: ("capabilities", f"repeated {BK}.BackupCapability")},
    f"{BK}.BackupCapability": {1: ("rpc", f"oneof type {BK}.BackupCapability.RPC")},
    f"{BK}.BackupCapability.RPC": {1: ("type", f"{BK}.BackupCapability.RPC.Type")},
    f"{BK}.BackupRequest": {
        1: ("cluster_definition", "bytes"),
        2: ("backup_definition", "bytes"),
        3: ("parameters", MAP),
    },
    f"{BK}.BackupResult": {
        1: ("backup_id", "string"),
        2: ("backup_name", "string"),
        3: ("started_at", "int64"),
        4: ("stopped_at", "int64"),
        5: ("begin_wal", "string"),
        6: ("end_wal", "string"),
        7: ("begin_lsn", "string"),
        8: ("end_lsn", "string"),
        9: ("backup_label_file", "bytes"),
        10: ("tablespace_map_file", "bytes"),
        11: ("instance_id", "string"),
        12: ("online", "bool"),
        13: ("metadata", MAP),
    },
}

METRICS_MESSAGES: dict[str, Fields] = {
    f"{MT}.CollectMetricsRequest": {1: ("cluster_definition", "bytes")},
    f"{MT}.CollectMetric": {
        1: ("value", "double"),
        2: ("fq_name", "string"),
        3: ("variable_labels", "repeated string"),
    },
    f"{MT}.CollectMetricsResult": {1: ("metrics", f"repeated {MT}.CollectMetric")},
    f"{MT}.DefineMetricsRequest": {1: ("cluster_definition", "bytes")},
    f"{MT}.DefineMetricsResult": {1: ("metrics", f"repeated {MT}.Metric")},
    f"{MT}.MetricType": {1: ("type", f"{MT}.MetricType.Type")},
    f"{MT}.Metric": {
        1: ("fq_name", "string"),
        2: ("help", "string"),
        3: ("variable_labels", "repeated string"),
        4: ("const_labels", MAP),
        5: ("value_type", f"{MT}.MetricType"),
    },
    f"{MT}.MetricsCapabilitiesRequest": {},
    f"{MT}.MetricsCapabilitiesResult": {1: ("capabilities", f"repeated {MT}.MetricsCapability")},
    f"{MT}.MetricsCapability": {1: ("rpc", f"oneof type {MT}.MetricsCapability.RPC")},
    f"{MT}.MetricsCapability.RPC": {1: ("type", f"{MT}.MetricsCapability.RPC.Type")},
}

RESTORE_JOB_MESSAGES: dict[str, Fields] = {
    f"{WAL}.RestoreJobHooksCapabilitiesRequest": {},
    f"{WAL}.RestoreJobHooksCapabilitiesResult": {
        1: ("capabilities", f"repeated {WAL}.RestoreJobHooksCapability"),
    },
    # No oneof wrapper here, unlike the other capability messages.
    f"{WAL}.RestoreJobHooksCapability": {1: ("kind", f"{WAL}.RestoreJobHooksCapability.Kind")},
    f"{WAL}.RestoreRequest": {
        1: ("cluster_definition", "bytes"),
        2: ("check_empty_wal_archive", "optional bool"),
    },
    f"{WAL}.RestoreResponse": {
        1: ("restore_config", "string"),
        2: ("envs", "repeated string"),
    },
}

POSTGRES_MESSAGES: dict[str, Fields] = {
    f"{ID}.PostgresCapabilitiesRequest": {},
    f"{ID}.PostgresCapabilitiesResult": {
        1: ("capabilities", f"repeated {ID}.PostgresCapability"),
    },
    f"{ID}.PostgresCapability": {1: ("rpc", f"oneof type {ID}.PostgresCapability.RPC")},
    f"{ID}.PostgresCapability.RPC": {1: ("type", f"{ID}.PostgresCapability.RPC.Type")},
    f"{ID}.OperationType": {1: ("type", f"{ID}.OperationType.Type")},
    f"{ID}.EnrichConfigurationRequest": {
        1: ("configs", MAP),
        2: ("cluster_definition", "bytes"),
        3: ("operation_type", f"{ID}.OperationType"),
    },
    f"{ID}.EnrichConfigurationResult": {1: ("configs", MAP)},
}

MESSAGES_BY_MODULE: dict[str, tuple[ModuleType, dict[str, Fields]]] = {
    "identity": (identity_pb2, IDENTITY_MESSAGES),
    "wal": (wal_pb2, WAL_MESSAGES),
    "backup": (backup_pb2, BACKUP_MESSAGES),
    "metrics": (metrics_pb2, METRICS_MESSAGES),
    "restore_job": (restore_job_pb2, RESTORE_JOB_MESSAGES),
    "postgres": (postgres_pb2, POSTGRES_MESSAGES),
}

ALL_MESSAGES: dict[str, Fields] = {
    name: fields for _, table in MESSAGES_BY_MODULE.values() for name, fields in table.items()
}

# full enum name -> {value name: number}
ENUMS: dict[str, dict[str, int]] = {
    f"{ID}.PluginCapability.Service.Type": {
        "TYPE_UNSPECIFIED": 0,
        "TYPE_OPERATOR_SERVICE": 1,
        "TYPE_WAL_SERVICE": 2,
        "TYPE_BACKUP_SERVICE": 3,
        "TYPE_LIFECYCLE_SERVICE": 4,
        "TYPE_RECONCILER_HOOKS": 5,
        "TYPE_RESTORE_JOB": 6,
        "TYPE_POSTGRES": 7,
        "TYPE_INSTANCE_SIDECAR_INJECTION": 8,
        "TYPE_INSTANCE_JOB_SIDECAR_INJECTION": 9,
        "TYPE_METRICS": 10,
    },
    f"{WAL}.WALRestoreRequest.Mode": {"MODE_UNSPECIFIED": 0, "MODE_RECOVERY": 1, "MODE_REWIND": 2},
    f"{WAL}.WALCapability.RPC.Type": {
        "TYPE_UNSPECIFIED": 0,
        "TYPE_ARCHIVE_WAL": 1,
        "TYPE_RESTORE_WAL": 2,
        "TYPE_STATUS": 3,
        "TYPE_SET_FIRST_REQUIRED": 4,
    },
    f"{BK}.BackupCapability.RPC.Type": {"TYPE_UNSPECIFIED": 0, "TYPE_BACKUP": 1},
    f"{MT}.MetricType.Type": {
        "TYPE_UNSPECIFIED": 0,
        "TYPE_COUNTER": 1,
        "TYPE_GAUGE": 2,
        "TYPE_UNTYPED": 3,
    },
    f"{MT}.MetricsCapability.RPC.Type": {"TYPE_UNSPECIFIED": 0, "TYPE_METRICS": 1},
    f"{WAL}.RestoreJobHooksCapability.Kind": {"KIND_UNSPECIFIED": 0, "KIND_RESTORE": 1},
    f"{ID}.PostgresCapability.RPC.Type": {"TYPE_UNSPECIFIED": 0, "TYPE_ENRICH_CONFIGURATION": 1},
    f"{ID}.OperationType.Type": {
        "TYPE_UNSPECIFIED": 0,
        "TYPE_INIT": 1,
        "TYPE_RESTORE": 2,
        "TYPE_RECONCILE": 3,
        "TYPE_UPGRADE": 4,
    },
}

# --- helpers ------------------------------------------------------------------------------

_SCALAR_NAMES = {
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_STRING: "string",
}


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return str(field.message_type.full_name)
    if field.enum_type is not None:
        return str(field.enum_type.full_name)
    return _SCALAR_NAMES[field.type]


def field_spec(field: FieldDescriptor) -> str:
    """Render a field the way the tables above write it."""
    msg = field.message_type
    if msg is not None and msg.GetOptions().map_entry:
        entry = msg.fields_by_name
        return f"map<{_type_name(entry['key'])},{_type_name(entry['value'])}>"
    name = _type_name(field)
    if field.is_repeated:
        return f"repeated {name}"
    oneof = field.containing_oneof
    if oneof is None:
        return name
    if oneof.name == f"_{field.name}" and len(oneof.fields) == 1:  # proto3 `optional`
        return f"optional {name}"
    return f"oneof {oneof.name} {name}"


def all_messages(module: ModuleType) -> dict[str, Descriptor]:
    """Every message of a generated file, nested ones included, map entries excluded."""
    found: dict[str, Descriptor] = {}
    pending: list[Descriptor] = list(module.DESCRIPTOR.message_types_by_name.values())
    while pending:
        desc = pending.pop()
        if desc.GetOptions().map_entry:
            continue
        found[desc.full_name] = desc
        pending.extend(desc.nested_types)
    return found


def all_enums(module: ModuleType) -> dict[str, EnumDescriptor]:
    enums: dict[str, EnumDescriptor] = dict(
        (e.full_name, e) for e in module.DESCRIPTOR.enum_types_by_name.values()
    )
    for desc in all_messages(module).values():
        enums.update((e.full_name, e) for e in desc.enum_types)
    return enums


def decode_tags(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of each top-level field; varint and length-delimited."""

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            byte = data[pos]
            result |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                return result, pos
            shift += 7

    fields: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = varint(pos)
            fields.append((number, wire_type, value))
        elif wire_type == 2:
            size, pos = varint(pos)
            fields.append((number, wire_type, data[pos : pos + size]))
            pos += size
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
    return fields


# --- tests: services ----------------------------------------------------------------------


@pytest.mark.parametrize("full_name", sorted(SERVICES))
def test_service_methods(full_name: str) -> None:
    module, _, short = SERVICE_MODULES[full_name]
    service = module.DESCRIPTOR.services_by_name[short]
    assert service.full_name == full_name
    package = full_name.rsplit(".", 1)[0]
    actual = [
        (m.name, m.input_type.full_name, m.output_type.full_name, m.client_streaming)
        for m in service.methods
    ]
    expected = [
        (m, f"{package}.{req}", f"{package}.{resp}", False) for m, req, resp in SERVICES[full_name]
    ]
    assert actual == expected
    assert not any(m.server_streaming for m in service.methods)


class _RecordingChannel:
    """Stands in for a grpc channel: records the method paths a generated stub registers."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> object:
        self.paths.append(path)
        return object()


@pytest.mark.parametrize("full_name", sorted(SERVICES))
def test_stub_wire_paths(full_name: str) -> None:
    _, grpc_module, short = SERVICE_MODULES[full_name]
    channel = _RecordingChannel()
    getattr(grpc_module, f"{short}Stub")(channel)
    assert sorted(channel.paths) == sorted(f"/{full_name}/{m}" for m, _, _ in SERVICES[full_name])


def test_shared_packages() -> None:
    assert restore_job_pb2.DESCRIPTOR.package == "cnpgi.wal.v1"
    assert postgres_pb2.DESCRIPTOR.package == "cnpgi.identity.v1"
    assert wal_pb2.DESCRIPTOR.package == "cnpgi.wal.v1"
    assert identity_pb2.DESCRIPTOR.package == "cnpgi.identity.v1"
    assert backup_pb2.DESCRIPTOR.package == "cnpgi.backup.v1"
    assert metrics_pb2.DESCRIPTOR.package == "cnpgi.metrics.v1"


@pytest.mark.parametrize("full_name", sorted(OTHER_SERVICES))
def test_operator_side_services(full_name: str) -> None:
    module, methods = OTHER_SERVICES[full_name]
    service = module.DESCRIPTOR.services_by_name[full_name.rsplit(".", 1)[1]]
    assert service.full_name == full_name
    assert [m.name for m in service.methods] == methods


def test_no_imports() -> None:
    for module, _ in MESSAGES_BY_MODULE.values():
        file_proto = FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert list(file_proto.dependency) == []
        assert file_proto.syntax == "proto3"


# --- tests: messages and enums ------------------------------------------------------------


@pytest.mark.parametrize("module_name", sorted(MESSAGES_BY_MODULE))
def test_message_set(module_name: str) -> None:
    module, table = MESSAGES_BY_MODULE[module_name]
    assert sorted(all_messages(module)) == sorted(table)


@pytest.mark.parametrize("message", sorted(ALL_MESSAGES))
def test_message_fields(message: str) -> None:
    module = next(m for m, table in MESSAGES_BY_MODULE.values() if message in table)
    desc = all_messages(module)[message]
    actual = {f.number: (f.name, field_spec(f)) for f in desc.fields}
    assert actual == ALL_MESSAGES[message]
    for f in desc.fields:
        optional = field_spec(f).startswith(("optional ", "oneof "))
        message_typed = f.type == FieldDescriptor.TYPE_MESSAGE and not f.is_repeated
        assert f.has_presence == (optional or message_typed), f.name


def test_wal_status_field_3_unused() -> None:
    desc = wal_pb2.WALStatusResult.DESCRIPTOR
    assert 3 not in desc.fields_by_number


@pytest.mark.parametrize("enum_name", sorted(ENUMS))
def test_enum_values(enum_name: str) -> None:
    enums: dict[str, EnumDescriptor] = {}
    for module, _ in MESSAGES_BY_MODULE.values():
        enums.update(all_enums(module))
    values = {v.name: v.number for v in enums[enum_name].values}
    assert values == ENUMS[enum_name]


def test_enum_set_is_complete() -> None:
    found: set[str] = set()
    for module, _ in MESSAGES_BY_MODULE.values():
        found.update(all_enums(module))
    assert found == set(ENUMS)


def test_one_descriptor_pool() -> None:
    # All files load together (message names never collide across shared packages).
    pool = wal_pb2.DESCRIPTOR.pool
    for module, _ in MESSAGES_BY_MODULE.values():
        assert module.DESCRIPTOR.pool is pool
    assert pool.FindServiceByName("cnpgi.wal.v1.RestoreJobHooks").file.name.endswith(
        "restore_job.proto"
    )


# --- tests: encoding ----------------------------------------------------------------------


def test_archive_request_false_has_presence() -> None:
    request = wal_pb2.WALArchiveRequest(
        cluster_definition=b"{}",
        source_file_name="/pgdata/pg_wal/000000010000000000000001",
        check_empty_wal_archive=False,
    )
    assert request.HasField("check_empty_wal_archive")
    data = request.SerializeToString()
    assert (4, 0, 0) in decode_tags(data)
    assert [number for number, _, _ in decode_tags(data)] == [1, 2, 4]
    again = wal_pb2.WALArchiveRequest.FromString(data)
    assert again.HasField("check_empty_wal_archive")
    assert again.check_empty_wal_archive is False


def test_archive_request_unset_is_absent() -> None:
    request = wal_pb2.WALArchiveRequest(source_file_name="/x")
    assert not request.HasField("check_empty_wal_archive")
    assert [number for number, _, _ in decode_tags(request.SerializeToString())] == [2]


def test_restore_request_encoding() -> None:
    request = wal_pb2.WALRestoreRequest(
        cluster_definition=b"{}",
        source_wal_name="00000002.history",
        destination_file_name="/pgdata/pg_wal/RECOVERYHISTORY",
        parameters={"a": "b"},
        mode=wal_pb2.WALRestoreRequest.MODE_REWIND,
    )
    tags = decode_tags(request.SerializeToString())
    assert [(n, w) for n, w, _ in tags] == [(1, 2), (2, 2), (3, 2), (4, 2), (5, 0)]
    assert tags[4][2] == 2


def test_restore_job_request_presence() -> None:
    request = restore_job_pb2.RestoreRequest(check_empty_wal_archive=False)
    assert request.HasField("check_empty_wal_archive")
    assert decode_tags(request.SerializeToString()) == [(2, 0, 0)]


def test_capability_oneof_encoding() -> None:
    wal_cap = wal_pb2.WALCapability(
        rpc=wal_pb2.WALCapability.RPC(type=wal_pb2.WALCapability.RPC.TYPE_RESTORE_WAL)
    )
    assert wal_cap.WhichOneof("type") == "rpc"
    assert decode_tags(wal_cap.SerializeToString()) == [(1, 2, b"\x08\x02")]
    service = identity_pb2.PluginCapability.Service(
        type=identity_pb2.PluginCapability.Service.TYPE_METRICS
    )
    ident_cap = identity_pb2.PluginCapability(service=service)
    assert decode_tags(ident_cap.SerializeToString()) == [(1, 2, b"\x08\x0a")]


# --- the committed stubs match the protos -------------------------------------------------


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
