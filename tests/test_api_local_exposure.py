"""The local API is reachable by every container of the pod: no credentials, bounded memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instance_manager.backup.plugin import MAX_RECORDS
from instance_manager.settings import Settings
from instance_manager.web.local_api import REDACTED
from tests.api_helpers import Api, api_spec, load_settings, serve_api, write_cluster
from tests.daemon import Instance

PARAMETERS = {
    "repo1-s3-key": "AKIAEXAMPLE",
    "repo1-s3-key-secret": "s3cr3t",
    "repo1-cipher-pass": "hunter2",
    "repo1-cipher-type": "aes-256-cbc",
    "accessToken": "tok",
    "PASSWORD": "pw",
    "repo1-path": "/repo",
    "compress-type": "zst",
}
SHOWN = {"repo1-path": "/repo", "compress-type": "zst"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    inst = Instance(tmp_path)
    spec = api_spec(
        plugins=[{"name": "wal.example.io", "isWALArchiver": True, "parameters": PARAMETERS}],
        externalClusters=[
            {"name": "origin", "plugin": {"name": "wal.example.io", "parameters": PARAMETERS}}
        ],
    )
    spec["postgresql"]["parameters"]["password_encryption"] = "scram-sha-256"
    write_cluster(inst, spec, {"currentPrimary": "test-1"})
    return load_settings(inst)


async def get(api: Api, path: str) -> tuple[int, str]:
    async with api.client(None) as client, client.get(api.local_base + path) as resp:
        return resp.status, await resp.text()


def expected(parameters: dict[str, str]) -> dict[str, str]:
    return {k: SHOWN.get(k, REDACTED) for k in parameters}


async def test_cluster_cache_hides_secret_looking_plugin_parameters(settings: Settings) -> None:
    async with serve_api(settings) as api:
        code, text = await get(api, "/cache/cluster")
    assert code == 200
    for secret in ("AKIAEXAMPLE", "s3cr3t", "hunter2", "tok", '"pw"', "aes-256-cbc"):
        assert secret not in text
    spec = json.loads(text)["spec"]
    assert spec["plugins"][0]["parameters"] == expected(PARAMETERS)
    assert spec["plugins"][0]["name"] == "wal.example.io"
    assert spec["externalClusters"][0]["plugin"]["parameters"] == expected(PARAMETERS)
    # Not a plugin's: PostgreSQL's own parameters are shown as they are.
    assert spec["postgresql"]["parameters"]["password_encryption"] == "scram-sha-256"
    # The daemon itself keeps the real values for the plugins.
    assert settings.cluster.spec.plugins[0].parameters == PARAMETERS


async def test_a_request_loop_keeps_only_the_latest_backup_records(settings: Settings) -> None:
    """Each request names a new backup of a plugin that is not there: every one is recorded
    as failed, and only the latest MAX_RECORDS are kept."""
    total = MAX_RECORDS + 30
    async with serve_api(settings) as api:
        backups = api.local.backups
        for n in range(total):
            assert await get(api, f"/pg/backup?name=b{n}&plugin=missing.io") == (200, "OK")
            await backups.wait()
        assert len(backups.records) == MAX_RECORDS
        assert list(backups.records) == [f"b{n}" for n in range(total - MAX_RECORDS, total)]
        assert all(r.phase == "failed" for r in backups.records.values())
        # A name used again is the newest record, not a second one.
        assert await get(api, "/pg/backup?name=b50&plugin=missing.io") == (200, "OK")
        await backups.wait()
        assert len(backups.records) == MAX_RECORDS and list(backups.records)[-1] == "b50"
