"""Metrics of CNPG-I plugins, through their ``Metrics`` service.

On every scrape, each usable plugin advertising the METRICS service and the TYPE_METRICS
capability gets ``Define`` then ``Collect``. Values are matched to definitions by
``fq_name``; names are exported as the plugin gives them (no prefix), with the value type
it declares (1 counter, 2 gauge, 3 untyped; CloudNativePG casts the number the same
way). A plugin that fails, or answers with an unknown name or a wrong number of label
values, contributes nothing to this scrape; the others are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from instance_manager import log
from instance_manager.metrics.exposition import Family, Kind, valid_label, valid_name

if TYPE_CHECKING:
    from instance_manager.plugins.connection import Plugin
    from instance_manager.plugins.registry import Registry

_logger = log.get("metrics")
PLUGIN_TIMEOUT = 5.0  # Define + Collect of one plugin (CNPG bounds plugin loading by 5 s)
_KINDS: dict[int, Kind] = {1: "counter", 2: "gauge", 3: "untyped"}


class PluginMetricsError(Exception):
    """A plugin's answer cannot be exported."""


@dataclass
class PluginResults:
    families: list[Family] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "plugin: why"


def _definitions(
    result: Any, taken: set[str]
) -> dict[str, tuple[Family, list[str], tuple[tuple[str, str], ...]]]:
    found = {}
    for metric in result.metrics:
        name = metric.fq_name
        if not valid_name(name) or name in taken or name in found:
            raise PluginMetricsError(f"metric name {name!r} is invalid or already used")
        labels = list(metric.variable_labels)
        const = tuple(sorted(metric.const_labels.items()))
        if not all(valid_label(n) for n in [*labels, *(k for k, _ in const)]):
            raise PluginMetricsError(f"{name}: invalid label name")
        kind = _KINDS.get(int(metric.value_type.type), "untyped")
        found[name] = (Family(name, metric.help or name, kind), labels, const)
    return found


def to_families(defined: Any, collected: Any, taken: set[str]) -> list[Family]:
    """Families from a DefineMetricsResult and a CollectMetricsResult."""
    definitions = _definitions(defined, taken)
    for sample in collected.metrics:
        found = definitions.get(sample.fq_name)
        if found is None:
            raise PluginMetricsError(f"collected metric {sample.fq_name!r} was not defined")
        family, names, const = found
        values = list(sample.variable_labels)
        if len(values) != len(names):
            raise PluginMetricsError(
                f"{sample.fq_name}: {len(values)} label values for {len(names)} labels"
            )
        family.add((*const, *zip(names, values, strict=True)), float(sample.value))
    return [family for family, _, _ in definitions.values()]


def _serves_metrics(plugin: Plugin) -> bool:
    from instance_manager.plugins._gen import identity_pb2, metrics_pb2

    handshake = plugin.handshake
    return (
        handshake is not None
        and identity_pb2.PluginCapability.Service.TYPE_METRICS in handshake.services
        and metrics_pb2.MetricsCapability.RPC.TYPE_METRICS in handshake.metrics
    )


async def _one(plugin: Plugin, cluster_json: bytes, taken: set[str]) -> list[Family]:
    """Define then Collect, both within one PLUGIN_TIMEOUT."""
    from instance_manager.plugins._gen import metrics_pb2

    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLUGIN_TIMEOUT
    defined = await plugin.call(
        lambda ch: ch.metrics.Define,
        metrics_pb2.DefineMetricsRequest(cluster_definition=cluster_json),
        timeout=PLUGIN_TIMEOUT,
        what="Metrics.Define",
    )
    collected = await plugin.call(
        lambda ch: ch.metrics.Collect,
        metrics_pb2.CollectMetricsRequest(cluster_definition=cluster_json),
        timeout=max(deadline - loop.time(), 0.0),
        what="Metrics.Collect",
    )
    return to_families(defined, collected, taken)


async def collect(
    registry: Registry, cluster_json: Callable[[], bytes], taken: set[str]
) -> PluginResults:
    """Metrics of every plugin serving them; failures are reported, never raised."""
    from instance_manager.plugins.connection import describe

    out = PluginResults()
    try:
        plugins = [p for p in await registry.usable(timeout=PLUGIN_TIMEOUT) if _serves_metrics(p)]
    except Exception as exc:
        out.failed.append(f"plugins: {describe(exc)}")
        return out
    used = set(taken)
    for plugin in plugins:
        try:
            families = await _one(plugin, cluster_json(), used)
        except Exception as exc:
            reason = f"{plugin.name}: {describe(exc)}"
            log.event(_logger, "error while collecting plugin metrics", logging.ERROR, error=reason)
            out.failed.append(reason)
            continue
        used.update(f.name for f in families)
        out.families.extend(families)
    return out
