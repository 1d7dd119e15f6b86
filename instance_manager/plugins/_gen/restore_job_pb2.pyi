from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RestoreJobHooksCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RestoreJobHooksCapabilitiesResult(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[RestoreJobHooksCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[RestoreJobHooksCapability, _Mapping]]] = ...) -> None: ...

class RestoreJobHooksCapability(_message.Message):
    __slots__ = ("kind",)
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[RestoreJobHooksCapability.Kind]
        KIND_RESTORE: _ClassVar[RestoreJobHooksCapability.Kind]
    KIND_UNSPECIFIED: RestoreJobHooksCapability.Kind
    KIND_RESTORE: RestoreJobHooksCapability.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: RestoreJobHooksCapability.Kind
    def __init__(self, kind: _Optional[_Union[RestoreJobHooksCapability.Kind, str]] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("cluster_definition", "check_empty_wal_archive")
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    CHECK_EMPTY_WAL_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    check_empty_wal_archive: bool
    def __init__(self, cluster_definition: _Optional[bytes] = ..., check_empty_wal_archive: _Optional[bool] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("restore_config", "envs")
    RESTORE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    ENVS_FIELD_NUMBER: _ClassVar[int]
    restore_config: str
    envs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, restore_config: _Optional[str] = ..., envs: _Optional[_Iterable[str]] = ...) -> None: ...
