"""A fake CNPG-I plugin serving Identity and Metrics on a Unix socket, for the metrics tests.

    async with MetricsPlugin(socket_dir, name="metrics.example.io") as plugin:
        plugin.definitions = [metric("x_total", "counter", labels=["a"])]
        plugin.values = [("x_total", 3.0, ["b"])]

Every attribute can be changed while it serves; ``fail`` makes Collect fail with
INTERNAL, ``calls`` counts the RPCs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from instance_manager.plugins._gen import (
    identity_pb2,
    identity_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
)

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

TYPES = {"counter": 1, "gauge": 2, "untyped": 3}


def metric(
    fq_name: str,
    kind: str = "gauge",
    labels: list[str] | None = None,
    const: dict[str, str] | None = None,
    help_text: str = "a fake plugin metric",
) -> metrics_pb2.Metric:
    return metrics_pb2.Metric(
        fq_name=fq_name,
        help=help_text,
        variable_labels=labels or [],
        const_labels=const or {},
        value_type=metrics_pb2.MetricType(type=TYPES[kind]),  # type: ignore[arg-type]
    )


class _Identity(identity_pb2_grpc.IdentityServicer):
    def __init__(self, plugin: MetricsPlugin) -> None:
        self.plugin = plugin

    async def GetPluginMetadata(
        self, request: identity_pb2.GetPluginMetadataRequest, context: Context
    ) -> identity_pb2.GetPluginMetadataResponse:
        return identity_pb2.GetPluginMetadataResponse(name=self.plugin.name, version="0.0.0")

    async def GetPluginCapabilities(
        self, request: identity_pb2.GetPluginCapabilitiesRequest, context: Context
    ) -> identity_pb2.GetPluginCapabilitiesResponse:
        service = identity_pb2.PluginCapability.Service
        return identity_pb2.GetPluginCapabilitiesResponse(
            capabilities=[identity_pb2.PluginCapability(service=service(type=service.TYPE_METRICS))]
        )

    async def Probe(
        self, request: identity_pb2.ProbeRequest, context: Context
    ) -> identity_pb2.ProbeResponse:
        return identity_pb2.ProbeResponse(ready=True)


class _Metrics(metrics_pb2_grpc.MetricsServicer):
    def __init__(self, plugin: MetricsPlugin) -> None:
        self.plugin = plugin

    async def GetCapabilities(
        self, request: metrics_pb2.MetricsCapabilitiesRequest, context: Context
    ) -> metrics_pb2.MetricsCapabilitiesResult:
        rpc = metrics_pb2.MetricsCapability.RPC
        return metrics_pb2.MetricsCapabilitiesResult(
            capabilities=[metrics_pb2.MetricsCapability(rpc=rpc(type=rpc.TYPE_METRICS))]
        )

    async def Define(
        self, request: metrics_pb2.DefineMetricsRequest, context: Context
    ) -> metrics_pb2.DefineMetricsResult:
        self.plugin.calls["Define"] += 1
        self.plugin.clusters.append(request.cluster_definition)
        return metrics_pb2.DefineMetricsResult(metrics=self.plugin.definitions)

    async def Collect(
        self, request: metrics_pb2.CollectMetricsRequest, context: Context
    ) -> metrics_pb2.CollectMetricsResult:
        self.plugin.calls["Collect"] += 1
        if self.plugin.fail:
            await context.abort(grpc.StatusCode.INTERNAL, self.plugin.fail)
        return metrics_pb2.CollectMetricsResult(
            metrics=[
                metrics_pb2.CollectMetric(fq_name=name, value=value, variable_labels=labels)
                for name, value, labels in self.plugin.values
            ]
        )


class MetricsPlugin:
    def __init__(self, socket_dir: Path, name: str = "metrics.example.io") -> None:
        self.socket_dir = socket_dir
        self.name = name
        self.definitions: list[metrics_pb2.Metric] = []
        self.values: list[tuple[str, float, list[str]]] = []
        self.fail: str | None = None
        self.calls: Counter[str] = Counter()
        self.clusters: list[bytes] = []
        self._server: grpc.aio.Server | None = None

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / self.name

    async def __aenter__(self) -> MetricsPlugin:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = grpc.aio.server()
        identity_pb2_grpc.add_IdentityServicer_to_server(_Identity(self), server)
        metrics_pb2_grpc.add_MetricsServicer_to_server(_Metrics(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        self._server = server
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop(None)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
