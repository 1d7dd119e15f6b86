"""The liveness decision table, primary isolation check included, against fake peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from instance_manager import settings
from instance_manager.settings import Settings
from instance_manager.web.liveness import Liveness
from tests.daemon import PG_BIN, free_port

ApiCheck = Callable[[], Awaitable[bool]] | None


async def api_up() -> bool:
    return True


async def api_down() -> bool:
    return False


@dataclass
class FakePeer:
    """An aiohttp server on 127.0.0.1 answering /failsafe (optionally never answering)."""

    port: int = field(default_factory=free_port)
    hits: list[str] = field(default_factory=list)
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def failsafe(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if self.hang:
            await self.release.wait()
        return web.Response(text="OK")


@pytest.fixture
async def peer() -> AsyncIterator[FakePeer]:
    fake = FakePeer()
    app = web.Application()
    app.router.add_get("/failsafe", fake.failsafe)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", fake.port).start()
    yield fake
    fake.release.set()
    await runner.cleanup()


def make_settings(
    root: Path,
    peers: dict[str, str],
    status_port: int,
    *,
    instances: int = 3,
    isolation: dict[str, Any] | None = None,
) -> Settings:
    """A primary of a cluster whose status lists ``peers`` (pod -> ip)."""
    pgdata = root / "pgdata"
    pgdata.mkdir(exist_ok=True)
    document = {
        "spec": {
            "instances": instances,
            "probes": {"liveness": {"isolationCheck": isolation or {}}},
        },
        "status": {"instancesReportedState": {pod: {"ip": ip} for pod, ip in peers.items()}},
    }
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(document))
    flags = {
        "pgData": str(pgdata),
        "scratchDir": str(root / "c"),
        "statusPort": status_port,
        "pgBin": str(PG_BIN),
    }
    return settings.load(path, {}, flags)


async def check(s: Settings, api: ApiCheck = api_down) -> tuple[int, str]:
    return await Liveness(lambda: s, api).check()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on: a peer there refuses the connection."""
    return free_port()


# Every case here has an unreachable peer, so pinging it would answer 500.
@pytest.mark.parametrize(
    ("marker", "api", "instances", "isolation"),
    [
        ("standby.signal", api_down, 3, {}),
        ("recovery.conf", api_down, 3, {}),
        (None, None, 3, {}),
        (None, api_up, 3, {}),
        (None, api_down, 3, {"enabled": False}),
        (None, api_down, 1, {}),
    ],
    ids=[
        "standby",
        "standby-recovery-conf",
        "no-api-configured",
        "api-reachable",
        "isolation-check-disabled",
        "single-instance",
    ],
)
async def test_alive_without_pinging_peers(
    tmp_root: Path,
    closed_port: int,
    marker: str | None,
    api: ApiCheck,
    instances: int,
    isolation: dict[str, Any],
) -> None:
    s = make_settings(
        tmp_root, {"pod-2": "127.0.0.1"}, closed_port, instances=instances, isolation=isolation
    )
    if marker:
        (s.pgdata / marker).write_text("")
    assert await check(s, api) == (200, "OK")


async def test_isolated_primary_is_not_alive(tmp_root: Path, closed_port: int) -> None:
    s = make_settings(tmp_root, {"pod-2": "127.0.0.1"}, closed_port)
    status, message = await check(s)
    assert status == 500
    assert message.startswith("liveness check failed: instance connectivity error")
    assert "instance [pod-2] with ip [127.0.0.1]" in message
    assert "(requestTimeout:1000 connectionTimeout:1000)" in message


async def test_api_down_but_peers_answer(tmp_root: Path, peer: FakePeer) -> None:
    s = make_settings(tmp_root, {"pod-2": "127.0.0.1", "pod-3": "127.0.0.1"}, peer.port)
    assert await check(s) == (200, "OK")
    assert peer.hits == ["/failsafe", "/failsafe"]


async def test_api_reachable_does_not_ping(tmp_root: Path, peer: FakePeer) -> None:
    s = make_settings(tmp_root, {"pod-2": "127.0.0.1"}, peer.port)
    assert await check(s, api_up) == (200, "OK")
    assert peer.hits == []


async def test_one_peer_unreachable(tmp_root: Path, peer: FakePeer) -> None:
    # Same port for every peer; the fake listens on 127.0.0.1 only, so 127.0.0.2 refuses.
    s = make_settings(tmp_root, {"pod-a": "127.0.0.1", "pod-b": "127.0.0.2"}, peer.port)
    status, message = await check(s)
    assert status == 500
    assert "instance [pod-b] with ip [127.0.0.2]" in message
    assert "pod-a" not in message
    assert peer.hits == ["/failsafe"]


async def test_peers_without_ip_are_skipped(tmp_root: Path, closed_port: int) -> None:
    s = make_settings(tmp_root, {"pod-2": ""}, closed_port)
    assert await check(s) == (200, "OK")


async def test_hanging_peer_times_out(tmp_root: Path, peer: FakePeer) -> None:
    peer.hang = True
    isolation = {"requestTimeout": 300, "connectionTimeout": 200}
    s = make_settings(tmp_root, {"pod-2": "127.0.0.1"}, peer.port, isolation=isolation)
    started = time.monotonic()
    status, message = await check(s)
    elapsed = time.monotonic() - started
    assert status == 500
    assert "(requestTimeout:300 connectionTimeout:200)" in message
    assert "instance [pod-2] with ip [127.0.0.1]" in message
    assert 0.25 < elapsed < 2.0
    assert peer.hits == ["/failsafe"]
