"""The local API: the cached Cluster, plugin backups through CNPG-I, the WAL archiving
condition endpoint's answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from instance_manager.settings import Settings
from tests.api_backup_plugin import FakeBackupPlugin
from tests.api_helpers import Api, api_spec, load_settings, serve_api, write_cluster
from tests.daemon import Instance

PLUGIN = "backup.example.io"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    inst = Instance(tmp_path)
    spec = api_spec(plugins=[{"name": "wal.example.io", "isWALArchiver": False}])
    write_cluster(inst, spec, {"currentPrimary": "test-1"})
    return load_settings(inst)


async def request(api: Api, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    async with (
        api.client(None) as client,
        client.request(method, api.local_base + path, data=body) as resp,
    ):
        return resp.status, await resp.text()


async def test_cache(settings: Settings) -> None:
    async with serve_api(settings) as api:
        code, text = await request(api, "GET", "/cache/cluster")
        assert code == 200
        cluster = json.loads(text)
        assert cluster["kind"] == "Cluster" and cluster["metadata"]["name"] == "test"
        assert cluster["status"] == {"currentPrimary": "test-1"}
        assert cluster["spec"]["plugins"][0]["name"] == "wal.example.io"
        # CloudNativePG's reconciler caches the WAL commands' values; nothing does here.
        for key in ("wal-archive", "wal-restore", "wal-restore-config", "other", "", "a/b"):
            assert (await request(api, "GET", f"/cache/{key}"))[0] == 404, key


async def test_wal_archive_condition(settings: Settings) -> None:
    path = "/cluster/status/condition/wal/archive"
    async with serve_api(settings) as api:
        assert await request(api, "POST", path, b'{"error": "bucket unreachable"}') == (200, "OK")
        assert await request(api, "POST", path, b"{}") == (200, "OK")
        for bad in (b"", b"nope", b"[]", b'{"error": 3}'):
            code, text = await request(api, "POST", path, bad)
            assert code == 400 and json.loads(text)["error"]["code"] == "FAILED_TO_PARSE_REQUEST"
        code, text = await request(api, "POST", path, b"x" * (65 * 1024))
        assert code == 413


async def test_plugin_backup(settings: Settings, tmp_path: Path) -> None:
    sockets = settings.instance.pluginSocketDir
    async with (
        FakeBackupPlugin(sockets, tmp_path / "store", name=PLUGIN) as plugin,
        serve_api(settings) as api,
    ):
        query = f"/pg/backup?name=b1&plugin={PLUGIN}"
        assert await request(api, "GET", query) == (200, "OK")
        await api.local.backups.wait()
        record = api.local.backups.records["b1"]
        assert record.phase == "completed", record.error
        assert record.result["backupID"] == "20260101T000000"
        assert record.result["backupLabelFile"].startswith(b"START WAL LOCATION")
        (call,) = plugin.backups
        assert call["backup"]["kind"] == "Backup"
        assert call["backup"]["metadata"]["name"] == "b1"
        assert call["backup"]["spec"]["pluginConfiguration"] == {"name": PLUGIN}
        assert call["cluster"]["metadata"]["name"] == "test"
        # A Backup resource in the body, with parameters.
        backup: dict[str, Any] = {
            "spec": {
                "method": "plugin",
                "pluginConfiguration": {"name": PLUGIN, "parameters": {"compress": "gzip"}},
            }
        }
        body = json.dumps(backup).encode()
        assert await request(api, "POST", "/pg/backup?name=b2", body) == (200, "OK")
        await api.local.backups.wait()
        assert plugin.backups[-1]["parameters"] == {"compress": "gzip"}
        plugin.fail_backup = "disk full"
        assert (await request(api, "POST", "/pg/backup?name=b3", body))[0] == 200
        await api.local.backups.wait()
        failed = api.local.backups.records["b3"]
        assert failed.phase == "failed" and "disk full" in failed.error


async def test_plugin_backup_refusals(settings: Settings) -> None:
    async with serve_api(settings) as api:
        assert await request(api, "GET", "/pg/backup") == (
            400,
            "Missing backup name parameter\n",
        )
        assert await request(api, "GET", "/pg/backup?name=b") == (
            409,
            "Plugin backup not configured in the cluster\n",
        )
        method = json.dumps({"spec": {"method": "volumeSnapshot"}}).encode()
        assert (await request(api, "POST", "/pg/backup?name=b", method))[0] == 400
        barman = json.dumps({"spec": {"method": "barmanObjectStore"}}).encode()
        assert (await request(api, "POST", "/pg/backup?name=b", barman))[0] == 409
        for bad in (b"[", b"[]", b'{"spec": []}', b'{"spec": {"method": "plugin", '
                    b'"pluginConfiguration": {"name": "p", "parameters": []}}}'):  # fmt: skip
            assert (await request(api, "POST", "/pg/backup?name=b", bad))[0] == 400, bad
        # No such plugin socket: accepted, then recorded as failed (as CNPG marks the Backup).
        assert (await request(api, "GET", "/pg/backup?name=b&plugin=missing.io"))[0] == 200
        await api.local.backups.wait()
        missing = api.local.backups.records["b"]
        assert missing.error == "requested plugin is not available: missing.io"
