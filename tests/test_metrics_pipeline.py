"""A lane's queries in one pipeline, against real PostgreSQL 15: an error fails only its
own query, a custom query cannot change the session of what runs after it, prepared
statements that are gone are prepared again, an interrupted pipeline drops its
connection."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from instance_manager.metrics import archive, builtin, execution, queries
from instance_manager.metrics.collector import BUILTIN_LANE, Collector
from instance_manager.metrics.connections import Connections
from instance_manager.metrics.engine import Results
from instance_manager.metrics.query_collector import QueryRunner, Target
from instance_manager.metrics.versions import pg_version
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

APP_LANE = ("app", 0)


@pytest.fixture(scope="module")
def pg(template_pgdata: Path) -> Iterator[Instance]:
    with running_postgres(template_pgdata) as (inst, _):
        sql(inst, "CREATE TABLE public.pipeline_t (v int)", "app")
        sql(inst, "GRANT INSERT, SELECT ON public.pipeline_t TO cnpg_metrics_exporter", "app")
        yield inst


def gauge(name: str, sql_text: str) -> str:
    return f"{name}:\n  query: {sql_text}\n  metrics: [{{v: {{usage: GAUGE}}}}]\n"


MIXED = (
    gauge("good1", "SELECT 1 AS v")
    + gauge("divides", "SELECT 1/0 AS v")
    + gauge("good2", "SELECT 2 AS v")
    + gauge("typo", "SELEC 3 AS v")
    + gauge("good3", "SELECT 3 AS v")
)


async def update(
    runner: QueryRunner, found: dict[str, queries.Query], timeout: float = 10.0
) -> Results:
    target = Target(pg_version(150000), True, "app", ["app", "postgres"])
    deadline = asyncio.get_running_loop().time() + timeout
    return await runner.update(found, target, deadline)


def errors_of(results: Results) -> set[str]:
    return {error.split(" ")[0] for error in results.errors}


@pytest.mark.parametrize("trusted", [True, False])
async def test_a_failing_query_fails_alone(pg: Instance, trusted: bool) -> None:
    """Ours (trusted) or custom: the queries around a failing one in the same pipeline
    give their metrics, each failure is reported for its own query only, and the
    connection (its session confirmed) is kept."""
    found = queries.load_yaml(MIXED, "test", trusted=trusted)
    runner = QueryRunner(Connections(tcp_connector(pg), execution.SESSION))
    try:
        for _ in range(2):  # the second time, the statements are already prepared
            results = await update(runner, found)
            assert sorted(results.families) == ["cnpg_good1_v", "cnpg_good2_v", "cnpg_good3_v"]
            assert errors_of(results) == {"divides", "typo"}
            assert any("division by zero" in error for error in results.errors)
            assert any("syntax error" in error for error in results.errors)
            first = runner.connections.current(APP_LANE)
            assert first is not None
            assert runner.connections.clean[APP_LANE]
        assert runner.connections.current(APP_LANE) is first
        # They ran in one pipeline: it prepared the statements that parse.
        prepared = set(runner.connections.prepared[APP_LANE].names)
        assert prepared == {
            b"SELECT 1 AS v",
            b"SELECT 1/0 AS v",
            b"SELECT 2 AS v",
            b"SELECT 3 AS v",
        }
    finally:
        await runner.connections.close()


async def scrape(collector: Collector) -> Exposition:
    return parse((await collector.scrape()).decode())


def custom_collector(pg: Instance, tmp_path: Path, text: str) -> Collector:
    path = tmp_path / "queries.yaml"
    path.write_text(text)
    settings = write_settings(
        pg,
        tmp_path / "cluster.yaml",
        monitoring={"disableDefaultQueries": True, "metricsQueriesTTL": "0"},
        files=[path],
    )
    return Collector(settings, primary_state(), lambda: None, tcp_connector(pg))


LOOSENS = (
    "loosens:\n"
    "  query: >\n"
    "    SELECT set_config('default_transaction_read_only', 'off', false) AS a,\n"
    "           set_config('search_path', 'public', false) AS b, 1 AS v\n"
    "  metrics: [{a: {usage: LABEL}}, {b: {usage: LABEL}}, {v: {usage: GAUGE}}]\n"
    + gauge(
        "writes", "WITH t AS (INSERT INTO public.pipeline_t VALUES (1) RETURNING v) SELECT v FROM t"
    )
    + "session:\n"
    "  query: >\n"
    "    SELECT current_setting('search_path') AS path,\n"
    "           current_setting('transaction_read_only') AS ro, 1 AS v\n"
    "  metrics: [{path: {usage: LABEL}}, {ro: {usage: LABEL}}, {v: {usage: GAUGE}}]\n"
)


async def test_a_custom_query_cannot_loosen_the_next_one(pg: Instance, tmp_path: Path) -> None:
    """A custom query that makes the session read-write with another search_path: the
    custom queries after it in the same pipeline run read-only on SESSION's search_path,
    and the session is SESSION again at the end of the pipeline."""
    collector = custom_collector(pg, tmp_path, LOOSENS)
    try:
        for _ in range(2):
            e = await scrape(collector)
            assert e.value("cnpg_loosens_v", a="off", b="public") == 1
            assert e.value("cnpg_session_v", path=execution.SEARCH_PATH, ro="on") == 1
            errors = [dict(k)["errorUserQueries"] for k in e.series("cnpg_errors_total")]
            assert [error.split(" ")[0] for error in errors] == ["writes"]
            assert "read-only transaction" in errors[0]
            conn = collector.connections.current(APP_LANE)
            assert conn is not None and execution.confirmed(conn) is True
            assert collector.connections.clean[APP_LANE]
    finally:
        await collector.close()
    assert sql(pg, "SELECT count(*) FROM public.pipeline_t", "app") == [(0,)]


ABORTS = (
    gauge("opens", "BEGIN")
    + gauge("fails", "SELECT 1/0 AS v")
    + gauge(
        "writes", "WITH t AS (INSERT INTO public.pipeline_t VALUES (2) RETURNING v) SELECT v FROM t"
    )
)


async def test_a_query_does_not_run_when_the_session_cannot_be_restored(
    pg: Instance, tmp_path: Path
) -> None:
    """A custom query opens a transaction and the next one aborts it: restoring SESSION
    then fails, so the query after it does not run and the connection is replaced. (The
    first scrape runs them in the file's order; later ones by their last durations.)"""
    collector = custom_collector(pg, tmp_path, ABORTS)
    try:
        for expected in ("current transaction is aborted", ""):
            e = await scrape(collector)
            errors = {dict(k)["errorUserQueries"] for k in e.series("cnpg_errors_total")}
            writes = [error for error in errors if error.startswith("writes ")]
            assert writes and expected in writes[0]
            assert e.value("cnpg_collector_up", cluster="metrics-test") == 1
            assert collector.connections.current(APP_LANE) is None
    finally:
        await collector.close()
    assert sql(pg, "SELECT count(*) FROM public.pipeline_t", "app") == [(0,)]


DEALLOCATES = gauge("forgets", "DEALLOCATE ALL") + gauge("after", "SELECT 4 AS v")


async def test_statements_that_are_gone_are_prepared_again(pg: Instance, tmp_path: Path) -> None:
    """A custom DEALLOCATE ALL removes the pipeline's prepared statements: the queries
    still give their metrics on the following scrapes."""
    found = queries.load_yaml(DEALLOCATES, "test")
    runner = QueryRunner(Connections(tcp_connector(pg), execution.SESSION))
    try:
        for _ in range(4):
            results = await update(runner, found)
            assert sorted(results.families) == ["cnpg_after_v"]
            assert errors_of(results) == {"forgets"}  # no row: a column mismatch
    finally:
        await runner.connections.close()


async def test_an_interrupted_pipeline_drops_its_connection(pg: Instance) -> None:
    """The deadline passes while the pipeline waits for a query: what came before is
    kept, the query is reported, the connection is dropped, and the next update works."""
    text = gauge("quick", "SELECT 1 AS v") + gauge("stuck", "SELECT 1 AS v FROM pg_sleep(5)")
    found = queries.load_yaml(text, "test", trusted=True)
    runner = QueryRunner(Connections(tcp_connector(pg), execution.SESSION))
    try:
        results = await update(runner, found, timeout=0.5)
        assert "cnpg_quick_v" in results.families
        assert any("deadline" in error for error in results.errors)
        assert runner.connections.current(APP_LANE) is None
        again = await update(runner, {"quick": found["quick"]})
        assert sorted(again.families) == ["cnpg_quick_v"] and not again.errors
    finally:
        await runner.connections.close()


PREDICATED = (
    LOOSENS + "checked:\n"
    "  predicate_query: >\n"
    "    SELECT current_setting('transaction_read_only')::bool\n"
    "       AND current_setting('search_path') = 'pg_catalog, public, pg_temp'\n"
    "  query: SELECT 1 AS v\n"
    "  metrics: [{v: {usage: GAUGE}}]\n"
    "broken:\n"
    "  predicate_query: SELECT 1/0 = 1\n"
    "  query: SELECT 1 AS v\n"
    "  metrics: [{v: {usage: GAUGE}}]\n"
)


async def test_predicates_run_read_only_after_a_custom_query(pg: Instance, tmp_path: Path) -> None:
    """After custom queries that loosened the session, a predicate and its query run in a
    read-only transaction on SESSION's search_path; a predicate that fails is reported and
    its transaction is ended, so the connection stays."""
    collector = custom_collector(pg, tmp_path, PREDICATED)
    try:
        for _ in range(2):
            e = await scrape(collector)
            assert e.value("cnpg_checked_v") == 1
            assert e.get("cnpg_broken_v") is None
            errors = {
                dict(k)["errorUserQueries"].split(" ")[0] for k in e.series("cnpg_errors_total")
            }
            assert errors == {"writes", "broken"}
            conn = collector.connections.current(APP_LANE)
            assert conn is not None
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        await collector.close()


async def test_the_server_lists_pg_wal_as_the_scan_does(pg: Instance) -> None:
    """The built-in statement's round trip also lists pg_wal (PostgreSQL 12+): the same
    figures as the directory scan it replaces while the server answers. (The archiver
    may move a file between the two reads: compare until they agree.)"""
    sql(pg, "SELECT pg_switch_wal()")
    connections = Connections(tcp_connector(pg), execution.SESSION)
    try:
        conn = await connections.get(BUILTIN_LANE)
        for _ in range(20):
            facts = await builtin.fetch(conn, connections.prepared[BUILTIN_LANE])
            scanned = archive.scan(pg.pgdata)
            assert facts.wal_directory is not None
            listed = archive.from_row(facts.wal_directory)
            if listed.oldest_ready is not None and scanned.oldest_ready is not None:
                assert listed.oldest_ready == pytest.approx(scanned.oldest_ready, abs=1)
                listed = dataclasses.replace(listed, oldest_ready=scanned.oldest_ready)
            if listed == scanned:
                break
        assert listed == scanned
        assert scanned.segments >= 1 and scanned.done >= 1
    finally:
        await connections.close()
