"""Self-test of tests/fake_plugin.py through a real grpc.aio client and the generated stubs."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from instance_manager.plugins._gen import identity_pb2, identity_pb2_grpc, wal_pb2, wal_pb2_grpc
from tests.fake_plugin import (
    HEALTH_CHECK_METHOD,
    HEALTH_NOT_SERVING,
    HEALTH_SERVING,
    FakePlugin,
    HealthCheckRequest,
    HealthCheckResponse,
    health_status_of,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME = "fake.example.io"
SEGMENT = "000000010000000000000003"
CLUSTER = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "pg"}}
Service = identity_pb2.PluginCapability.Service
RPC = wal_pb2.WALCapability.RPC


@pytest.fixture
def root() -> Iterator[Path]:
    # Short path: a Unix socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="fp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plugin(root: Path) -> AsyncIterator[FakePlugin]:
    async with FakePlugin(root / "plugins", root / "storage", name=NAME) as fake:
        yield fake


def channel_for(plugin: FakePlugin) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"unix://{plugin.socket_path}")


def wal_segment(root: Path, content: bytes = b"") -> Path:
    pg_wal = root / "pgdata" / "pg_wal"
    pg_wal.mkdir(parents=True, exist_ok=True)
    path = pg_wal / SEGMENT
    path.write_bytes(content or os.urandom(64 * 1024))
    return path


def archive_request(source: Path, check_empty: bool | None = False) -> wal_pb2.WALArchiveRequest:
    request = wal_pb2.WALArchiveRequest(
        cluster_definition=json.dumps(CLUSTER).encode(), source_file_name=str(source)
    )
    if check_empty is not None:
        request.check_empty_wal_archive = check_empty
    return request


def restore_request(name: str, destination: Path) -> wal_pb2.WALRestoreRequest:
    return wal_pb2.WALRestoreRequest(
        cluster_definition=json.dumps(CLUSTER).encode(),
        source_wal_name=name,
        destination_file_name=str(destination),
        mode=wal_pb2.WALRestoreRequest.MODE_RECOVERY,
    )


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    check = channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    return health_status_of(await check(HealthCheckRequest(service=service)))


# --- handshake ----------------------------------------------------------------------------


async def test_handshake(plugin: FakePlugin) -> None:
    assert stat.S_ISSOCK(plugin.socket_path.stat().st_mode)
    assert stat.S_IMODE(plugin.socket_path.stat().st_mode) == 0o777
    async with channel_for(plugin) as channel:
        identity = identity_pb2_grpc.IdentityStub(channel)
        meta = await identity.GetPluginMetadata(identity_pb2.GetPluginMetadataRequest())
        assert meta.name == NAME == plugin.socket_path.name
        assert meta.version
        caps = await identity.GetPluginCapabilities(identity_pb2.GetPluginCapabilitiesRequest())
        assert [c.service.type for c in caps.capabilities] == [Service.TYPE_WAL_SERVICE]
        assert (await identity.Probe(identity_pb2.ProbeRequest())).ready
        wal_caps = await wal_pb2_grpc.WALStub(channel).GetCapabilities(
            wal_pb2.WALCapabilitiesRequest()
        )
        assert [c.rpc.type for c in wal_caps.capabilities] == [
            RPC.TYPE_ARCHIVE_WAL,
            RPC.TYPE_RESTORE_WAL,
        ]
        assert await health_status(channel) == HEALTH_SERVING
        assert await health_status(channel, "cnpgi.wal.v1.WAL") == HEALTH_SERVING
        plugin.serving = False
        assert await health_status(channel) == HEALTH_NOT_SERVING
    assert plugin.calls["GetPluginMetadata"] == 1
    assert plugin.calls["Probe"] == 1


async def test_knobs_for_metadata_and_capabilities(root: Path) -> None:
    fake = FakePlugin(
        root / "plugins",
        root / "storage",
        name="socket.example.io",
        metadata_name="other.example.io",
        services=[Service.TYPE_WAL_SERVICE, Service.TYPE_BACKUP_SERVICE],
        wal_rpcs=[RPC.TYPE_RESTORE_WAL],
    )
    async with fake, channel_for(fake) as channel:
        identity = identity_pb2_grpc.IdentityStub(channel)
        meta = await identity.GetPluginMetadata(identity_pb2.GetPluginMetadataRequest())
        assert meta.name == "other.example.io"
        assert fake.socket_path.name == "socket.example.io"
        caps = await identity.GetPluginCapabilities(identity_pb2.GetPluginCapabilitiesRequest())
        assert [c.service.type for c in caps.capabilities] == [
            Service.TYPE_WAL_SERVICE,
            Service.TYPE_BACKUP_SERVICE,
        ]
        wal = wal_pb2_grpc.WALStub(channel)
        wal_caps = await wal.GetCapabilities(wal_pb2.WALCapabilitiesRequest())
        assert [c.rpc.type for c in wal_caps.capabilities] == [RPC.TYPE_RESTORE_WAL]


async def test_stale_socket_is_replaced(root: Path) -> None:
    (root / "plugins").mkdir()
    (root / "plugins" / NAME).write_text("left over")
    async with FakePlugin(root / "plugins", root / "storage", name=NAME) as fake:
        assert stat.S_ISSOCK(fake.socket_path.stat().st_mode)


# --- archive and restore ------------------------------------------------------------------


async def test_archive_then_restore(plugin: FakePlugin, root: Path) -> None:
    source = wal_segment(root)
    destination = source.parent / "RECOVERYXLOG"
    async with channel_for(plugin) as channel:
        wal = wal_pb2_grpc.WALStub(channel)
        await wal.Archive(archive_request(source, check_empty=False))
        stored = plugin.storage_dir / SEGMENT
        assert stored.read_bytes() == source.read_bytes()
        assert stat.S_IMODE(stored.stat().st_mode) == 0o644
        assert sorted(p.name for p in plugin.storage_dir.iterdir()) == [SEGMENT]
        await wal.Restore(restore_request(SEGMENT, destination))
    assert destination.read_bytes() == source.read_bytes()
    [archived] = plugin.archive_requests
    assert archived.source_file_name == str(source)
    assert archived.check_empty_wal_archive is False
    assert archived.cluster == CLUSTER
    assert archived.parameters == {}
    [restored] = plugin.restore_requests
    assert restored.source_wal_name == SEGMENT
    assert restored.destination_file_name == str(destination)
    assert restored.mode == wal_pb2.WALRestoreRequest.MODE_RECOVERY
    assert restored.cluster == CLUSTER


async def test_archive_records_unset_check_and_parameters(plugin: FakePlugin, root: Path) -> None:
    request = archive_request(wal_segment(root), check_empty=None)
    request.parameters["k"] = "v"
    async with channel_for(plugin) as channel:
        await wal_pb2_grpc.WALStub(channel).Archive(request)
        await wal_pb2_grpc.WALStub(channel).Archive(archive_request(wal_segment(root), True))
    first, second = plugin.archive_requests
    assert first.check_empty_wal_archive is None
    assert first.parameters == {"k": "v"}
    assert second.check_empty_wal_archive is True


async def test_restore_missing_is_not_found(plugin: FakePlugin, root: Path) -> None:
    destination = root / "RECOVERYXLOG"
    async with channel_for(plugin) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wal_pb2_grpc.WALStub(channel).Restore(restore_request(SEGMENT, destination))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert not destination.exists()
    assert len(plugin.restore_requests) == 1


async def test_archive_missing_source_fails(plugin: FakePlugin, root: Path) -> None:
    async with channel_for(plugin) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wal_pb2_grpc.WALStub(channel).Archive(archive_request(root / "nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- switches -----------------------------------------------------------------------------


async def test_failure_switches(plugin: FakePlugin, root: Path) -> None:
    source = wal_segment(root)
    async with channel_for(plugin) as channel:
        wal = wal_pb2_grpc.WALStub(channel)
        plugin.fail_archive = "bucket unreachable"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wal.Archive(archive_request(source))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "bucket unreachable"
        assert not (plugin.storage_dir / SEGMENT).exists()
        plugin.fail_archive = None
        await wal.Archive(archive_request(source))
        plugin.fail_restore = "restore broken"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wal.Restore(restore_request(SEGMENT, root / "out"))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "restore broken"
        plugin.fail_restore = None
        await wal.Restore(restore_request(SEGMENT, root / "out"))
    assert len(plugin.archive_requests) == 2
    assert len(plugin.restore_requests) == 2


async def test_latency(plugin: FakePlugin, root: Path) -> None:
    source = wal_segment(root)
    async with channel_for(plugin) as channel:
        wal = wal_pb2_grpc.WALStub(channel)
        await wal.Archive(archive_request(source))  # connect first
        plugin.latency = 0.3
        started = time.monotonic()
        await wal.Archive(archive_request(source))
        assert time.monotonic() - started >= 0.3


async def test_status_and_set_first_required_unimplemented(plugin: FakePlugin) -> None:
    async with channel_for(plugin) as channel:
        wal = wal_pb2_grpc.WALStub(channel)
        for call, request in (
            (wal.Status, wal_pb2.WALStatusRequest()),
            (wal.SetFirstRequired, wal_pb2.SetFirstRequiredRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert plugin.status_calls == 1
    assert plugin.set_first_required_calls == 1


async def test_down_and_up(plugin: FakePlugin) -> None:
    async with channel_for(plugin) as channel:
        probe = identity_pb2_grpc.IdentityStub(channel).Probe
        assert (await probe(identity_pb2.ProbeRequest())).ready
        await plugin.down()
        assert not plugin.running
        assert not plugin.socket_path.exists()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await probe(identity_pb2.ProbeRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await plugin.up()
        assert plugin.running
        assert stat.S_IMODE(plugin.socket_path.stat().st_mode) == 0o777
        # The same channel reconnects once its backoff (about 1 s) has passed.
        assert (await probe(identity_pb2.ProbeRequest(), timeout=10, wait_for_ready=True)).ready
    # A new channel with its own subchannel pool connects at once. (Channels to the same
    # target otherwise share one subchannel, and its failure backoff, process-wide.)
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"unix://{plugin.socket_path}", options) as channel:
        probe = identity_pb2_grpc.IdentityStub(channel).Probe
        assert (await probe(identity_pb2.ProbeRequest(), timeout=5)).ready


# --- as a separate process ----------------------------------------------------------------


def _wait_for_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the fake plugin did not start in time"
    return process.stdout.readline()


async def _archive_via(socket_path: Path, source: Path) -> str:
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        meta = await identity_pb2_grpc.IdentityStub(channel).GetPluginMetadata(
            identity_pb2.GetPluginMetadataRequest()
        )
        await wal_pb2_grpc.WALStub(channel).Archive(archive_request(source))
        return str(meta.name)


def test_subprocess_mode(root: Path) -> None:
    journal = root / "journal.jsonl"
    command = [
        sys.executable,
        "-m",
        "tests.fake_plugin",
        "--socket-dir",
        str(root / "plugins"),
        "--storage",
        str(root / "storage"),
        "--name",
        NAME,
        "--latency",
        "0.01",
        "--journal",
        str(journal),
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert "listening" in _wait_for_line(process, 30)
        socket_path = root / "plugins" / NAME
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o777
        source = wal_segment(root)
        assert asyncio.run(_archive_via(socket_path, source)) == NAME
        assert (root / "storage" / SEGMENT).read_bytes() == source.read_bytes()
        [record] = [json.loads(line) for line in journal.read_text().splitlines()]
        assert record["kind"] == "archive"
        assert record["source_file_name"] == str(source)
        assert record["check_empty_wal_archive"] is False
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert not socket_path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
