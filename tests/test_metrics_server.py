"""The metrics server over HTTP: exposition checked by promtool, reload of the query files,
PostgreSQL stopped, TLS, and the daemon's real connection path (Unix socket, peer auth)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from instance_manager.metrics.connections import APPLICATION_NAME
from instance_manager.metrics.queries import DEFAULT_QUERIES, load_yaml
from instance_manager.metrics.server import MetricsServer
from tests.daemon import PYTHON, Instance, chown_tree
from tests.metrics_support import (
    ServerTask,
    parse,
    primary_state,
    running_postgres,
    tcp_connector,
    write_settings,
)
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
# Lint rules CloudNativePG's own metric names break (we keep the names for compatibility).
CNPG_NAMING = {
    'counter metrics should have "_total" suffix',
    'non-counter metrics should not have "_total" suffix',
    'non-histogram and non-summary metrics should not have "_count" suffix',
}


@pytest.fixture(scope="module")
def pg(template_pgdata: Path) -> Iterator[Instance]:
    with running_postgres(template_pgdata) as (inst, _):
        yield inst


async def fetch(url: str, **kwargs: object) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10), **kwargs) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def promtool(body: str) -> tuple[int, list[tuple[str, str]]]:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body.encode(), capture_output=True, timeout=30
    )
    problems = []
    for line in (result.stdout + result.stderr).decode().splitlines():
        name, _, problem = line.strip().partition(" ")
        if name:
            problems.append((name, problem))
    return result.returncode, problems


def default_query_metrics() -> set[str]:
    path = REPO / "instance_manager" / "metrics" / DEFAULT_QUERIES
    return {m for q in load_yaml(path.read_text(), "default").values() for m in q.metric_names}


async def test_default_exposition_passes_promtool(pg: Instance, tmp_path: Path) -> None:
    server = MetricsServer(
        write_settings(pg, tmp_path / "c.yaml"),
        primary_state(),
        lambda: None,
        connector=tcp_connector(pg),
    )
    async with ServerTask(server) as running:
        status, content_type, body = await fetch(running.url)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert parse(body).value("cnpg_collector_up", cluster="metrics-test") == 1
    code, problems = promtool(body)
    # Exit 3 = lint findings only (1 would be a parse error): all of them are CNPG's own
    # names of the default queries, kept as they are for existing dashboards and alerts.
    assert code in (0, 3), problems
    allowed = default_query_metrics()
    assert [p for p in problems if p[0] not in allowed or p[1] not in CNPG_NAMING] == []


async def test_custom_queries_exposition_is_promtool_clean(pg: Instance, tmp_path: Path) -> None:
    queries = tmp_path / "q.yaml"
    queries.write_text(
        """
clean:
  query: SELECT 'a' AS kind, 3 AS events_total, 1.5 AS level_seconds,
         ARRAY[1, 5]::float8[] AS wait_seconds, ARRAY[2, 4]::int8[] AS wait_seconds_bucket,
         7.5 AS wait_seconds_sum, 4 AS wait_seconds_count
  metrics:
    - kind: {usage: LABEL, description: kind}
    - events_total: {usage: COUNTER, description: events}
    - level_seconds: {usage: GAUGE, description: level}
    - wait_seconds: {usage: HISTOGRAM, description: waits}
