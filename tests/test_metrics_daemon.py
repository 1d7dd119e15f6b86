"""The daemon itself serving /metrics: the real Unix-socket connection, a custom query file
reloaded on change, a clean quick stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.daemon import Daemon, Instance, base_spec, free_port, http_get, wait_for
from tests.metrics_support import Exposition, parse

Start = Callable[..., Daemon]


def write_config(inst: Instance, queries: Path) -> None:
    doc = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "test"},
        "spec": base_spec(),
        "instance": {"metricsQueriesFiles": [str(queries)]},
    }
    inst.config_file.write_text(yaml.safe_dump(doc))


def scrape(port: int) -> Exposition | None:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", 5.0)
    return parse(body) if status == 200 else None


def test_the_daemon_serves_metrics(instance: Instance, daemons: Start) -> None:
    queries = instance.root / "queries.yaml"
    queries.write_text("mine:\n  query: SELECT 1 AS v\n  metrics: [{v: {usage: GAUGE}}]\n")
    write_config(instance, queries)
    port = free_port()
    daemon = daemons(instance, "--metrics-port", str(port))
    daemon.wait_ready()
    e = wait_for(lambda: scrape(port), 10, "/metrics")
    assert e.value("cnpg_collector_up", cluster="test") == 1
    assert e.value("cnpg_last_error") == 0
    assert e.value("cnpg_mine_v") == 1
    assert e.value("cnpg_pg_settings_setting", name="max_connections") == 20
    queries.write_text("yours:\n  query: SELECT 2 AS v\n  metrics: [{v: {usage: GAUGE}}]\n")
    wait_for(lambda: (found := scrape(port)) and "cnpg_yours_v" in found.names(), 10, "reload")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 4  # the exporter's sessions never hold a smart stop
