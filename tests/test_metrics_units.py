"""Metrics pieces without PostgreSQL: parsers, exposition, conversions, built-in values."""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from instance_manager.cluster_model import Cluster
from instance_manager.metrics import archive, builtin, engine, plugins, queries
from instance_manager.metrics.exposition import Family, format_value, render
from instance_manager.metrics.selfstats import RESERVED, default_database, queries_ttl
from instance_manager.metrics.versions import parse_go_duration, parse_range, pg_version
from instance_manager.plugins._gen import metrics_pb2
from tests.metrics_fake_plugin import metric


def cluster(**spec: object) -> Cluster:
    doc: dict[str, object] = {"metadata": {"name": "c"}, "spec": spec}
    return msgspec.convert(doc, Cluster)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m30s", 90), ("1.5h", 5400), ("250ms", 0.25), ("0", 0), ("-1s", -1)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "s", "1x", "", "1m 30s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_version_ranges_read_postgres_minor_as_patch() -> None:
    assert pg_version(150007) == (15, 0, 7)
    assert pg_version(90624) == (9, 6, 24)
    assert (17, 0, 2) in parse_range(">=17.0.0")
    assert (16, 0, 9) not in parse_range(">=17.0.0")
    assert (16, 0, 9) in parse_range("<17.0.0")
    either = parse_range(">= 10.0.0 <13.0.0 || >=15.0.0")
    assert (12, 0, 1) in either and (15, 0, 0) in either and (14, 0, 3) not in either
    assert (15, 0, 7) in parse_range("15.0.7") and (15, 0, 8) not in parse_range("=15.0.7")
    assert (15, 0, 8) in parse_range("!=15.0.7 >15")
    for bad in ("fifteen", ">=", "15.0.0 ||", "~15"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_exposition_escapes_and_formats() -> None:
    family = Family("x_info", 'line one\nback\\slash "q"', "gauge")
    assert family.add((("a", 'say "hi"\\\n'),), 1.0)
    assert not family.add((("a", 'say "hi"\\\n'),), 2.0)  # same series twice: refused
    family.add((("a", "b"),), 0.5)
    text = render([family]).decode()
    assert '# HELP x_info line one\\nback\\\\slash "q"' in text
    assert 'x_info{a="say \\"hi\\"\\\\\\n"} 1\n' in text
    assert 'x_info{a="b"} 0.5\n' in text
    values = [math.nan, math.inf, -math.inf, 3.0, 1e20, -2.5]
    assert [format_value(v) for v in values] == ["NaN", "+Inf", "-Inf", "3", "1e+20", "-2.5"]
    assert render([]) == b""


def test_query_parsing_names_and_isolation(caplog: pytest.LogCaptureFixture) -> None:
    text = """
good:
  name: renamed
  query: SELECT 1
  metrics:
    - lbl: {usage: label}
    - t: {usage: DURATION, name: took}
    - h: {usage: HISTOGRAM}
    - m: {usage: MAPPEDMETRIC, metric_mapping: {a: 1}}
bad_usage:
  query: SELECT 1
  metrics: [{v: {usage: SOMETIMES}}]
no_sql:
  metrics: [{v: {usage: GAUGE}}]
bad_label:
  query: SELECT 1
  metrics: [{"a-b": {usage: LABEL}}]
"""
    with caplog.at_level(logging.WARNING):
        found = queries.load_yaml(text, "file.yaml")
    assert list(found) == ["good"]
    good = found["good"]
    assert good.metric_names == {
        "cnpg_renamed_took_milliseconds",
        "cnpg_renamed_h",
        "cnpg_renamed_m",
    }
    assert len(good.columns) == 7  # lbl, t, h + h_bucket/h_sum/h_count, m
    assert good.labels == ("lbl",)
    ignored = [r for r in caplog.records if r.getMessage() == "metrics query ignored"]
    assert len(ignored) == 3
    with pytest.raises(queries.QueryError):
        queries.load_yaml("- a list", "f")
    with pytest.raises(queries.QueryError):
        queries.load_yaml("a: [", "f")


def test_merge_overrides_by_name_and_protects_built_in_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = queries.load_yaml("q:\n  query: SELECT 1\n  metrics: [{v: {usage: GAUGE}}]", "a")
    two = queries.load_yaml("q:\n  query: SELECT 2\n  metrics: [{v: {usage: GAUGE}}]", "b")
    clash = queries.load_yaml(
        "collector:\n  query: SELECT 1\n  metrics: [{up: {usage: GAUGE}}]", "c"
    )
    with caplog.at_level(logging.WARNING):
        merged = queries.merge([one, two, clash], RESERVED)
    assert merged["q"].sql == "SELECT 2" and "collector" not in merged
    messages = [r.getMessage() for r in caplog.records]
    assert "Query with the same name already found. Overwriting the existing one." in messages


def test_default_queries_define_cnpg_families() -> None:
    found = queries.load_yaml(queries.default_text(), "default")
    names = set().union(*(q.metric_names for q in found.values()))
    for expected in (
        "cnpg_backends_total",
        "cnpg_backends_max_tx_duration_seconds",
        "cnpg_backends_waiting_total",
        "cnpg_pg_database_size_bytes",
        "cnpg_pg_postmaster_start_time",
        "cnpg_pg_replication_lag",
        "cnpg_pg_replication_slots_pg_wal_lsn_diff",
        "cnpg_pg_stat_archiver_seconds_since_last_archival",
        "cnpg_pg_stat_bgwriter_buffers_alloc",
        "cnpg_pg_stat_checkpointer_write_time",
        "cnpg_pg_stat_database_xact_commit",
        "cnpg_pg_stat_replication_replay_lag_seconds",
        "cnpg_pg_settings_setting",
        "cnpg_pg_extensions_update_available",
    ):
        assert expected in names
    assert found["pg_stat_replication"].primary
    assert found["pg_extensions"].target_databases == ("*",)
    assert found["pg_stat_archiver"].predicate is not None
    assert (17, 0, 0) in found["pg_stat_checkpointer"].runonserver  # type: ignore[operator]
    assert not RESERVED & names


def test_value_conversions() -> None:
    assert engine.to_float(Decimal("1.5")) == 1.5
    assert engine.to_float(True) == 1.0
    assert engine.to_float("42") == 42.0
    assert engine.to_float("abc") is None
    assert math.isnan(engine.to_float(None) or 0.0)
    assert engine.to_float(datetime(2024, 1, 1, tzinfo=UTC)) == 1704067200.0
    assert engine.to_float(timedelta(seconds=3)) == 3.0
    assert engine.to_label(None) == "" and engine.to_label(False) == "false"
    assert engine.to_label(7) == "7"
    assert engine.duration_ms("1m") == 60000
    assert engine.duration_ms(timedelta(milliseconds=5)) == 5
    assert engine.duration_ms("-1") is None and engine.duration_ms("soon") is None


def test_rows_to_samples() -> None:
    (query,) = queries.load_yaml(
        "q:\n  query: SELECT 1\n  metrics: [{k: {usage: LABEL}}, {v: {usage: COUNTER}}]", "t"
    ).values()
    out = engine.Results()
    engine.add_rows(query, ["k", "v"], [("a", 1), ("b", 2), ("a", 3)], out)
    family = out.families["cnpg_q_v"]
    assert family.kind == "counter"
    assert [(text, value) for _, text, value in family.samples] == [
        ('{k="a"}', 1.0),
        ('{k="b"}', 2.0),
    ]
    with pytest.raises(engine.ColumnMismatch):
        engine.add_rows(query, ["k"], [("a",)], out)


def test_sync_standby_names() -> None:
    assert builtin.requested_sync_standbys("") == 0
    assert builtin.requested_sync_standbys('ANY 2 ("a", "b")') == 2
    assert builtin.requested_sync_standbys("FIRST 1 (a)") == 1
    with pytest.raises(ValueError):
        builtin.requested_sync_standbys("a, b")


def test_wal_settings_in_segments() -> None:
    settings = {
        "wal_segment_size": 16777216.0,
        "min_wal_size": 80.0,
        "max_wal_size": 1024.0,
        "wal_keep_size": 512.0,
        "max_slot_wal_keep_size": -1.0,
    }
    values = builtin.wal_settings_values(settings, cluster())
    assert (values["min"], values["max"], values["keep"]) == (5, 64, 32)
    assert math.isnan(values["slots_max"]) and math.isnan(values["volume_size"])
    sized = builtin.wal_settings_values(settings, cluster(walStorage={"size": "1Gi"}))
    assert (sized["volume_size"], sized["volume_max"]) == (1073741824, 64)


def test_values_from_the_cluster_resource() -> None:
    c = msgspec.convert(
        {
            "metadata": {"name": "c", "annotations": {builtin.FENCED_ANNOTATION: '["pod-2"]'}},
            "status": {
                "phase": builtin.WAITING_FOR_USER,
                "topology": {"successfullyExtracted": True, "nodesUsed": 3},
                "lastSuccessfulBackup": "2024-01-01T00:00:00Z",
                "lastFailedBackup": "yesterday",
            },
        },
        Cluster,
    )
    assert builtin.fenced(c, "pod-2") and not builtin.fenced(c, "pod-1")
    errors: list[str] = []
    values = {f.name: f.samples[0][2] for f in builtin.cluster_families(c, True, errors)}
    assert values["cnpg_collector_nodes_used"] == 3
    assert values["cnpg_collector_manual_switchover_required"] == 1
    assert values["cnpg_collector_last_available_backup_timestamp"] == 1704067200
    assert values["cnpg_collector_last_failed_backup_timestamp"] == 0
    assert errors == ["Collect.LastFailedBackupTimestamp"]


def test_wal_directory_scan(tmp_path: Path) -> None:
    status = tmp_path / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for i in range(4):
        (tmp_path / "pg_wal" / f"00000001000000000000000{i}").write_bytes(b"x" * 100)
    (tmp_path / "pg_wal" / "00000002.history").write_bytes(b"h" * 10)
    for name in ("000000010000000000000000.done", "000000010000000000000001.done"):
        (status / name).touch()
    for name, age in (("000000010000000000000002", 50), ("00000002.history", 10)):
        marker = status / f"{name}.ready"
        marker.touch()
        os.utime(marker, (time.time() - age, time.time() - age))
    (status / "000000010000000000000009.ready").touch()  # its segment is already gone
    found = archive.scan(tmp_path)
    assert (found.segments, found.ready, found.done) == (4, 3, 2)
    assert found.ready_bytes == 110
    assert found.oldest_ready == pytest.approx(time.time() - 50, abs=2)


def test_archive_rate_over_a_window() -> None:
    now = [1000.0]
    rate = archive.ArchiveRate(clock=lambda: now[0])
    assert rate.observe(10) == 0.0
    now[0] += 10
    assert rate.observe(30) == 2.0
    now[0] += archive.RATE_WINDOW
    assert rate.observe(30) == 0.0  # nothing archived during the last window
    now[0] += 10
    assert rate.observe(40) == pytest.approx(10 / (archive.RATE_WINDOW + 10))
    assert rate.observe(0) == 0.0  # a counter reset starts over


def test_plugin_answers_to_families() -> None:
    defined = metrics_pb2.DefineMetricsResult(
        metrics=[metric("p_total", "counter", ["a"], {"z": "1"}), metric("p_g")]
    )
    collected = metrics_pb2.CollectMetricsResult(
        metrics=[metrics_pb2.CollectMetric(fq_name="p_total", value=2, variable_labels=["x"])]
    )
    p_total, p_g = plugins.to_families(defined, collected, set())
    assert (p_total.kind, p_total.samples) == ("counter", [("", '{z="1",a="x"}', 2.0)])
    assert (p_g.kind, p_g.samples) == ("gauge", [])
    with pytest.raises(plugins.PluginMetricsError):
        plugins.to_families(defined, collected, {"p_g"})
    unknown = metrics_pb2.CollectMetricsResult(metrics=[metrics_pb2.CollectMetric(fq_name="q")])
    with pytest.raises(plugins.PluginMetricsError):
        plugins.to_families(defined, unknown, set())


def test_ttl_and_default_database() -> None:
    assert queries_ttl(cluster()) == 30
    assert queries_ttl(cluster(monitoring={"metricsQueriesTTL": "0"})) == 0
    assert queries_ttl(cluster(monitoring={"metricsQueriesTTL": "1m"})) == 60
    assert queries_ttl(cluster(monitoring={"metricsQueriesTTL": "soon"})) == 30
    assert default_database(cluster()) == "app"
    assert default_database(cluster(bootstrap={"initdb": {"database": "shop"}})) == "shop"
    assert default_database(cluster(bootstrap={"recovery": {"database": "x"}})) == "x"


async def test_archive_visibility_without_postgres(tmp_path: Path) -> None:
    from instance_manager.metrics.collector import Collector
    from instance_manager.state import InstanceState
    from tests.daemon import Instance
    from tests.metrics_support import parse, write_settings

    inst = Instance(tmp_path)
    status = inst.pgdata / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for i in (1, 2):
        (inst.pgdata / "pg_wal" / f"00000001000000000000000{i}").write_bytes(b"w" * 1000)
        marker = status / f"00000001000000000000000{i}.ready"
        marker.touch()
        os.utime(marker, (time.time() - 120 * i, time.time() - 120 * i))
    state = InstanceState(postmaster_running=True, is_primary=True)
    state.wal.archived("000000010000000000000000")
    state.wal.failed("000000010000000000000001", "bucket unreachable")

    async def refused(dbname: str) -> engine.Connection:
        raise ConnectionRefusedError("PostgreSQL is down")

    collector = Collector(write_settings(inst, tmp_path / "c.yaml"), state, lambda: None, refused)
    try:
        e = parse((await collector.scrape()).decode())
    finally:
        await collector.close()
    a = "cnpg_collector_wal_archive_"
    assert e.value(a + "backlog_segments") == 2
    assert e.value(a + "backlog_bytes") == 2000
    assert e.value(a + "oldest_ready_age_seconds") == pytest.approx(240, abs=5)
    assert e.value(a + "last_archived_timestamp_seconds") == state.wal.last_archived_time
    assert e.value(a + "last_failed_timestamp_seconds") == state.wal.last_failed_time
    assert (e.value(a + "archived_total"), e.value(a + "failed_total")) == (1, 1)
    assert e.types[a + "archived_total"] == "counter"
    assert e.value("cnpg_collector_pg_wal_archive_status", value="ready") == 2
    assert e.value("cnpg_collector_pg_wal", value="count") == 2
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 0
    assert e.value("cnpg_collector_last_collection_error") == 1