"""
    )
    settings = write_settings(
        pg, tmp_path / "c.yaml", monitoring={"disableDefaultQueries": True}, files=[queries]
    )
    server = MetricsServer(settings, primary_state(), lambda: None, connector=tcp_connector(pg))
    async with ServerTask(server) as running:
        _, _, body = await fetch(running.url)
    assert "cnpg_clean_wait_seconds_bucket" in body
    assert promtool(body) == (0, [])


async def wait_for_metric(url: str, name: str, present: bool = True, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _, _, body = await fetch(url)
        if (name in parse(body).names()) == present:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{name} present={not present}"
        await asyncio.sleep(0.1)


def query(name: str) -> str:
    return f"{name}:\n  query: SELECT 1 AS v\n  metrics: [{{v: {{usage: GAUGE}}}}]\n"


async def test_query_files_are_reloaded_when_they_change(pg: Instance, tmp_path: Path) -> None:
    # A ConfigMap volume: files are symlinks into ..data, which is swapped atomically.
    volume = tmp_path / "volume"
    (volume / "v1").mkdir(parents=True)
    (volume / "v1" / "queries.yaml").write_text(query("first"))
    (volume / "..data").symlink_to("v1")
    (volume / "queries.yaml").symlink_to("..data/queries.yaml")
    plain = tmp_path / "plain.yaml"
    plain.write_text(query("plain_one"))
    settings = write_settings(
        pg,
        tmp_path / "c.yaml",
        monitoring={"disableDefaultQueries": True},
        files=[volume / "queries.yaml", plain],
    )
    server = MetricsServer(settings, primary_state(), lambda: None, connector=tcp_connector(pg))
    async with ServerTask(server) as running:
        await wait_for_metric(running.url, "cnpg_first_v")
        await wait_for_metric(running.url, "cnpg_plain_one_v")
        (volume / "v2").mkdir()
        (volume / "v2" / "queries.yaml").write_text(query("second"))
        (volume / "..data_tmp").symlink_to("v2")
        os.replace(volume / "..data_tmp", volume / "..data")
        await wait_for_metric(running.url, "cnpg_second_v")  # despite the 30 s query cache
        await wait_for_metric(running.url, "cnpg_first_v", present=False)
        plain.write_text(query("plain_two"))
        await wait_for_metric(running.url, "cnpg_plain_two_v")
        plain.write_text("not: [valid")  # a broken file is skipped, the others stay
        await wait_for_metric(running.url, "cnpg_plain_two_v", present=False)
        await wait_for_metric(running.url, "cnpg_second_v")


def exporter_sessions(inst: Instance) -> int:
    """The metrics exporter's sessions open on ``inst`` (asked over a session of our own)."""
    with psycopg.connect(inst.conninfo(), autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        row = conn.execute(query, (APPLICATION_NAME,)).fetchone()
    return int(row[0]) if row else 0


async def test_postgres_stopped_answers_up_zero(template_pgdata: Path, tmp_path: Path) -> None:
    with running_postgres(template_pgdata) as (inst, daemon):
        settings = write_settings(inst, tmp_path / "c.yaml")
        state = primary_state()
        server = MetricsServer(settings, state, lambda: None, connector=tcp_connector(inst))
        async with ServerTask(server) as running:
            _, _, body = await fetch(running.url)
            assert parse(body).value("cnpg_collector_up", cluster="metrics-test") == 1
            # What the lifecycle does first: our idle sessions go, so the smart stop that
            # follows does not wait for them (smartShutdownTimeout is 5 s here).
            state.stopping = state.might_be_unavailable = True
            await eventually(lambda: not exporter_sessions(inst), 5, "the exporter to disconnect")
            started = asyncio.get_running_loop().time()
            assert await asyncio.to_thread(daemon.stop) == 0
            assert asyncio.get_running_loop().time() - started < 4
            # Then as after a crash: the postmaster is gone, nothing planned.
            state.stopping = state.might_be_unavailable = state.postmaster_running = False
            status, _, body = await fetch(running.url)
    assert status == 200
    e = parse(body)
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 0
    assert e.value("cnpg_collector_last_collection_error") == 1
    assert not any(n.startswith("cnpg_pg_") for n in e.names())  # no stale query results
    assert e.value("cnpg_collector_pg_wal", value="count") >= 1  # the directory is still there
    assert "cnpg_collector_wal_archive_backlog_segments" in e.names()


def self_signed(certificates: Path) -> None:
    certificates.mkdir(exist_ok=True)
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(certificates / "server.key"), "-out", str(certificates / "server.crt")]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            *subject,
            *files,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_tls_on_the_metrics_port(pg: Instance, tmp_path: Path) -> None:
    certificates = pg.scratch / "certificates"
    await asyncio.to_thread(self_signed, certificates)
    settings = write_settings(pg, tmp_path / "c.yaml", metricsPortTLS=True)
    server = MetricsServer(settings, primary_state(), lambda: None, connector=tcp_connector(pg))
    client = ssl.create_default_context(cafile=str(certificates / "server.crt"))
    async with ServerTask(server) as running:
        url = running.url.replace("http://", "https://")
        status, _, body = await fetch(url, ssl=client)
        with pytest.raises(aiohttp.ClientError):
            await fetch(running.url)  # plain HTTP is refused
    assert status == 200 and "cnpg_collector_up" in body


EXPORT_AS_POSTGRES = """
import asyncio, sys
from pathlib import Path
from instance_manager import settings
from instance_manager.metrics.collector import Collector
from instance_manager.state import InstanceState

async def main() -> None:
    s = settings.load(Path(sys.argv[1]), {}, {})
    collector = Collector(lambda: s, InstanceState(postmaster_running=True, is_primary=True),
                          lambda: None)
    sys.stdout.write((await collector.scrape()).decode())
    await collector.close()

asyncio.run(main())
"""


def test_the_daemon_account_connects_over_the_socket_with_peer_auth(
    pg: Instance, tmp_path: Path
) -> None:
    config = pg.root / "metrics-peer.yaml"
    write_settings(pg, config)
    chown_tree(pg.root / "metrics-peer.yaml")
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", PYTHON, "-c", EXPORT_AS_POSTGRES, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    e = parse(result.stdout)
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 1
    assert e.value("cnpg_last_error") == 0
    assert e.value("cnpg_pg_settings_setting", name="max_connections") == 20


async def test_the_scrapers_timeout_bounds_the_collection(pg: Instance, tmp_path: Path) -> None:
    queries = tmp_path / "slow.yaml"
    queries.write_text(
        "slow:\n  query: SELECT 1 AS v FROM pg_sleep(4)\n  metrics: [{v: {usage: GAUGE}}]\n"
    )
    settings = write_settings(
        pg, tmp_path / "c.yaml", monitoring={"disableDefaultQueries": True}, files=[queries]
    )
    server = MetricsServer(settings, primary_state(), lambda: None, connector=tcp_connector(pg))
    async with ServerTask(server) as running:
        started = asyncio.get_running_loop().time()
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "1.5"}
        status, _, body = await fetch(running.url, headers=headers)
        elapsed = asyncio.get_running_loop().time() - started
    assert status == 200 and elapsed < 1.5
    e = parse(body)
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 1
    assert "cnpg_slow_v" not in e.names()
    assert any("deadline" in dict(k)["errorUserQueries"] for k in e.series("cnpg_errors_total"))
