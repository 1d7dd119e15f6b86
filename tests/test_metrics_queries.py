"""The query engine against real PostgreSQL 15: every usage, predicates, primary-only,
runonserver, target_databases patterns, caching, isolation of a broken query, bounds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instance_manager.metrics.collector import Collector
from instance_manager.state import InstanceState
from tests.daemon import Instance
from tests.metrics_support import (
    Exposition,
    parse,
    primary_state,
    running_postgres,
    sql,
    tcp_connector,
    write_settings,
)

DATABASES = ("metrics_a", "metrics_b", "other_db")


@pytest.fixture(scope="module")
def pg(template_pgdata: Path) -> Iterator[Instance]:
    """One PostgreSQL for the module, with a few extra databases."""
    with running_postgres(template_pgdata) as (inst, _):
        for name in DATABASES:
            sql(inst, f"CREATE DATABASE {name}")
        sql(inst, "CREATE DATABASE metrics_template IS_TEMPLATE true")
        sql(inst, "CREATE DATABASE metrics_closed ALLOW_CONNECTIONS false")
        sql(inst, "CREATE TABLE public.metrics_t (v int)", "app")
        sql(inst, "GRANT INSERT, SELECT ON public.metrics_t TO cnpg_metrics_exporter", "app")
        yield inst


async def scrape_once(
    pg: Instance,
    tmp_path: Path,
    queries: str,
    state: InstanceState | None = None,
    **monitoring: Any,
) -> Exposition:
    path = tmp_path / "queries.yaml"
    path.write_text(queries)
    settings = write_settings(
        pg,
        tmp_path / "cluster.yaml",
        monitoring={"disableDefaultQueries": True, **monitoring},
        files=[path],
    )
    collector = Collector(settings, state or primary_state(), lambda: None, tcp_connector(pg))
    try:
        return parse((await collector.scrape()).decode())
    finally:
        await collector.close()


EVERY_USAGE = """
usages:
  query: |
    SELECT 'one' AS kind, 'ignored' AS note, 42 AS hits, 2.5 AS level, 'green' AS colour,
           '1m30s' AS wait, interval '2 seconds' AS pause,
           ARRAY[0.1, 1, 10]::float8[] AS latency,
           ARRAY[3, 7, 9]::int8[] AS latency_bucket, 12.5 AS latency_sum, 10 AS latency_count
  metrics:
    - kind: {usage: LABEL, description: a label}
    - note: {usage: DISCARD}
    - hits: {usage: COUNTER, description: a counter}
    - level: {usage: GAUGE, description: a gauge}
    - colour:
        usage: MAPPEDMETRIC
        description: mapped
        metric_mapping: {green: 1, red: 2}
    - wait: {usage: DURATION, description: a Go duration}
    - pause: {usage: DURATION, description: an interval, name: pause_time}
    - latency: {usage: HISTOGRAM, description: a histogram}
"""


async def test_every_usage_type(pg: Instance, tmp_path: Path) -> None:
    e = await scrape_once(pg, tmp_path, EVERY_USAGE)
    assert e.value("cnpg_usages_hits", kind="one") == 42
    assert e.types["cnpg_usages_hits"] == "counter"
    assert e.value("cnpg_usages_level", kind="one") == 2.5
    assert e.types["cnpg_usages_level"] == "gauge"
    assert e.value("cnpg_usages_colour", kind="one") == 1
    assert e.value("cnpg_usages_wait_milliseconds", kind="one") == 90_000
    assert e.value("cnpg_usages_pause_time_milliseconds", kind="one") == 2_000
    assert not any("note" in name for name in e.names())
    assert e.types["cnpg_usages_latency"] == "histogram"
    assert e.value("cnpg_usages_latency_bucket", kind="one", le="0.1") == 3
    assert e.value("cnpg_usages_latency_bucket", kind="one", le="10") == 9
    assert e.value("cnpg_usages_latency_bucket", kind="one", le="+Inf") == 10
    assert e.value("cnpg_usages_latency_sum", kind="one") == 12.5
    assert e.value("cnpg_usages_latency_count", kind="one") == 10
    assert e.value("cnpg_last_error") == 0


async def test_unmapped_text_null_and_several_rows(pg: Instance, tmp_path: Path) -> None:
    queries = """
