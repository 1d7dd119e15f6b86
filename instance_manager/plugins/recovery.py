"""A CNPG-I ``RestoreJobHooks`` client: ask a plugin to restore a backup into PGDATA.

CloudNativePG's full-recovery job calls ``RestoreJobHooks.Restore`` on the plugin serving the
recovery source; the plugin fills PGDATA and answers the settings that stop recovery at the
target (``restore_config``). What happens next (those settings, a PostgreSQL that replays
WAL and promotes) is postgres/recovery.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import grpc

from instance_manager import log
from instance_manager.errors import PluginError
from instance_manager.plugins._gen import identity_pb2, restore_job_pb2, restore_job_pb2_grpc
from instance_manager.plugins.connection import LOAD_TIMEOUT, Plugin, describe
from instance_manager.plugins.selection import check_empty_archive
from instance_manager.settings import Settings

_logger = log.get("recovery")
# How long to wait for the plugin's socket: in a pod the sidecar starts first; standalone
# they may start together.
SOCKET_WAIT = 60.0
POLL_INTERVAL = 0.1
# Restoring a base backup of a large database from object storage can take many hours.
RESTORE_RPC_TIMEOUT = 24 * 3600.0
KIND_RESTORE = restore_job_pb2.RestoreJobHooksCapability.KIND_RESTORE


async def wait_for_socket(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _exists(path):
        if time.monotonic() > deadline:
            raise PluginError(f"recovery plugin socket {path} did not appear in {timeout:g} s")
        await asyncio.sleep(POLL_INTERVAL)


async def call_restore(settings: Settings, name: str) -> str:
    """``RestoreJobHooks.Restore`` on plugin ``name``, within RESTORE_RPC_TIMEOUT: the
    plugin's ``restore_config``. PluginError when the plugin cannot or does not restore."""
    socket = settings.instance.pluginSocketDir / name
    await wait_for_socket(socket, SOCKET_WAIT)
    plugin = Plugin(name, socket, pool_size=1)
    request = restore_job_pb2.RestoreRequest(
        cluster_definition=json.dumps(settings.cluster.to_json_dict()).encode(),
        check_empty_wal_archive=check_empty_archive(settings.cluster),
    )
    try:
        async with plugin.channel() as ch:
            services = ch.handshake.services if ch.handshake else frozenset()
            if identity_pb2.PluginCapability.Service.TYPE_RESTORE_JOB not in services:
                raise PluginError(f"plugin {name} does not offer the restore job service")
            stub: Any = restore_job_pb2_grpc.RestoreJobHooksStub(ch.channel)
            async with asyncio.timeout(LOAD_TIMEOUT):
                caps = await stub.GetCapabilities(
                    restore_job_pb2.RestoreJobHooksCapabilitiesRequest(), timeout=LOAD_TIMEOUT
                )
            if KIND_RESTORE not in {c.kind for c in caps.capabilities}:
                raise PluginError(f"plugin {name} cannot restore a backup (no KIND_RESTORE)")
            log.event(_logger, "restoring a backup through the plugin", plugin=name)
            response = await stub.Restore(request, timeout=RESTORE_RPC_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise PluginError(f"plugin {name} could not restore a backup: {describe(exc)}") from exc
    finally:
        await plugin.close()
    if response.envs:
        log.event(
            _logger,
            "the plugin's environment for recovery is not applied",
            logging.WARNING,
            envs=[env.split("=", 1)[0] for env in response.envs],
        )
    return str(response.restore_config)


def _exists(path: Path) -> bool:
    return path.exists()
