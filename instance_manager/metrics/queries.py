"""CloudNativePG's custom-query YAML, parsed into typed queries.

A file is a map ``<queryName>: {query, metrics, predicate_query, primary, runonserver,
target_databases, name, cache_seconds}``. Every column of ``metrics`` maps to a metric
``cnpg_<name or queryName>_<column or column.name>`` (``..._milliseconds`` for DURATION);
LABEL columns become labels of every metric of the query. A query that cannot be used (no
SQL, unknown usage, a name Prometheus refuses, a metric another query already defines) is
reported and left out; the others in the file are kept.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instance_manager import log
from instance_manager.metrics.exposition import valid_label, valid_name
from instance_manager.metrics.versions import VersionRange, parse_range

_logger = log.get("metrics")
NAMESPACE = "cnpg"
DEFAULT_QUERIES = "default_queries.yaml"
BUILTIN_SOURCE = "built-in"
DEFAULT_SOURCE = "default"


class Usage(enum.Enum):
    LABEL = "LABEL"
    COUNTER = "COUNTER"
    GAUGE = "GAUGE"
    DISCARD = "DISCARD"
    MAPPEDMETRIC = "MAPPEDMETRIC"
    DURATION = "DURATION"
    HISTOGRAM = "HISTOGRAM"


HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Column:
    column: str  # name of the result column
    usage: Usage
    metric: str  # full metric name; "" for LABEL and DISCARD
    help: str
    mapping: Mapping[str, float] = field(default_factory=dict)  # MAPPEDMETRIC


@dataclass(frozen=True)
class Query:
    name: str  # the key in the file
    sql: str
    columns: Mapping[str, Column]  # by result column, histogram companions included
    labels: tuple[str, ...]
    predicate: str | None = None
    primary: bool = False
    runonserver: VersionRange | None = None
    runonserver_error: str = ""
    target_databases: tuple[str, ...] = ()
    source: str = ""
    # Ours (built-in or default set): known never to change the session's settings.
    trusted: bool = False

    @property
    def metric_names(self) -> set[str]:
        return {c.metric for c in self.columns.values() if c.metric}


class QueryError(ValueError):
    """One query of a file cannot be used."""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise QueryError(f"{what} must be text, got {type(value).__name__}")
    return value


def _usage(descriptor: Mapping[str, Any], column: str) -> Usage:
    raw = descriptor.get("usage")
    try:
        return Usage(str(raw).strip().upper())
    except ValueError:
        raise QueryError(f"column {column!r}: unknown usage {raw!r}") from None


def _mapping(descriptor: Mapping[str, Any], column: str) -> dict[str, float]:
    raw = descriptor.get("metric_mapping", descriptor.get("metrics_mapping")) or {}
    if not isinstance(raw, dict):
        raise QueryError(f"column {column!r}: metric_mapping must be a map of text to number")
    try:
        return {str(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise QueryError(f"column {column!r}: metric_mapping values must be numbers") from None


def _column(column: str, descriptor: Any, namespace: str, query: str) -> list[Column]:
    if not isinstance(descriptor, dict):
        raise QueryError(f"column {column!r}: expected a map with a usage")
    usage = _usage(descriptor, column)
    help_text = str(descriptor.get("description") or f"{query}: {column}")
    if usage in (Usage.LABEL, Usage.DISCARD):
        if usage is Usage.LABEL and not valid_label(column):
            raise QueryError(f"column {column!r}: not a valid Prometheus label name")
        return [Column(column, usage, "", help_text)]
    metric = f"{namespace}_{descriptor.get('name') or column}"
    if usage is Usage.DURATION:
        metric += "_milliseconds"
    if not valid_name(metric):
        raise QueryError(f"column {column!r}: {metric!r} is not a valid metric name")
    mapped = _mapping(descriptor, column) if usage is Usage.MAPPEDMETRIC else {}
    found = [Column(column, usage, metric, help_text, mapped)]
    if usage is Usage.HISTOGRAM:
        found += [Column(column + p, Usage.DISCARD, "", help_text) for p in HISTOGRAM_PARTS]
    return found


def _columns(raw: Any, namespace: str, query: str) -> dict[str, Column]:
    if not isinstance(raw, list) or not raw:
        raise QueryError("metrics must be a non-empty list of {column: {usage: ...}}")
    columns: dict[str, Column] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            raise QueryError("each metrics entry must be a map {column: {usage: ...}}")
        for column, descriptor in entry.items():
            for parsed in _column(str(column), descriptor, namespace, query):
                columns[parsed.column] = parsed
    return columns


def _version_range(raw: Any) -> tuple[VersionRange | None, str]:
    if raw in (None, ""):
        return None, ""
    try:
        return parse_range(str(raw)), ""
    except ValueError as exc:
        return None, str(exc)


def parse_query(name: str, body: Any, source: str, trusted: bool = False) -> Query:
    if not isinstance(body, dict):
        raise QueryError("expected a map with query and metrics")
    sql = _text(body.get("query"), "query").strip()
    if not sql:
        raise QueryError("query is empty")
    namespace = f"{NAMESPACE}_{body.get('name') or name}"
    columns = _columns(body.get("metrics"), namespace, name)
    predicate = _text(body.get("predicate_query") or "", "predicate_query").strip()
    targets = body.get("target_databases") or []
    if not isinstance(targets, list):
        raise QueryError("target_databases must be a list")
    version_range, version_error = _version_range(body.get("runonserver"))
    return Query(
        name=name,
        sql=sql,
        columns=columns,
        labels=tuple(c.column for c in columns.values() if c.usage is Usage.LABEL),
        predicate=predicate or None,
        primary=bool(body.get("primary") or body.get("master")),
        runonserver=version_range,
        runonserver_error=version_error,
        target_databases=tuple(str(t) for t in targets),
        source=source,
        trusted=trusted,
    )


def parse_document(data: Any, source: str, trusted: bool = False) -> dict[str, Query]:
    """The usable queries of one parsed YAML document; the others are logged."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise QueryError(f"{source}: expected a map of query names to queries")
    found: dict[str, Query] = {}
    for name, body in data.items():
        try:
            found[str(name)] = parse_query(str(name), body, source, trusted)
        except QueryError as exc:
            log.event(
                _logger,
                "metrics query ignored",
                logging.WARNING,
                query=str(name),
                source=source,
                error=str(exc),
            )
    return found


