"""Query execution against real PostgreSQL 15: sessions queries cannot loosen, caching
and metricsQueriesTTL, one collection shared by concurrent scrapes, the scrape budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instance_manager.metrics.collector import Collector
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


@pytest.fixture(scope="module")
def pg(template_pgdata: Path) -> Iterator[Instance]:
    with running_postgres(template_pgdata) as (inst, _):
        sql(inst, "CREATE TABLE public.metrics_t (v int)", "app")
        sql(inst, "GRANT INSERT, SELECT ON public.metrics_t TO cnpg_metrics_exporter", "app")
        yield inst


async def scrape_once(pg: Instance, tmp_path: Path, queries: str) -> Exposition:
    path = tmp_path / "queries.yaml"
    path.write_text(queries)
    settings = write_settings(
        pg, tmp_path / "cluster.yaml", monitoring={"disableDefaultQueries": True}, files=[path]
    )
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg))
    try:
        return parse((await collector.scrape()).decode())
    finally:
        await collector.close()


async def test_read_only_transaction_refuses_writes(pg: Instance, tmp_path: Path) -> None:
    queries = """
sneaky:
  query: SELECT set_config('search_path', 'public', false) AS p, 1 AS v
  metrics: [{p: {usage: LABEL}}, {v: {usage: GAUGE}}]
after:
  query: SELECT current_setting('search_path') AS p, 1 AS v
  metrics: [{p: {usage: LABEL}}, {v: {usage: GAUGE}}]
"""
    e = await scrape_once(pg, tmp_path, queries)
    assert e.value("cnpg_after_v", p="pg_catalog, public, pg_temp") == 1


CLOCK = """
clock:
  query: SELECT extract(epoch FROM clock_timestamp()) AS now
  metrics: [{now: {usage: GAUGE}}]
"""


async def scrapes(pg: Instance, tmp_path: Path, count: int, **monitoring: Any) -> list[Exposition]:
    path = tmp_path / "clock.yaml"
    path.write_text(CLOCK)
    settings = write_settings(
        pg,
        tmp_path / "cluster.yaml",
        monitoring={"disableDefaultQueries": True, **monitoring},
        files=[path],
    )
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg))
    try:
        found = []
        for _ in range(count):
            found.append(parse((await collector.scrape()).decode()))
        return found
    finally:
        await collector.close()


async def test_results_are_cached_for_the_ttl(pg: Instance, tmp_path: Path) -> None:
    first, second, third = await scrapes(pg, tmp_path, 3)  # default TTL: 30 s
    assert first.value("cnpg_clock_now") == second.value("cnpg_clock_now")
    assert third.value("cnpg_clock_now") == first.value("cnpg_clock_now")
    assert (first.value("cnpg_cache_miss"), first.value("cnpg_cache_hits")) == (1, 0)
    assert (third.value("cnpg_cache_miss"), third.value("cnpg_cache_hits")) == (0, 2)
    assert third.value("cnpg_last_update_timestamp") == first.value("cnpg_last_update_timestamp")
    # The built-in collector is not cached.
    assert third.value("cnpg_collector_collections_total") == 3


async def test_ttl_zero_disables_the_cache(pg: Instance, tmp_path: Path) -> None:
    first, second = await scrapes(pg, tmp_path, 2, metricsQueriesTTL="0s")
    assert first.value("cnpg_clock_now") < second.value("cnpg_clock_now")
    assert second.value("cnpg_cache_miss") == 1


async def test_short_ttl_expires(pg: Instance, tmp_path: Path) -> None:
    path = tmp_path / "clock.yaml"
    path.write_text(CLOCK)
    settings = write_settings(
        pg,
        tmp_path / "cluster.yaml",
        monitoring={"disableDefaultQueries": True, "metricsQueriesTTL": "300ms"},
        files=[path],
    )
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg))
    try:
        first = parse((await collector.scrape()).decode()).value("cnpg_clock_now")
        cached = parse((await collector.scrape()).decode()).value("cnpg_clock_now")
        await asyncio.sleep(0.4)  # the thing under test: 300 ms pass and the TTL expires
        fresh = parse((await collector.scrape()).decode()).value("cnpg_clock_now")
    finally:
        await collector.close()
    assert first == cached < fresh


SLOW = """
slow:
  query: SELECT 1 AS v FROM pg_sleep(0.5)
  metrics: [{v: {usage: GAUGE}}]
