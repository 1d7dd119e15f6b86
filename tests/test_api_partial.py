"""``/pg/archive/partial``: the REDO segment archived as .partial through the daemon's WAL path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from instance_manager.postgres import controldata
from instance_manager.state import InstanceState
from instance_manager.web.partial import StateFencing
from tests.api_helpers import (
    Api,
    Certs,
    api_spec,
    certs,
    load_settings,
    operator_status,
    serve_api,
    write_cluster,
)
from tests.daemon import Daemon, Instance
from tests.test_wal import PLUGIN, PluginProcess

__all__ = ["certs"]  # fixture
URL = "/pg/archive/partial"


@pytest.fixture
def archiving(instance: Instance, daemons: Any, certs: Certs) -> Iterator[Daemon]:
    """A primary archiving through the fake plugin (a separate process, like a sidecar)."""
    plugin = PluginProcess(instance.root).start()
    spec = api_spec(plugins=[{"name": PLUGIN, "isWALArchiver": True}])
    write_cluster(instance, spec, operator_status(certs))
    daemon = daemons(instance)
    daemon.wait_ready()
    yield daemon
    daemon.stop()
    plugin.stop()


async def post(api: Api) -> tuple[int, Any]:
    async with api.client() as client, client.post(api.base + URL) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if "json" in resp.content_type else text


async def redo_segment(inst: Instance) -> str:
    values, _ = await controldata.read(load_settings(inst))
    return values["Latest checkpoint's REDO WAL file"]


async def test_partial_segment_reaches_the_plugin(
    instance: Instance, archiving: Daemon, certs: Certs
) -> None:
    async with serve_api(load_settings(instance), certs) as api:
        assert await post(api) == (400, {"error": {"code": "NOT_FENCED", "message": ""}})
        api.fence.fenced = True
        segment = await redo_segment(instance)
        code, body = await post(api)
    assert (code, body) == (200, {"data": segment})
    journal = PluginProcess(instance.root)
    archived = [Path(c["source_file_name"]).name for c in journal.calls("archive")]
    assert f"{segment}.partial" in archived
    stored = (instance.root / "store" / f"{segment}.partial").read_bytes()
    assert stored[:2] == (instance.pgdata / "pg_wal" / segment).read_bytes()[:2]
    assert not (instance.pgdata / "pg_wal" / f"{segment}.partial").exists()  # link removed


async def test_refusals(instance: Instance, archiving: Daemon, certs: Certs) -> None:
    calls: list[Path] = []

    async def failing(path: Path) -> None:
        calls.append(path)
        assert await asyncio.to_thread(path.exists)
        raise RuntimeError("bucket unreachable")

    async with serve_api(load_settings(instance), certs, archive=failing) as api:
        api.fence.fenced = True
        code, body = await post(api)
        assert code == 400
        assert body["error"] == {
            "code": "ERROR_WHILE_EXECUTING_WAL_ARCHIVE",
            "message": "bucket unreachable",
        }
        assert calls and not calls[0].exists()  # the link is removed anyway
        segment = await redo_segment(instance)
        blocker = instance.pgdata / "pg_wal" / f"{segment}.partial"
        blocker.write_text("in the way")
        try:
            code, body = await post(api)
            assert (code, body["error"]["code"]) == (400, "ERROR_WHILE_CREATING_SYMLINK")
        finally:
            blocker.unlink()

    write_cluster(instance, instance.spec, operator_status(certs, targetPrimary="test-2"))
    async with serve_api(load_settings(instance), certs) as api:
        api.fence.fenced = True
        assert (await post(api))[1]["error"]["code"] == "NOT_EXPECTED_PRIMARY"

    write_cluster(instance, instance.spec, operator_status(certs))
    broken = load_settings(instance, pgData=str(instance.root / "nowhere"))
    async with serve_api(broken, certs) as api:
        api.fence.fenced = True
        code, text = await post(api)
        assert code == 500 and "pg_controldata" in text


async def test_needs_the_operator(instance: Instance, certs: Certs) -> None:
    write_cluster(instance, api_spec(), operator_status(certs))
    async with serve_api(load_settings(instance), certs) as api:
        api.fence.fenced = True
        async with api.client(None) as client, client.post(api.base + URL) as resp:
            assert resp.status == 401
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=certs.client("intruder"))
            ) as c,
            c.post(api.base + URL) as resp,
        ):
            assert resp.status == 503


def test_default_fencing_follows_the_instance_state() -> None:
    state = InstanceState()
    fencing = StateFencing(state)
    assert not fencing.is_fenced()  # no fencing command yet: never fenced
    setattr(state, "fenced", True)  # what the fencing command will set  # noqa: B010
    assert fencing.is_fenced()
