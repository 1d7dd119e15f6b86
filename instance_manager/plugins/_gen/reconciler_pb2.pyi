from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconcilerHooksCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReconcilerHooksCapabilitiesResult(_message.Message):
    __slots__ = ("reconciler_capabilities",)
    RECONCILER_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    reconciler_capabilities: _containers.RepeatedCompositeFieldContainer[ReconcilerHooksCapability]
    def __init__(self, reconciler_capabilities: _Optional[_Iterable[_Union[ReconcilerHooksCapability, _Mapping]]] = ...) -> None: ...

class ReconcilerHooksCapability(_message.Message):
    __slots__ = ("kind",)
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ReconcilerHooksCapability.Kind]
        KIND_CLUSTER: _ClassVar[ReconcilerHooksCapability.Kind]
        KIND_BACKUP: _ClassVar[ReconcilerHooksCapability.Kind]
    KIND_UNSPECIFIED: ReconcilerHooksCapability.Kind
    KIND_CLUSTER: ReconcilerHooksCapability.Kind
    KIND_BACKUP: ReconcilerHooksCapability.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: ReconcilerHooksCapability.Kind
    def __init__(self, kind: _Optional[_Union[ReconcilerHooksCapability.Kind, str]] = ...) -> None: ...

class ReconcilerHooksRequest(_message.Message):
    __slots__ = ("cluster_definition", "resource_definition")
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    resource_definition: bytes
    def __init__(self, cluster_definition: _Optional[bytes] = ..., resource_definition: _Optional[bytes] = ...) -> None: ...

class ReconcilerHooksResult(_message.Message):
    __slots__ = ("behavior", "requeue_after")
    class Behavior(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BEHAVIOR_UNSPECIFIED: _ClassVar[ReconcilerHooksResult.Behavior]
        BEHAVIOR_CONTINUE: _ClassVar[ReconcilerHooksResult.Behavior]
        BEHAVIOR_REQUEUE: _ClassVar[ReconcilerHooksResult.Behavior]
        BEHAVIOR_TERMINATE: _ClassVar[ReconcilerHooksResult.Behavior]
    BEHAVIOR_UNSPECIFIED: ReconcilerHooksResult.Behavior
    BEHAVIOR_CONTINUE: ReconcilerHooksResult.Behavior
    BEHAVIOR_REQUEUE: ReconcilerHooksResult.Behavior
    BEHAVIOR_TERMINATE: ReconcilerHooksResult.Behavior
    BEHAVIOR_FIELD_NUMBER: _ClassVar[int]
    REQUEUE_AFTER_FIELD_NUMBER: _ClassVar[int]
    behavior: ReconcilerHooksResult.Behavior
    requeue_after: int
    def __init__(self, behavior: _Optional[_Union[ReconcilerHooksResult.Behavior, str]] = ..., requeue_after: _Optional[int] = ...) -> None: ...
