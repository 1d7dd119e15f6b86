from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WALArchiveRequest(_message.Message):
    __slots__ = ("cluster_definition", "source_file_name", "parameters", "check_empty_wal_archive")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CHECK_EMPTY_WAL_ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    source_file_name: str
    parameters: _containers.ScalarMap[str, str]
    check_empty_wal_archive: bool
    def __init__(self, cluster_definition: _Optional[bytes] = ..., source_file_name: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., check_empty_wal_archive: _Optional[bool] = ...) -> None: ...

class WALArchiveResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WALRestoreRequest(_message.Message):
    __slots__ = ("cluster_definition", "source_wal_name", "destination_file_name", "parameters", "mode")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[WALRestoreRequest.Mode]
        MODE_RECOVERY: _ClassVar[WALRestoreRequest.Mode]
        MODE_REWIND: _ClassVar[WALRestoreRequest.Mode]
    MODE_UNSPECIFIED: WALRestoreRequest.Mode
    MODE_RECOVERY: WALRestoreRequest.Mode
    MODE_REWIND: WALRestoreRequest.Mode
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WAL_NAME_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    source_wal_name: str
    destination_file_name: str
    parameters: _containers.ScalarMap[str, str]
    mode: WALRestoreRequest.Mode
    def __init__(self, cluster_definition: _Optional[bytes] = ..., source_wal_name: _Optional[str] = ..., destination_file_name: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[WALRestoreRequest.Mode, str]] = ...) -> None: ...

class WALRestoreResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WALStatusRequest(_message.Message):
    __slots__ = ("cluster_definition",)
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    def __init__(self, cluster_definition: _Optional[bytes] = ...) -> None: ...

class WALStatusResult(_message.Message):
    __slots__ = ("first_wal", "last_wal", "additional_information")
    class AdditionalInformationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FIRST_WAL_FIELD_NUMBER: _ClassVar[int]
    LAST_WAL_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_INFORMATION_FIELD_NUMBER: _ClassVar[int]
    first_wal: str
    last_wal: str
    additional_information: _containers.ScalarMap[str, str]
    def __init__(self, first_wal: _Optional[str] = ..., last_wal: _Optional[str] = ..., additional_information: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetFirstRequiredRequest(_message.Message):
    __slots__ = ("cluster_definition", "first_required_wal")
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    FIRST_REQUIRED_WAL_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    first_required_wal: str
    def __init__(self, cluster_definition: _Optional[bytes] = ..., first_required_wal: _Optional[str] = ...) -> None: ...

class SetFirstRequiredResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WALCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WALCapabilitiesResult(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[WALCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[WALCapability, _Mapping]]] = ...) -> None: ...

class WALCapability(_message.Message):
    __slots__ = ("rpc",)
    class RPC(_message.Message):
        __slots__ = ("type",)
        class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            TYPE_UNSPECIFIED: _ClassVar[WALCapability.RPC.Type]
            TYPE_ARCHIVE_WAL: _ClassVar[WALCapability.RPC.Type]
            TYPE_RESTORE_WAL: _ClassVar[WALCapability.RPC.Type]
            TYPE_STATUS: _ClassVar[WALCapability.RPC.Type]
            TYPE_SET_FIRST_REQUIRED: _ClassVar[WALCapability.RPC.Type]
        TYPE_UNSPECIFIED: WALCapability.RPC.Type
        TYPE_ARCHIVE_WAL: WALCapability.RPC.Type
        TYPE_RESTORE_WAL: WALCapability.RPC.Type
        TYPE_STATUS: WALCapability.RPC.Type
        TYPE_SET_FIRST_REQUIRED: WALCapability.RPC.Type
        TYPE_FIELD_NUMBER: _ClassVar[int]
        type: WALCapability.RPC.Type
        def __init__(self, type: _Optional[_Union[WALCapability.RPC.Type, str]] = ...) -> None: ...
    RPC_FIELD_NUMBER: _ClassVar[int]
    rpc: WALCapability.RPC
    def __init__(self, rpc: _Optional[_Union[WALCapability.RPC, _Mapping]] = ...) -> None: ...