rows:
  query: "SELECT * FROM (VALUES ('a', 'red', 1), ('b', 'blue', NULL)) AS t(k, c, n)"
  metrics:
    - k: {usage: LABEL}
    - c: {usage: MAPPEDMETRIC, metric_mapping: {red: 5}}
    - n: {usage: GAUGE}
"""
    e = await scrape_once(pg, tmp_path, queries)
    assert e.value("cnpg_rows_c", k="a") == 5
    assert e.get("cnpg_rows_c", k="b") is None  # "blue" is not mapped: skipped
    assert e.value("cnpg_rows_n", k="a") == 1
    assert e.value("cnpg_rows_n", k="b") != e.value("cnpg_rows_n", k="b")  # NULL -> NaN


PREDICATES = """
accepted:
  predicate_query: SELECT true
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
refused:
  predicate_query: SELECT false
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
unknown:
  predicate_query: SELECT NULL::boolean
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
norow:
  predicate_query: SELECT true WHERE false
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
guarded:
  predicate_query: SELECT false
  query: SELECT 1 / 0 AS v
  metrics: [{v: {usage: GAUGE}}]
"""


async def test_predicate_query_decides(pg: Instance, tmp_path: Path) -> None:
    e = await scrape_once(pg, tmp_path, PREDICATES)
    assert e.value("cnpg_accepted_v") == 1
    for skipped in ("refused", "unknown", "norow", "guarded"):
        assert e.get(f"cnpg_{skipped}_v") is None
    assert e.value("cnpg_last_error") == 0


PRIMARY = """
anywhere:
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
primary_only:
  primary: true
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
legacy_master:
  master: true
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
"""


async def test_primary_only_queries_skip_a_standby(pg: Instance, tmp_path: Path) -> None:
    on_primary = await scrape_once(pg, tmp_path, PRIMARY)
    assert {"cnpg_anywhere_v", "cnpg_primary_only_v", "cnpg_legacy_master_v"} <= on_primary.names()
    standby = InstanceState(postmaster_running=True, is_primary=False)
    on_standby = await scrape_once(pg, tmp_path, PRIMARY, state=standby)
    assert "cnpg_anywhere_v" in on_standby.names()
    assert not {"cnpg_primary_only_v", "cnpg_legacy_master_v"} & on_standby.names()
    assert on_standby.get("cnpg_collector_sync_replicas", value="observed") is None


RUNONSERVER = """
new_enough:
  runonserver: ">=15.0.0"
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
too_old:
  runonserver: "<15.0.0"
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
this_range:
  runonserver: ">=14.0.0 <16.0.0 || >=18.0.0"
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
future:
  runonserver: ">=17.0.0"
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
unreadable:
  runonserver: "fifteen"
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
"""


async def test_runonserver_version_constraints(pg: Instance, tmp_path: Path) -> None:
    e = await scrape_once(pg, tmp_path, RUNONSERVER)
    assert e.value("cnpg_new_enough_v") == 1
    assert e.value("cnpg_this_range_v") == 1
    assert e.get("cnpg_too_old_v") is None
    assert e.get("cnpg_future_v") is None
    assert e.get("cnpg_unreadable_v") is None
    assert e.value("cnpg_errors_total", errorUserQueries="unreadable") == 1


TARGETS = """
glob:
  target_databases: ["metrics_*"]
  query: SELECT current_database() AS datname, 1 AS v
  metrics: [{datname: {usage: LABEL}}, {v: {usage: GAUGE}}]
everywhere:
  target_databases: ["*"]
  query: SELECT current_database() AS datname, 1 AS v
  metrics: [{datname: {usage: LABEL}}, {v: {usage: GAUGE}}]
listed:
  target_databases: ["other_db", "metrics_[b-z]", "zz*", "postgres"]
  query: SELECT current_database() AS datname, 1 AS v
  metrics: [{datname: {usage: LABEL}}, {v: {usage: GAUGE}}]
default_target:
  query: SELECT current_database() AS datname, 1 AS v
  metrics: [{datname: {usage: LABEL}}, {v: {usage: GAUGE}}]
