"""Turns the rows of the custom/default queries into metric families (no I/O here).

Usages: LABEL and DISCARD columns give no metric; COUNTER and GAUGE take numbers (NULL
is NaN); MAPPEDMETRIC maps text through ``metric_mapping``; DURATION reads a Go duration
or an interval as milliseconds; HISTOGRAM reads the arrays of bounds and counts with the
``_sum`` and ``_count`` columns. A value that cannot be converted is skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from instance_manager import log
from instance_manager.metrics.exposition import (
    Family,
    Kind,
    Labels,
    escape_label,
    histogram_samples,
)
from instance_manager.metrics.queries import Column, Query, Usage
from instance_manager.metrics.versions import parse_go_duration

_logger = log.get("metrics")
NAN = math.nan
_KINDS: dict[Usage, Kind] = {Usage.COUNTER: "counter", Usage.HISTOGRAM: "histogram"}


class ColumnMismatch(Exception):
    """The query returned another number of columns than its metrics describe."""


@dataclass
class Results:
    """Families built by one update of the query collector, and its errors."""

    families: dict[str, Family] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # metric -> query that made it
    errors: list[str] = field(default_factory=list)  # cnpg_errors_total label values

    def error(self, label: str) -> None:
        self.errors.append(" ".join(label.split())[:300])

    def family(self, column: Column, query: Query) -> Family | None:
        owner = self.owners.setdefault(column.metric, query.name)
        if owner != query.name:
            return None
        found = self.families.get(column.metric)
        if found is None:
            kind = _KINDS.get(column.usage, "gauge")
            found = self.families[column.metric] = Family(column.metric, column.help, kind)
        return found


def to_float(value: Any) -> float | None:
    """A column value as a sample value; None when it cannot be one."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int or kind is Decimal:
        return float(value)
    if kind is str:
        try:
            return float(value)
        except ValueError:
            return None
    if value is None:
        return NAN
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str | bytes):
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return None


def to_label(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def duration_ms(value: Any) -> float | None:
    """DURATION: a Go duration text ("1m30s") or an interval, in milliseconds."""
    if isinstance(value, timedelta):
        return value.total_seconds() * 1000.0
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or value == "-1":
        return None
    try:
        return parse_go_duration(value) * 1000.0
    except ValueError:
        return None


def _converter(column: Column) -> Callable[[Any], float | None]:
    if column.usage is Usage.MAPPEDMETRIC:
        mapping = column.mapping
        return lambda raw: mapping.get(raw) if isinstance(raw, str) else None
    if column.usage is Usage.DURATION:
        return duration_ms
    return to_float


def _histogram(column: Column, row: dict[str, Any]) -> tuple[dict[float, float], float, float]:
    bounds = row.get(column.column)
    counts = row.get(column.column + "_bucket")
    if not isinstance(bounds, list) or not isinstance(counts, list):
        raise ValueError(f"histogram {column.column}: expects arrays of bounds and counts")
    buckets = {float(b): float(c) for b, c in zip(bounds, counts, strict=False)}
    total, count = (
        to_float(row.get(column.column + "_sum")),
        to_float(row.get(column.column + "_count")),
    )
    if total is None or count is None:
        raise ValueError(f"histogram {column.column}: _sum and _count must be numbers")
    return buckets, total, count


def _add_histogram(family: Family, column: Column, labels: Labels, row: dict[str, Any]) -> int:
    """Add one row's histogram; 1 if it could not be read."""
    try:
        histogram_samples(family, labels, *_histogram(column, row))
    except (TypeError, ValueError):
        return 1
    return 0


def _label_texts(label_at: list[tuple[int, str]], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Each row's label text (``{a="x",b="y"}``, as labels_text makes it)."""
    if not label_at:
        return [""] * len(rows)
    if len(label_at) == 1:
        ((at, name),) = label_at
        head = "{" + name + '="'
        return [head + escape_label(_label(row[at])) + '"}' for row in rows]
    heads = [(i, f'{name}="') for i, name in label_at]
    return [
        "{" + ",".join([head + escape_label(_label(row[i])) + '"' for i, head in heads]) + "}"
        for row in rows
    ]


def _label(value: Any) -> str:
    return value if type(value) is str else to_label(value)


def add_rows(
    query: Query, names: Sequence[str], rows: Sequence[Sequence[Any]], out: Results
) -> None:
    """Turn result rows into samples; a value that cannot be converted is skipped."""
    if len(names) != len(query.columns):
        raise ColumnMismatch(
            f"the query returned {len(names)} columns, its metrics describe {len(query.columns)}"
        )
    plan = [(i, query.columns.get(n)) for i, n in enumerate(names)]
    label_at = [(i, c.column) for i, c in plan if c is not None and c.usage is Usage.LABEL]
    simple, histograms, clashes = [], [], []
    for i, column in plan:
        if column is None or not column.metric:
            continue
        family = out.family(column, query)
        if family is None:
            clashes.append(column.metric)
        elif column.usage is Usage.HISTOGRAM:
            histograms.append((column, family))
        else:
            simple.append((i, _converter(column), family))
    texts = _label_texts(label_at, rows)
    skipped = 0
    for i, convert, family in simple:
        skipped += family.add_column(texts, [convert(row[i]) for row in rows])
    for column, family in histograms:
        for row in rows:
            labels = tuple([(name, to_label(row[i])) for i, name in label_at])
            skipped += _add_histogram(family, column, labels, dict(zip(names, row, strict=True)))
    if skipped:
        log.event(_logger, "metrics values skipped", logging.DEBUG, query=query.name, count=skipped)
    if clashes:
        out.error(f"{query.name}: {clashes[0]} is already defined by {out.owners[clashes[0]]}")
