"""What the archiver and restorer need from the plugins, as an interface."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from instance_manager.cluster_model import Cluster
from instance_manager.errors import WalNotFound
from instance_manager.plugins.selection import check_empty_archive, enabled
from instance_manager.settings import DEFAULT_PLUGIN_TIMEOUT

if TYPE_CHECKING:
    from instance_manager.plugins.registry import Registry
    from instance_manager.plugins.wal import PluginWal


class WalBackend(Protocol):
    async def archive(self, source: Path) -> None:
        """Return only once every archiving plugin has durably stored ``source``."""

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        """Write WAL file ``name`` to ``destination``; raise WalNotFound if no plugin has it."""


CHECK_EMPTY_MARKER = ".check-empty-wal-archive"


class PluginBackend:
    """The plugins, loaded on first use: with no plugin enabled, gRPC is never imported.

    It also plays the part of CNPG's reconciler for the empty-archive check: the marker
    initdb leaves in PGDATA asks plugins to check that the archive is empty, and it is
    removed once a segment has been archived.

    ``timeout`` gives the deadline of one call to one plugin (``instance.pluginTimeout``).
    """

    def __init__(
        self,
        plugin_dir: Path,
        cluster: Callable[[], Cluster],
        pgdata: Path,
        timeout: Callable[[], float] = lambda: DEFAULT_PLUGIN_TIMEOUT,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.cluster = cluster
        self.pgdata = pgdata
        self.timeout = timeout
        self._wal: PluginWal | None = None
        self._json: tuple[int, bytes] = (0, b"")

    def _configured(self, restore: bool = False) -> bool:
        return bool(enabled(self.cluster(), restore))

    def _plugins(self) -> PluginWal:
        if self._wal is None:
            from instance_manager.plugins.registry import Registry
            from instance_manager.plugins.wal import PluginWal

            registry = Registry(self.plugin_dir, self.cluster, self.timeout)
            self._wal = PluginWal(registry, self.cluster_json, self.check_empty_archive)
        return self._wal

    def registry(self) -> Registry | None:
        """The plugin registry shared with metrics and backups (None: no plugin enabled)."""
        return self._plugins().registry if self._configured() else None

    def cluster_json(self) -> bytes:
        cluster = self.cluster()
        if self._json[0] != id(cluster):
            self._json = (id(cluster), json.dumps(cluster.to_json_dict()).encode())
        return self._json[1]

    def check_empty_archive(self) -> bool:
        if not check_empty_archive(self.cluster()):
            return False
        return (self.pgdata / CHECK_EMPTY_MARKER).exists()

    async def archive(self, source: Path) -> None:
        if not self._configured():
            return  # nothing to archive to: CloudNativePG reports success as well
        await self._plugins().archive(source)
        (self.pgdata / CHECK_EMPTY_MARKER).unlink(missing_ok=True)

    async def restore(self, name: str, destination: Path, rewind: bool) -> None:
        if not self._configured(restore=True):
            raise WalNotFound(f"{name}: no plugin is enabled to restore WAL from")
        await self._plugins().restore(name, destination, rewind)

    async def close(self) -> None:
        if self._wal is not None:
            await self._wal.registry.close()
