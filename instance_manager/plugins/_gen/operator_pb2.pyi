from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OperatorCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OperatorCapabilitiesResult(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[OperatorCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[OperatorCapability, _Mapping]]] = ...) -> None: ...

class OperatorValidateClusterCreateRequest(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    def __init__(self, definition: _Optional[bytes] = ...) -> None: ...

class OperatorValidateClusterCreateResult(_message.Message):
    __slots__ = ("validation_errors",)
    VALIDATION_ERRORS_FIELD_NUMBER: _ClassVar[int]
    validation_errors: _containers.RepeatedCompositeFieldContainer[ValidationError]
    def __init__(self, validation_errors: _Optional[_Iterable[_Union[ValidationError, _Mapping]]] = ...) -> None: ...

class OperatorValidateClusterChangeRequest(_message.Message):
    __slots__ = ("old_cluster", "new_cluster")
    OLD_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NEW_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    old_cluster: bytes
    new_cluster: bytes
    def __init__(self, old_cluster: _Optional[bytes] = ..., new_cluster: _Optional[bytes] = ...) -> None: ...

class OperatorValidateClusterChangeResult(_message.Message):
    __slots__ = ("validation_errors",)
    VALIDATION_ERRORS_FIELD_NUMBER: _ClassVar[int]
    validation_errors: _containers.RepeatedCompositeFieldContainer[ValidationError]
    def __init__(self, validation_errors: _Optional[_Iterable[_Union[ValidationError, _Mapping]]] = ...) -> None: ...

class OperatorMutateClusterRequest(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    def __init__(self, definition: _Optional[bytes] = ...) -> None: ...

class OperatorMutateClusterResult(_message.Message):
    __slots__ = ("json_patch",)
    JSON_PATCH_FIELD_NUMBER: _ClassVar[int]
    json_patch: bytes
    def __init__(self, json_patch: _Optional[bytes] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: bytes
    def __init__(self, definition: _Optional[bytes] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ValidationError(_message.Message):
    __slots__ = ("path_components", "value", "message")
    PATH_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    path_components: _containers.RepeatedScalarFieldContainer[str]
    value: str
    message: str
    def __init__(self, path_components: _Optional[_Iterable[str]] = ..., value: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class OperatorCapability(_message.Message):
    __slots__ = ("rpc",)
    class RPC(_message.Message):
        __slots__ = ("type",)
        class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            TYPE_UNSPECIFIED: _ClassVar[OperatorCapability.RPC.Type]
            TYPE_VALIDATE_CLUSTER_CREATE: _ClassVar[OperatorCapability.RPC.Type]
            TYPE_VALIDATE_CLUSTER_CHANGE: _ClassVar[OperatorCapability.RPC.Type]
            TYPE_MUTATE_CLUSTER: _ClassVar[OperatorCapability.RPC.Type]
            TYPE_SET_STATUS_IN_CLUSTER: _ClassVar[OperatorCapability.RPC.Type]
            TYPE_DEREGISTER: _ClassVar[OperatorCapability.RPC.Type]
        TYPE_UNSPECIFIED: OperatorCapability.RPC.Type
        TYPE_VALIDATE_CLUSTER_CREATE: OperatorCapability.RPC.Type
        TYPE_VALIDATE_CLUSTER_CHANGE: OperatorCapability.RPC.Type
        TYPE_MUTATE_CLUSTER: OperatorCapability.RPC.Type
        TYPE_SET_STATUS_IN_CLUSTER: OperatorCapability.RPC.Type
        TYPE_DEREGISTER: OperatorCapability.RPC.Type
        TYPE_FIELD_NUMBER: _ClassVar[int]
        type: OperatorCapability.RPC.Type
        def __init__(self, type: _Optional[_Union[OperatorCapability.RPC.Type, str]] = ...) -> None: ...
    RPC_FIELD_NUMBER: _ClassVar[int]
    rpc: OperatorCapability.RPC
    def __init__(self, rpc: _Optional[_Union[OperatorCapability.RPC, _Mapping]] = ...) -> None: ...

class SetStatusInClusterRequest(_message.Message):
    __slots__ = ("cluster",)
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    cluster: bytes
    def __init__(self, cluster: _Optional[bytes] = ...) -> None: ...

class SetStatusInClusterResponse(_message.Message):
    __slots__ = ("json_status",)
    JSON_STATUS_FIELD_NUMBER: _ClassVar[int]
    json_status: bytes
    def __init__(self, json_status: _Optional[bytes] = ...) -> None: ...