"""


async def test_concurrent_scrapes_share_one_collection(pg: Instance, tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW)
    settings = write_settings(
        pg,
        tmp_path / "cluster.yaml",
        monitoring={"disableDefaultQueries": True, "metricsQueriesTTL": "0"},
        files=[path],
    )
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg))
    try:
        started = time.monotonic()
        bodies = await asyncio.gather(*(collector.scrape() for _ in range(8)))
        elapsed = time.monotonic() - started
    finally:
        await collector.close()
    assert len(set(bodies)) == 1
    assert parse(bodies[0].decode()).value("cnpg_collector_collections_total") == 1
    assert elapsed < 1.5


async def test_a_scrape_is_bounded_by_its_budget(pg: Instance, tmp_path: Path) -> None:
    queries = """
stuck:
  query: SELECT 1 AS v FROM pg_sleep(5)
  metrics: [{v: {usage: GAUGE}}]
quick:
  target_databases: [postgres]
  query: SELECT 1 AS v
  metrics: [{v: {usage: GAUGE}}]
"""
    path = tmp_path / "stuck.yaml"
    path.write_text(queries)
    settings = write_settings(
        pg, tmp_path / "cluster.yaml", monitoring={"disableDefaultQueries": True}, files=[path]
    )
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg), budget=1.0)
    try:
        started = time.monotonic()
        e = parse((await collector.scrape()).decode())
        elapsed = time.monotonic() - started
        again = parse((await collector.scrape()).decode())  # the connection was replaced
    finally:
        await collector.close()
    assert elapsed < 2.0
    assert e.value("cnpg_collector_up", cluster="metrics-test") == 1
    assert e.value("cnpg_quick_v") == 1
    assert e.get("cnpg_stuck_v") is None
    assert any("deadline" in dict(k)["errorUserQueries"] for k in e.series("cnpg_errors_total"))
    assert again.value("cnpg_collector_up", cluster="metrics-test") == 1


GUARDED = r"""
two_statements:
  query: SELECT 1 AS v; SELECT 2 AS v
  metrics: [{v: {usage: GAUGE}}]
flips:
  query: SELECT set_config('standard_conforming_strings', 'off', false) AS s, 1 AS v
  metrics: [{s: {usage: LABEL}}, {v: {usage: GAUGE}}]
read_write:
  query: SET default_transaction_read_only TO off
  metrics: [{v: {usage: GAUGE}}]
other_path:
  query: SET search_path TO public
  metrics: [{v: {usage: GAUGE}}]
forgets:
  query: RESET ALL
  metrics: [{v: {usage: GAUGE}}]
literal:
  query: SELECT 'x\' AS a, ';SELECT 1/0;--' AS b, 1 AS v
  metrics: [{a: {usage: LABEL}}, {b: {usage: LABEL}}, {v: {usage: GAUGE}}]
writes:
  query: WITH t AS (INSERT INTO public.metrics_t VALUES (1) RETURNING v) SELECT v FROM t
  metrics: [{v: {usage: GAUGE}}]
after:
  query: >
    SELECT current_setting('search_path') AS path,
           current_setting('transaction_read_only') AS ro, 1 AS v
  metrics: [{path: {usage: LABEL}}, {ro: {usage: LABEL}}, {v: {usage: GAUGE}}]
"""


async def test_queries_cannot_loosen_the_session(pg: Instance, tmp_path: Path) -> None:
    """Queries run alone in read-only sessions: a text holding two statements never runs,
    and a query changing the session (read-write, search_path, string syntax) does not
    change how the next ones run, whatever the order."""
    path = tmp_path / "guarded.yaml"
    path.write_text(GUARDED)
    settings = write_settings(
        pg,
        tmp_path / "cluster.yaml",
        monitoring={"disableDefaultQueries": True, "metricsQueriesTTL": "0"},
        files=[path],
    )
    collector = Collector(settings, primary_state(), lambda: None, tcp_connector(pg))
    try:
        for _ in range(4):
            e = parse((await collector.scrape()).decode())
            assert e.value("cnpg_literal_v", a="x\\", b=";SELECT 1/0;--") == 1
            assert e.value("cnpg_after_v", path="pg_catalog, public, pg_temp", ro="on") == 1
            errors = [dict(k)["errorUserQueries"] for k in e.series("cnpg_errors_total")]
            # The SET/RESET queries return no row: a column mismatch, counted.
            assert {error.split(" ")[0] for error in errors} == {
                "two_statements",
                "writes",
                "read_write",
                "other_path",
                "forgets",
            }
            assert any("read-only transaction" in error for error in errors)
    finally:
        await collector.close()
    assert sql(pg, "SELECT count(*) FROM public.metrics_t", "app") == [(0,)]