missing:
  target_databases: ["no_such_db"]
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
"""


def databases(e: Exposition, name: str) -> set[str]:
    return {dict(labels)["datname"] for labels in e.series(name)}


async def test_target_databases_patterns(pg: Instance, tmp_path: Path) -> None:
    e = await scrape_once(pg, tmp_path, TARGETS)
    assert databases(e, "cnpg_glob_v") == {"metrics_a", "metrics_b"}
    # Templates and databases refusing connections are never targets of a pattern.
    assert databases(e, "cnpg_everywhere_v") == {"postgres", "app", *DATABASES}
    assert databases(e, "cnpg_listed_v") == {"other_db", "metrics_b", "postgres"}
    assert databases(e, "cnpg_default_target_v") == {"app"}  # the application database
    assert databases(e, "cnpg_collector_lo_pages") == {"postgres", "app", *DATABASES}
    errors = e.series("cnpg_errors_total")
    assert len(errors) == 1 and "no_such_db" in dict(next(iter(errors)))["errorUserQueries"]


BROKEN = """
good_before:
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
syntax:
  query: SELEC 1 AS v
  metrics: [{v: {usage: GAUGE}}]
runtime:
  query: SELECT 1 / (random() * 0)::int AS v
  metrics: [{v: {usage: GAUGE}}]
mismatch:
  query: SELECT 1 AS v, 2 AS w
  metrics: [{v: {usage: GAUGE}}]
two_statements:
  query: SELECT 1 AS v; SELECT 2 AS v
  metrics: [{v: {usage: GAUGE}}]
writes:
  query: WITH t AS (INSERT INTO public.metrics_t VALUES (1) RETURNING v) SELECT v FROM t
  metrics: [{v: {usage: GAUGE}}]
no_usage:
  query: SELECT 1 AS v
  metrics: [{v: {usage: SOMETIMES}}]
good_after:
  query: >
    SELECT current_setting('search_path') AS path,
           current_setting('transaction_read_only') AS ro, 1 AS v
  metrics: [{path: {usage: LABEL}}, {ro: {usage: LABEL}}, {v: {usage: GAUGE}}]
"""


async def test_broken_queries_beside_good_ones(pg: Instance, tmp_path: Path) -> None:
    e = await scrape_once(pg, tmp_path, BROKEN)
    assert e.value("cnpg_good_before_v") == 1
    # The next query still runs, in a fresh read-only transaction with a safe search_path.
    assert e.value("cnpg_good_after_v", path="pg_catalog, public, pg_temp", ro="on") == 1
    errors = [dict(labels)["errorUserQueries"] for labels in e.series("cnpg_errors_total")]
    assert {error.split(" ")[0] for error in errors} == {
        "syntax",
        "runtime",
        "mismatch",
        "two_statements",
        "writes",
    }
    assert any("read-only transaction" in error for error in errors)
    assert e.value("cnpg_last_error") == 1
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 1


async def test_default_queries_on_real_postgres(pg: Instance, tmp_path: Path) -> None:
    settings = write_settings(pg, tmp_path / "cluster.yaml")
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg))
    try:
        e = parse((await collector.scrape()).decode())
    finally:
        await collector.close()
    assert e.value("cnpg_last_error") == 0, e.series("cnpg_errors_total")
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 1
    assert e.value("cnpg_collector_last_collection_error") == 0
    assert e.value("cnpg_pg_settings_setting", name="max_connections") == 20
    assert e.value("cnpg_pg_settings_setting", name="fsync") == 1
    assert e.value("cnpg_pg_database_size_bytes", datname="app") > 0
    assert e.value("cnpg_pg_postmaster_start_time") > 1e9
    assert e.value("cnpg_pg_replication_in_recovery") == 0
    assert e.value("cnpg_pg_replication_streaming_replicas") == 0
    assert e.types["cnpg_pg_stat_archiver_archived_count"] == "counter"
    assert "cnpg_pg_stat_bgwriter_checkpoints_timed" in e.names()  # PostgreSQL < 17
    assert "cnpg_pg_stat_checkpointer_checkpoints_timed" not in e.names()
    assert e.value("cnpg_pg_stat_database_xact_commit", datname="app") > 0
    assert any(
        dict(k)["usename"] == "cnpg_metrics_exporter" for k in e.series("cnpg_backends_total")
    )
    extensions = e.series("cnpg_pg_extensions_update_available")
    assert {dict(k)["datname"] for k in extensions if dict(k)["extname"] == "plpgsql"} == {
        "postgres",
        "app",
        *DATABASES,
    }
    (version,) = e.series("cnpg_collector_postgres_version")
    assert dict(version)["full"].startswith("15.")
    assert e.value("cnpg_collector_pg_wal", value="count") >= 1
    assert e.value("cnpg_collector_pg_wal", value="max") == 64  # 1GB of 16MB segments
