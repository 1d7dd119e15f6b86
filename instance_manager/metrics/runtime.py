"""The exporter's own runtime metrics, from prometheus-client in a private registry.

CloudNativePG's registry carries the Go runtime collector (``go_*``) and no process
collector; the Python counterparts are the platform (``python_info``) and garbage
collector (``python_gc_*``) collectors. They hold no counter of ours, so prometheus-client
renders them itself. The registry is built on the first scrape (the import costs ~15 ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class RuntimeMetrics:
    def __init__(self) -> None:
        self._registry: CollectorRegistry | None = None

    def render(self) -> bytes:
        from prometheus_client import exposition

        if self._registry is None:
            from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector

            registry = CollectorRegistry(auto_describe=False)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            self._registry = registry
        return exposition.generate_latest(self._registry)
