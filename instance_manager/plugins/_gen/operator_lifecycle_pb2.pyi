from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OperatorLifecycleCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OperatorLifecycleCapabilitiesResponse(_message.Message):
    __slots__ = ("lifecycle_capabilities",)
    LIFECYCLE_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    lifecycle_capabilities: _containers.RepeatedCompositeFieldContainer[OperatorLifecycleCapabilities]
    def __init__(self, lifecycle_capabilities: _Optional[_Iterable[_Union[OperatorLifecycleCapabilities, _Mapping]]] = ...) -> None: ...

class OperatorLifecycleCapabilities(_message.Message):
    __slots__ = ("group", "kind", "operation_types")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPES_FIELD_NUMBER: _ClassVar[int]
    group: str
    kind: str
    operation_types: _containers.RepeatedCompositeFieldContainer[OperatorOperationType]
    def __init__(self, group: _Optional[str] = ..., kind: _Optional[str] = ..., operation_types: _Optional[_Iterable[_Union[OperatorOperationType, _Mapping]]] = ...) -> None: ...

class OperatorOperationType(_message.Message):
    __slots__ = ("type",)
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[OperatorOperationType.Type]
        TYPE_PATCH: _ClassVar[OperatorOperationType.Type]
        TYPE_UPDATE: _ClassVar[OperatorOperationType.Type]
        TYPE_CREATE: _ClassVar[OperatorOperationType.Type]
        TYPE_DELETE: _ClassVar[OperatorOperationType.Type]
        TYPE_DEREGISTER: _ClassVar[OperatorOperationType.Type]
        TYPE_EVALUATE: _ClassVar[OperatorOperationType.Type]
    TYPE_UNSPECIFIED: OperatorOperationType.Type
    TYPE_PATCH: OperatorOperationType.Type
    TYPE_UPDATE: OperatorOperationType.Type
    TYPE_CREATE: OperatorOperationType.Type
    TYPE_DELETE: OperatorOperationType.Type
    TYPE_DEREGISTER: OperatorOperationType.Type
    TYPE_EVALUATE: OperatorOperationType.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: OperatorOperationType.Type
    def __init__(self, type: _Optional[_Union[OperatorOperationType.Type, str]] = ...) -> None: ...

class OperatorLifecycleRequest(_message.Message):
    __slots__ = ("operation_type", "cluster_definition", "object_definition")
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    operation_type: OperatorOperationType
    cluster_definition: bytes
    object_definition: bytes
    def __init__(self, operation_type: _Optional[_Union[OperatorOperationType, _Mapping]] = ..., cluster_definition: _Optional[bytes] = ..., object_definition: _Optional[bytes] = ...) -> None: ...

class OperatorLifecycleResponse(_message.Message):
    __slots__ = ("json_patch",)
    JSON_PATCH_FIELD_NUMBER: _ClassVar[int]
    json_patch: bytes
    def __init__(self, json_patch: _Optional[bytes] = ...) -> None: ...
