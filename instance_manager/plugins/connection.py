"""One CNPG-I plugin: long-lived grpc.aio channels to its Unix socket, handshaken once.

Handshake per channel, as CloudNativePG does: GetPluginMetadata (the name must equal the
socket's file name), GetPluginCapabilities, then GetCapabilities of each advertised
service. A service that is not advertised is never called. Every acquire probes the
channel first; a failed probe drops the channel and tries again with a short back-off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from instance_manager.errors import PluginError
from instance_manager.plugins._gen import (
    backup_pb2,
    backup_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
    wal_pb2,
    wal_pb2_grpc,
)

ServiceType = identity_pb2.PluginCapability.Service.Type
# Bound on loading a plugin (handshake) and on each probe. The calls that follow get the
# caller's deadline through Plugin.call (instance.pluginTimeout for WAL).
LOAD_TIMEOUT = 5.0
# The least time left that is still worth sending a call with.
MIN_RPC_TIMEOUT = 0.001
POOL_SIZE = 4
# Acquire retries: 10 ms, then x5 each time, 5 attempts (CNPG's back-off).
RETRY_DELAYS = (0.01, 0.05, 0.25, 1.25)
# A channel that answered this recently is not probed again before the next call: at
# WAL-archiving rates the Probe RPC would otherwise add a third to every call.
PROBE_FRESH = 1.0


class PluginTimeout(PluginError):
    """A plugin did not answer within its deadline: stopped, wedged or overloaded."""

    def __init__(self, plugin: str, what: str, seconds: float) -> None:
        super().__init__(f"plugin {plugin} did not answer {what} within {seconds:g} s")
        self.plugin = plugin


@dataclass(frozen=True)
class Handshake:
    name: str
    version: str
    services: frozenset[int]
    wal: frozenset[int] = frozenset()
    backup: frozenset[int] = frozenset()
    metrics: frozenset[int] = frozenset()


@dataclass
class Channel:
    """A channel and its stubs; ``handshake`` is filled by :meth:`Plugin._open`."""

    channel: grpc.aio.Channel
    identity: Any = None
    wal: Any = None
    backup: Any = None
    metrics: Any = None
    handshake: Handshake | None = None
    broken: bool = field(default=False)
    last_ok: float = 0.0  # monotonic time of the last successful call on this channel


def _rpc_types(capabilities: Any) -> frozenset[int]:
    return frozenset(int(c.rpc.type) for c in capabilities)


async def handshake(ch: Channel, socket_name: str) -> Handshake:
    t = LOAD_TIMEOUT  # each call's gRPC deadline; the caller bounds the whole handshake too
    meta = await ch.identity.GetPluginMetadata(identity_pb2.GetPluginMetadataRequest(), timeout=t)
    if meta.name != socket_name:
        raise PluginError(
            f"plugin socket {socket_name!r} answers as {meta.name!r}: the socket's file name "
            "must equal the plugin's metadata name; plugin not used"
        )
    caps = await ch.identity.GetPluginCapabilities(
        identity_pb2.GetPluginCapabilitiesRequest(), timeout=t
    )
    services = frozenset(int(c.service.type) for c in caps.capabilities if c.HasField("service"))
    wal = backup = metrics = frozenset[int]()
    if ServiceType.TYPE_WAL_SERVICE in services:
        result = await ch.wal.GetCapabilities(wal_pb2.WALCapabilitiesRequest(), timeout=t)
        wal = _rpc_types(result.capabilities)
    if ServiceType.TYPE_BACKUP_SERVICE in services:
        result = await ch.backup.GetCapabilities(backup_pb2.BackupCapabilitiesRequest(), timeout=t)
        backup = _rpc_types(result.capabilities)
    if ServiceType.TYPE_METRICS in services:
        result = await ch.metrics.GetCapabilities(
            metrics_pb2.MetricsCapabilitiesRequest(), timeout=t
        )
        metrics = _rpc_types(result.capabilities)
    return Handshake(meta.name, meta.version, services, wal, backup, metrics)


class Plugin:
    """A small pool of channels to one plugin socket."""

    def __init__(self, name: str, socket_path: Path, pool_size: int = POOL_SIZE) -> None:
        self.name = name
        self.socket_path = socket_path
        self.pool_size = pool_size
        self._channels: list[Channel] = []
        self._next = 0
        self._lock = asyncio.Lock()
        self.handshake: Handshake | None = None

    async def _open(self) -> Channel:
        # A subchannel pool of our own: otherwise a channel opened after the plugin restarted
        # shares the old, failed connection and its ~1 s reconnect back-off.
        channel = grpc.aio.insecure_channel(
            f"unix://{self.socket_path}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        ch = Channel(
            channel,
            identity_pb2_grpc.IdentityStub(channel),
            wal_pb2_grpc.WALStub(channel),
            backup_pb2_grpc.BackupStub(channel),
            metrics_pb2_grpc.MetricsStub(channel),
        )
        try:
            async with asyncio.timeout(LOAD_TIMEOUT):
                ch.handshake = await handshake(ch, self.name)
        except BaseException:
            await channel.close()
            raise
        self.handshake = ch.handshake
        return ch

    async def _pick(self) -> Channel:
        async with self._lock:
            self._channels = [c for c in self._channels if not c.broken]
            if len(self._channels) < self.pool_size:
                self._channels.append(await self._open())
            self._next = (self._next + 1) % len(self._channels)
            return self._channels[self._next]

    async def _acquire_once(self) -> Channel:
        ch = await self._pick()
        if time.monotonic() - ch.last_ok < PROBE_FRESH:
            return ch
        try:
            async with asyncio.timeout(LOAD_TIMEOUT):
                await ch.identity.Probe(
                    identity_pb2.ProbeRequest(), timeout=LOAD_TIMEOUT
                )  # ready=false is ignored
        except (grpc.aio.AioRpcError, TimeoutError):
            ch.broken = True
            await ch.channel.close()
            raise
        return ch

    @asynccontextmanager
    async def channel(self) -> AsyncIterator[Channel]:
        """A probed channel; retried with back-off, PluginError when the plugin is down."""
        last: BaseException | None = None
        for delay in (*RETRY_DELAYS, None):
            try:
                ch = await self._acquire_once()
                break
            except PluginError:
                raise
            except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
                last = exc
                if delay is None:
                    raise PluginError(f"plugin {self.name} not reachable: {describe(exc)}") from exc
                await asyncio.sleep(delay)
        else:  # pragma: no cover - the loop always breaks or raises
            raise PluginError(f"plugin {self.name} not reachable: {last}")
        try:
            yield ch
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                ch.broken = True
            ch.last_ok = 0.0
            raise
        except BaseException:
            ch.last_ok = 0.0  # cancelled or timed out: probe the channel before its next use
            raise
        ch.last_ok = time.monotonic()

    async def call(
        self,
        rpc: Callable[[Channel], Callable[..., Awaitable[Any]]],
        request: Any,
        *,
        timeout: float,
        what: str,
    ) -> Any:
        """``rpc(channel)(request)``, channel acquisition included, within ``timeout`` s.

        The time left travels with the call as its gRPC deadline, so the plugin can see it
        too. When the deadline passes, PluginTimeout names the plugin and ``what``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline), self.channel() as ch:
                left = max(deadline - loop.time(), MIN_RPC_TIMEOUT)
                return await rpc(ch)(request, timeout=left)
        except TimeoutError:
            raise PluginTimeout(self.name, what, timeout) from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PluginTimeout(self.name, what, timeout) from exc
            raise

    async def load(self, timeout: float) -> None:
        """Open a first channel (handshake included) within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout), self.channel():
                pass
        except TimeoutError:
            raise PluginTimeout(self.name, "its handshake", timeout) from None

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for ch in channels:
            await ch.channel.close()


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
