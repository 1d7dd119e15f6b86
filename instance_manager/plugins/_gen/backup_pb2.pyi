from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackupCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupCapabilitiesResult(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[BackupCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[BackupCapability, _Mapping]]] = ...) -> None: ...

class BackupCapability(_message.Message):
    __slots__ = ("rpc",)
    class RPC(_message.Message):
        __slots__ = ("type",)
        class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            TYPE_UNSPECIFIED: _ClassVar[BackupCapability.RPC.Type]
            TYPE_BACKUP: _ClassVar[BackupCapability.RPC.Type]
        TYPE_UNSPECIFIED: BackupCapability.RPC.Type
        TYPE_BACKUP: BackupCapability.RPC.Type
        TYPE_FIELD_NUMBER: _ClassVar[int]
        type: BackupCapability.RPC.Type
        def __init__(self, type: _Optional[_Union[BackupCapability.RPC.Type, str]] = ...) -> None: ...
    RPC_FIELD_NUMBER: _ClassVar[int]
    rpc: BackupCapability.RPC
    def __init__(self, rpc: _Optional[_Union[BackupCapability.RPC, _Mapping]] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("cluster_definition", "backup_definition", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    BACKUP_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    backup_definition: bytes
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, cluster_definition: _Optional[bytes] = ..., backup_definition: _Optional[bytes] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BackupResult(_message.Message):
    __slots__ = ("backup_id", "backup_name", "started_at", "stopped_at", "begin_wal", "end_wal", "begin_lsn", "end_lsn", "backup_label_file", "tablespace_map_file", "instance_id", "online", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BACKUP_ID_FIELD_NUMBER: _ClassVar[int]
    BACKUP_NAME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STOPPED_AT_FIELD_NUMBER: _ClassVar[int]
    BEGIN_WAL_FIELD_NUMBER: _ClassVar[int]
    END_WAL_FIELD_NUMBER: _ClassVar[int]
    BEGIN_LSN_FIELD_NUMBER: _ClassVar[int]
    END_LSN_FIELD_NUMBER: _ClassVar[int]
    BACKUP_LABEL_FILE_FIELD_NUMBER: _ClassVar[int]
    TABLESPACE_MAP_FILE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    backup_id: str
    backup_name: str
    started_at: int
    stopped_at: int
    begin_wal: str
    end_wal: str
    begin_lsn: str
    end_lsn: str
    backup_label_file: bytes
    tablespace_map_file: bytes
    instance_id: str
    online: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, backup_id: _Optional[str] = ..., backup_name: _Optional[str] = ..., started_at: _Optional[int] = ..., stopped_at: _Optional[int] = ..., begin_wal: _Optional[str] = ..., end_wal: _Optional[str] = ..., begin_lsn: _Optional[str] = ..., end_lsn: _Optional[str] = ..., backup_label_file: _Optional[bytes] = ..., tablespace_map_file: _Optional[bytes] = ..., instance_id: _Optional[str] = ..., online: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
