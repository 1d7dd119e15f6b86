from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PostgresCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PostgresCapabilitiesResult(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[PostgresCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[PostgresCapability, _Mapping]]] = ...) -> None: ...

class PostgresCapability(_message.Message):
    __slots__ = ("rpc",)
    class RPC(_message.Message):
        __slots__ = ("type",)
        class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            TYPE_UNSPECIFIED: _ClassVar[PostgresCapability.RPC.Type]
            TYPE_ENRICH_CONFIGURATION: _ClassVar[PostgresCapability.RPC.Type]
        TYPE_UNSPECIFIED: PostgresCapability.RPC.Type
        TYPE_ENRICH_CONFIGURATION: PostgresCapability.RPC.Type
        TYPE_FIELD_NUMBER: _ClassVar[int]
        type: PostgresCapability.RPC.Type
        def __init__(self, type: _Optional[_Union[PostgresCapability.RPC.Type, str]] = ...) -> None: ...
    RPC_FIELD_NUMBER: _ClassVar[int]
    rpc: PostgresCapability.RPC
    def __init__(self, rpc: _Optional[_Union[PostgresCapability.RPC, _Mapping]] = ...) -> None: ...

class OperationType(_message.Message):
    __slots__ = ("type",)
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[OperationType.Type]
        TYPE_INIT: _ClassVar[OperationType.Type]
        TYPE_RESTORE: _ClassVar[OperationType.Type]
        TYPE_RECONCILE: _ClassVar[OperationType.Type]
        TYPE_UPGRADE: _ClassVar[OperationType.Type]
    TYPE_UNSPECIFIED: OperationType.Type
    TYPE_INIT: OperationType.Type
    TYPE_RESTORE: OperationType.Type
    TYPE_RECONCILE: OperationType.Type
    TYPE_UPGRADE: OperationType.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: OperationType.Type
    def __init__(self, type: _Optional[_Union[OperationType.Type, str]] = ...) -> None: ...

class EnrichConfigurationRequest(_message.Message):
    __slots__ = ("configs", "cluster_definition", "operation_type")
    class ConfigsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.ScalarMap[str, str]
    cluster_definition: bytes
    operation_type: OperationType
    def __init__(self, configs: _Optional[_Mapping[str, str]] = ..., cluster_definition: _Optional[bytes] = ..., operation_type: _Optional[_Union[OperationType, _Mapping]] = ...) -> None: ...

class EnrichConfigurationResult(_message.Message):
    __slots__ = ("configs",)
    class ConfigsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.ScalarMap[str, str]
    def __init__(self, configs: _Optional[_Mapping[str, str]] = ...) -> None: ...
