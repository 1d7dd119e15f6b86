"""Metric families and the Prometheus text format (version 0.0.4).

We render the text ourselves instead of through prometheus-client's ``generate_latest``:
that one appends ``_total`` to every counter's name, and CloudNativePG's counters
(``cnpg_pg_stat_database_xact_commit``...) must keep their names for existing dashboards
and alerts. Rendering is also the hot path of a cached scrape, so it stays small.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "histogram", "untyped"]
Labels = tuple[tuple[str, str], ...]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def valid_label(name: str) -> bool:
    return bool(_LABEL.match(name)) and not name.startswith("__")


@dataclass
class Family:
    """One metric family: HELP, TYPE and its samples.

    ``samples`` holds (name suffix, label text, value): the suffix is "" except for the
    ``_bucket``/``_sum``/``_count`` series of a histogram; the label text is ``{a="b"}``
    (or ""), formatted once per result row and shared by the row's metrics.
    """

    name: str
    help: str
    kind: Kind
    samples: list[tuple[str, str, float]] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, labels: Labels, value: float, suffix: str = "") -> bool:
        return self.add_text(labels_text(labels), value, suffix)

    def add_text(self, text: str, value: float, suffix: str = "") -> bool:
        """Add a sample; a repeated (suffix, labels) is refused (Prometheus rejects it)."""
        key = suffix + text if suffix else text
        if key in self._seen:
            return False
        self._seen.add(key)
        self.samples.append((suffix, text, value))
        return True

    def add_column(self, texts: Sequence[str], values: Iterable[float | None]) -> int:
        """Add one sample per (label text, value), as add_text; how many were left out
        (a value of None, a repeated label text)."""
        seen, samples = self._seen, self.samples
        skipped = 0
        for text, value in zip(texts, values, strict=True):
            if value is None or text in seen:
                skipped += 1
            else:
                seen.add(text)
                samples.append(("", text, value))
        return skipped


def gauge(name: str, help_text: str, value: float | None = None, **labels: str) -> Family:
    family = Family(name, help_text, "gauge")
    if value is not None:
        family.add(tuple(labels.items()), value)
    return family


def format_value(value: float) -> str:
    if value.is_integer():  # false for NaN and infinities
        return str(int(value)) if -1e15 < value < 1e15 else repr(value)
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def labels_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join([f'{k}="{escape_label(v)}"' for k, v in labels]) + "}"


@functools.lru_cache(maxsize=4096)
def _header(name: str, help_text: str, kind: str) -> str:
    """A family's HELP and TYPE lines (the same every scrape)."""
    return f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {kind}"


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    value_text = format_value
    for family in families:
        name = family.name
        lines.append(_header(name, family.help, family.kind))
        lines += [f"{name}{suffix}{text} {value_text(v)}" for suffix, text, v in family.samples]
    if not lines:
        return b""
    return ("\n".join(lines) + "\n").encode()


def histogram_samples(
    family: Family, labels: Labels, buckets: dict[float, float], total: float, count: float
) -> None:
    """Add a histogram's cumulative buckets (upper bound -> count), +Inf, sum and count."""
    for bound in sorted(buckets):
        le = format_value(bound)
        family.add((*labels, ("le", le)), buckets[bound], "_bucket")
    family.add((*labels, ("le", "+Inf")), count, "_bucket")
    family.add(labels, total, "_sum")
    family.add(labels, count, "_count")