def load_yaml(text: str, source: str, trusted: bool = False) -> dict[str, Query]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise QueryError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from exc
    return parse_document(data, source, trusted)


# Built into the exporter (not part of the default set: disableDefaultQueries keeps it).
BUILTIN = {
    "collector": {
        "query": "SELECT pg_catalog.current_database() AS datname, c.relpages AS lo_pages"
        " FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
        " WHERE n.nspname OPERATOR(pg_catalog.=) 'pg_catalog'"
        " AND c.relname OPERATOR(pg_catalog.=) 'pg_largeobject'",
        "target_databases": ["*"],
        "metrics": [
            {"datname": {"usage": "LABEL", "description": "Name of the database"}},
            {
                "lo_pages": {
                    "usage": "GAUGE",
                    "description": "Estimated number of pages in the pg_largeobject table",
                }
            },
        ],
    }
}


def merge(sources: Iterable[dict[str, Query]], reserved: frozenset[str]) -> dict[str, Query]:
    """Later sources override earlier queries of the same name (with a warning, as CNPG).
    A query producing a built-in family's name is left out. Two queries producing the same
    metric are only detected when both run (versions can make them exclusive, as the
    two pg_stat_bgwriter variants of the default set)."""
    merged: dict[str, Query] = {}
    for queries in sources:
        for name, query in queries.items():
            if name in merged:
                log.event(
                    _logger,
                    "Query with the same name already found. Overwriting the existing one.",
                    logging.WARNING,
                    queryName=name,
                )
            merged[name] = query
    usable: dict[str, Query] = {}
    for name, query in merged.items():
        clash = sorted(query.metric_names & reserved)
        if clash:
            log.event(
                _logger,
                "metrics query ignored",
                logging.WARNING,
                query=name,
                source=query.source,
                error=f"{clash[0]} is a built-in metric",
            )
            continue
        usable[name] = query
    return usable


def read_files(paths: Iterable[Path]) -> list[tuple[str, bytes | None]]:
    """Contents of the query files (None: unreadable); run in a worker thread."""
    found: list[tuple[str, bytes | None]] = []
    for path in paths:
        try:
            found.append((str(path), path.read_bytes()))
        except OSError:
            found.append((str(path), None))
    return found


def default_text() -> str:
    from importlib import resources

    return (
        resources.files(__package__ or "instance_manager.metrics")
        .joinpath(DEFAULT_QUERIES)
        .read_text()
    )
