"""Plugin metrics through CNPG-I Metrics: Define + Collect on every scrape, names as given,
types honoured, and a failing plugin counted without failing the scrape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from instance_manager.metrics.collector import Collector
from instance_manager.metrics.connections import Connection
from instance_manager.plugins.registry import Registry
from instance_manager.state import InstanceState
from tests.daemon import Instance
from tests.fake_plugin import FakePlugin
from tests.metrics_fake_plugin import MetricsPlugin, metric
from tests.metrics_support import Exposition, parse, write_settings

GOOD = "metrics.example.io"
OTHER = "other.example.io"


async def no_postgres(dbname: str) -> Connection:
    raise OSError("no PostgreSQL in these tests")


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    inst = Instance(tmp_path)
    plugins = [{"name": GOOD}, {"name": OTHER}, {"name": "wal.example.io"}]
    settings = write_settings(inst, tmp_path / "c.yaml", spec={"plugins": plugins})
    registry = Registry(tmp_path / "plugins", lambda: settings().cluster)
    found = Collector(settings, InstanceState(), lambda: registry, no_postgres)
    yield found
    await found.close()
    await registry.close()


async def scrape(collector: Collector) -> Exposition:
    return parse((await collector.scrape()).decode())


def plugin_errors(e: Exposition) -> float:
    return e.get("cnpg_collector_collection_errors_total", collector="Collect.PluginMetrics") or 0


async def test_plugin_metrics_are_exported_as_defined(collector: Collector, tmp_path: Path) -> None:
    async with MetricsPlugin(tmp_path / "plugins", GOOD) as plugin:
        plugin.definitions = [
            metric("metrics_example_io_first_recoverability_point", "gauge"),
            metric("metrics_example_io_uploads_total", "counter", ["bucket"], {"site": "a"}),
            metric("metrics_example_io_mood", "untyped"),
        ]
        plugin.values = [
            ("metrics_example_io_first_recoverability_point", 1700000000.0, []),
            ("metrics_example_io_uploads_total", 7.0, ["b1"]),
            ("metrics_example_io_uploads_total", 9.0, ["b2"]),
            ("metrics_example_io_mood", 0.5, []),
        ]
        first = await scrape(collector)
        second = await scrape(collector)
    assert first.value("metrics_example_io_first_recoverability_point") == 1700000000
    assert first.types["metrics_example_io_first_recoverability_point"] == "gauge"
    assert first.value("metrics_example_io_uploads_total", bucket="b1", site="a") == 7
    assert first.value("metrics_example_io_uploads_total", bucket="b2", site="a") == 9
    assert first.types["metrics_example_io_uploads_total"] == "counter"
    assert first.types["metrics_example_io_mood"] == "untyped"
    assert plugin_errors(second) == 0
    assert plugin.calls["Define"] == plugin.calls["Collect"] == 2  # on every scrape
    assert json.loads(plugin.clusters[0])["metadata"]["name"] == "metrics-test"


async def test_a_failing_plugin_does_not_fail_the_scrape(
    collector: Collector, tmp_path: Path
) -> None:
    async with (
        MetricsPlugin(tmp_path / "plugins", GOOD) as good,
        MetricsPlugin(tmp_path / "plugins", OTHER) as bad,
    ):
        good.definitions = [metric("good_value", "gauge")]
        good.values = [("good_value", 1.0, [])]
        bad.definitions = [metric("bad_value", "gauge")]
        bad.values = [("bad_value", 1.0, [])]
        bad.fail = "object store unreachable"
        failed = await scrape(collector)
        bad.fail = None
        bad.values = [("never_defined", 1.0, [])]
        unknown = await scrape(collector)
        bad.values = [("bad_value", 1.0, ["unexpected"])]
        wrong_labels = await scrape(collector)
        bad.values = [("bad_value", 2.0, [])]
        healed = await scrape(collector)
    for e in (failed, unknown, wrong_labels):
        assert e.value("good_value") == 1
        assert "bad_value" not in e.names()
    assert plugin_errors(wrong_labels) == 3
    assert healed.value("bad_value") == 2
    assert plugin_errors(healed) == 3


async def test_plugin_names_cannot_shadow_built_in_metrics(
    collector: Collector, tmp_path: Path
) -> None:
    async with MetricsPlugin(tmp_path / "plugins", GOOD) as plugin:
        plugin.definitions = [metric("cnpg_collector_up", "gauge")]
        plugin.values = [("cnpg_collector_up", 1.0, [])]
        e = await scrape(collector)
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 0  # ours, not the plugin's
    assert plugin_errors(e) == 1


async def test_plugins_without_metrics_are_not_asked(collector: Collector, tmp_path: Path) -> None:
    async with FakePlugin(tmp_path / "plugins", tmp_path / "storage", name="wal.example.io"):
        e = await scrape(collector)
    assert plugin_errors(e) == 0
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 0
