from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectMetricsRequest(_message.Message):
    __slots__ = ("cluster_definition",)
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    def __init__(self, cluster_definition: _Optional[bytes] = ...) -> None: ...

class CollectMetric(_message.Message):
    __slots__ = ("value", "fq_name", "variable_labels")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FQ_NAME_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_LABELS_FIELD_NUMBER: _ClassVar[int]
    value: float
    fq_name: str
    variable_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, value: _Optional[float] = ..., fq_name: _Optional[str] = ..., variable_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectMetricsResult(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[CollectMetric]
    def __init__(self, metrics: _Optional[_Iterable[_Union[CollectMetric, _Mapping]]] = ...) -> None: ...

class DefineMetricsRequest(_message.Message):
    __slots__ = ("cluster_definition",)
    CLUSTER_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    cluster_definition: bytes
    def __init__(self, cluster_definition: _Optional[bytes] = ...) -> None: ...

class DefineMetricsResult(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class MetricType(_message.Message):
    __slots__ = ("type",)
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[MetricType.Type]
        TYPE_COUNTER: _ClassVar[MetricType.Type]
        TYPE_GAUGE: _ClassVar[MetricType.Type]
        TYPE_UNTYPED: _ClassVar[MetricType.Type]
    TYPE_UNSPECIFIED: MetricType.Type
    TYPE_COUNTER: MetricType.Type
    TYPE_GAUGE: MetricType.Type
    TYPE_UNTYPED: MetricType.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: MetricType.Type
    def __init__(self, type: _Optional[_Union[MetricType.Type, str]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("fq_name", "help", "variable_labels", "const_labels", "value_type")
    class ConstLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FQ_NAME_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_LABELS_FIELD_NUMBER: _ClassVar[int]
    CONST_LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    fq_name: str
    help: str
    variable_labels: _containers.RepeatedScalarFieldContainer[str]
    const_labels: _containers.ScalarMap[str, str]
    value_type: MetricType
    def __init__(self, fq_name: _Optional[str] = ..., help: _Optional[str] = ..., variable_labels: _Optional[_Iterable[str]] = ..., const_labels: _Optional[_Mapping[str, str]] = ..., value_type: _Optional[_Union[MetricType, _Mapping]] = ...) -> None: ...

class MetricsCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricsCapabilitiesResult(_message.Message):
    __slots__ = ("capabilities",)
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    capabilities: _containers.RepeatedCompositeFieldContainer[MetricsCapability]
    def __init__(self, capabilities: _Optional[_Iterable[_Union[MetricsCapability, _Mapping]]] = ...) -> None: ...

class MetricsCapability(_message.Message):
    __slots__ = ("rpc",)
    class RPC(_message.Message):
        __slots__ = ("type",)
        class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
            __slots__ = ()
            TYPE_UNSPECIFIED: _ClassVar[MetricsCapability.RPC.Type]
            TYPE_METRICS: _ClassVar[MetricsCapability.RPC.Type]
        TYPE_UNSPECIFIED: MetricsCapability.RPC.Type
        TYPE_METRICS: MetricsCapability.RPC.Type
        TYPE_FIELD_NUMBER: _ClassVar[int]
        type: MetricsCapability.RPC.Type
        def __init__(self, type: _Optional[_Union[MetricsCapability.RPC.Type, str]] = ...) -> None: ...
    RPC_FIELD_NUMBER: _ClassVar[int]
    rpc: MetricsCapability.RPC
    def __init__(self, rpc: _Optional[_Union[MetricsCapability.RPC, _Mapping]] = ...) -> None: ...
