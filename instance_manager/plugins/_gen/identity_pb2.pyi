from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPluginMetadataRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPluginMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "display_name", "description", "project_url", "repository_url", "license", "license_url", "maturity", "vendor", "manifest")
    class ManifestEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_URL_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_URL_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    LICENSE_URL_FIELD_NUMBER: _ClassVar[int]
    MATURITY_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    display_name: str
    description: str
    project_url: str
    repository_url: str
    license: str
    license_url: str
    maturity: str
    vendor: str
    manifest: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., project_url: _Optional[str] = ..., repository_url: _Optional[str] = ..., license: _Optional[str] = ..., license_url: _Optional[str] = ..., maturity: _Optional[str] = ..., vendor: _Optional[str] = ..., manifest: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetPluginCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPluginCapabilitiesResponse(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[PluginCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[PluginCapability, _Mapping]]] = ...) -> None: ...

class PluginCapability(_message.Message):
    __slots__ = ("service",)
    class Service(_message.Message):
        __slots__ = ("type",)
        class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            TYPE_UNSPECIFIED: _ClassVar[PluginCapability.Service.Type]
            TYPE_OPERATOR_SERVICE: _ClassVar[PluginCapability.Service.Type]
            TYPE_WAL_SERVICE: _ClassVar[PluginCapability.Service.Type]
            TYPE_BACKUP_SERVICE: _ClassVar[PluginCapability.Service.Type]
            TYPE_LIFECYCLE_SERVICE: _ClassVar[PluginCapability.Service.Type]
            TYPE_RECONCILER_HOOKS: _ClassVar[PluginCapability.Service.Type]
            TYPE_RESTORE_JOB: _ClassVar[PluginCapability.Service.Type]
            TYPE_POSTGRES: _ClassVar[PluginCapability.Service.Type]
            TYPE_INSTANCE_SIDECAR_INJECTION: _ClassVar[PluginCapability.Service.Type]
            TYPE_INSTANCE_JOB_SIDECAR_INJECTION: _ClassVar[PluginCapability.Service.Type]
            TYPE_METRICS: _ClassVar[PluginCapability.Service.Type]
        TYPE_UNSPECIFIED: PluginCapability.Service.Type
        TYPE_OPERATOR_SERVICE: PluginCapability.Service.Type
        TYPE_WAL_SERVICE: PluginCapability.Service.Type
        TYPE_BACKUP_SERVICE: PluginCapability.Service.Type
        TYPE_LIFECYCLE_SERVICE: PluginCapability.Service.Type
        TYPE_RECONCILER_HOOKS: PluginCapability.Service.Type
        TYPE_RESTORE_JOB: PluginCapability.Service.Type
        TYPE_POSTGRES: PluginCapability.Service.Type
        TYPE_INSTANCE_SIDECAR_INJECTION: PluginCapability.Service.Type
        TYPE_INSTANCE_JOB_SIDECAR_INJECTION: PluginCapability.Service.Type
        TYPE_METRICS: PluginCapability.Service.Type
        TYPE_FIELD_NUMBER: _ClassVar[int]
        type: PluginCapability.Service.Type
        def __init__(self, type: _Optional[_Union[PluginCapability.Service.Type, str]] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: PluginCapability.Service
    def __init__(self, service: _Optional[_Union[PluginCapability.Service, _Mapping]] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("ready",)
    READY_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    def __init__(self, ready: _Optional[bool] = ...) -> None: ...
