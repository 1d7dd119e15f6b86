"""Which plugins to use: sockets found in the plugin directory ∩ plugins enabled.

The socket's file name is the plugin's name. Plugins are used in sorted name order.
An enabled plugin marked ``isWALArchiver`` whose socket is missing is an error (the
WAL would otherwise silently go nowhere), never a skip.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from instance_manager import log
from instance_manager.cluster_model import Cluster
from instance_manager.errors import PluginError
from instance_manager.plugins.connection import Plugin
from instance_manager.plugins.selection import enabled, wal_archiver
from instance_manager.settings import DEFAULT_PLUGIN_TIMEOUT

_logger = log.get("plugins")


def sockets(directory: Path) -> set[str]:
    """Names of the Unix sockets in ``directory`` (absent directory: none)."""
    found: set[str] = set()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        try:
            if stat.S_ISSOCK(entry.stat().st_mode):
                found.add(entry.name)
        except OSError:
            continue
    return found


class Registry:
    """Keeps one :class:`Plugin` (channel pool) per socket, for the daemon's lifetime.

    ``timeout`` gives the deadline of one call to one plugin (``instance.pluginTimeout``).
    """

    def __init__(
        self,
        directory: Path,
        cluster: Callable[[], Cluster],
        timeout: Callable[[], float] = lambda: DEFAULT_PLUGIN_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.cluster = cluster
        self.timeout = timeout
        self._plugins: dict[str, Plugin] = {}

    def available(self, restore: bool = False) -> list[Plugin]:
        """Enabled plugins with a socket, sorted; raises if the WAL archiver is missing."""
        cluster = self.cluster()
        found = sockets(self.directory)
        archiver = wal_archiver(cluster)
        if archiver is not None and archiver not in found:
            raise PluginError(f"wal archive plugin is not available: {archiver}")
        chosen = []
        for name in enabled(cluster, restore):
            if name not in found:
                continue
            if name not in self._plugins:
                self._plugins[name] = Plugin(name, self.directory / name)
            chosen.append(self._plugins[name])
        return chosen

    async def usable(self, restore: bool = False, timeout: float | None = None) -> list[Plugin]:
        """Available plugins whose handshake succeeded (a failing one is logged and skipped,
        unless it is the WAL archiver, which is an error). Each handshake has ``timeout``
        seconds (default: the registry's)."""
        archiver = wal_archiver(self.cluster())
        usable = []
        for plugin in self.available(restore):
            if plugin.handshake is None:
                try:
                    await plugin.load(self.timeout() if timeout is None else timeout)
                except PluginError as exc:
                    if plugin.name == archiver:
                        raise
                    log.event(
                        _logger,
                        "plugin not used",
                        logging.ERROR,
                        plugin=plugin.name,
                        error=str(exc),
                    )
                    continue
            usable.append(plugin)
        return usable

    async def close(self) -> None:
        for plugin in self._plugins.values():
            await plugin.close()
