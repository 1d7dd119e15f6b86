"""A real Prometheus server (loopback only) scrapes the metrics server every second; the
series come back through its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from instance_manager.metrics.server import MetricsServer
from tests.daemon import free_port
from tests.metrics_support import (
    ServerTask,
    primary_state,
    running_postgres,
    tcp_connector,
    write_settings,
)

PROMETHEUS = shutil.which("prometheus")
CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: cnpg
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as resp:
        if resp.status != 200:
            return []
        body = await resp.json()
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def wait_for_series(base: str, promql: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                found = await query(session, base, promql)
                if found:
                    return found
            assert asyncio.get_running_loop().time() < deadline, f"no series for {promql}"
            await asyncio.sleep(0.5)


@pytest.mark.slow
async def test_prometheus_scrapes_us(template_pgdata: Path, tmp_path: Path) -> None:
    assert PROMETHEUS is not None, "prometheus is not installed (container/setup.sh --dev)"
    with running_postgres(template_pgdata) as (inst, _):
        settings = write_settings(inst, tmp_path / "cluster.yaml")
        server = MetricsServer(
            settings, primary_state(), lambda: None, connector=tcp_connector(inst)
        )
        async with ServerTask(server):
            config = tmp_path / "prometheus.yml"
            config.write_text(CONFIG.format(port=server.port))
            web = f"127.0.0.1:{free_port()}"
            prometheus = await asyncio.create_subprocess_exec(
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={web}",
                "--log.level=warn",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                up = await wait_for_series(f"http://{web}", 'cnpg_collector_up{job="cnpg"}')
                setting = await wait_for_series(
                    f"http://{web}", 'cnpg_pg_settings_setting{name="max_connections"}'
                )
                scrape = await wait_for_series(f"http://{web}", 'up{job="cnpg"} == 1')
            finally:
                prometheus.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(prometheus.wait(), 20)
                except TimeoutError:
                    prometheus.kill()
                    await prometheus.wait()
    assert up[0]["metric"]["cluster"] == "metrics-test"
    assert up[0]["value"][1] == "1"
    assert setting[0]["value"][1] == "20"
    assert scrape[0]["metric"]["instance"] == f"127.0.0.1:{server.port}"
