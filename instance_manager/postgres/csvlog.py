"""PostgreSQL's csvlog records: joining their lines, naming their fields, the JSON line.

A record whose quoted field holds a newline spans several lines (``CsvRecordAssembler``);
a complete one is split into its fields, named after PostgreSQL's csvlog columns (23, 24 or
26 of them, by version) and turned into our JSON line, with a pgaudit message
(``AUDIT: <csv>``) parsed into its own fields (``format_csv_record``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from typing import Any

# Upper bound for one CSV record, so that a writer that never sends a newline (or an
# unbalanced quote) cannot make us buffer without limit.
MAX_RECORD = 64 << 20

CSV_FIELDS = (
    "log_time",
    "user_name",
    "database_name",
    "process_id",
    "connection_from",
    "session_id",
    "session_line_num",
    "command_tag",
    "session_start_time",
    "virtual_transaction_id",
    "transaction_id",
    "error_severity",
    "sql_state_code",
    "message",
    "detail",
    "hint",
    "internal_query",
    "internal_query_pos",
    "context",
    "query",
    "query_pos",
    "location",
    "application_name",
    "backend_type",
    "leader_pid",
    "query_id",
)
# PostgreSQL 12 writes 23 fields, 13 adds backend_type, 14 adds leader_pid and query_id.
CSV_FIELD_COUNTS = frozenset({23, 24, 26})
SEVERITY_INDEX = CSV_FIELDS.index("error_severity")
MESSAGE_INDEX = CSV_FIELDS.index("message")

AUDIT_PREFIX = "AUDIT: "
AUDIT_FIELDS = (
    "audit_type",
    "statement_id",
    "substatement_id",
    "class",
    "command",
    "object_type",
    "object_name",
    "statement",
    "parameter",
    "rows",  # only with pgaudit.log_rows=on
)

_SEVERITY_LEVELS = {
    "LOG": "info",
    "INFO": "info",
    "NOTICE": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "FATAL": "error",
    "PANIC": "error",
}


def severity_level(severity: str) -> str:
    """Map a PostgreSQL ``error_severity`` to our log level (unknown ones are "info")."""
    if severity.startswith("DEBUG"):
        return "debug"
    return _SEVERITY_LEVELS.get(severity, "info")


def parse_csv_fields(text: str) -> list[str]:
    """Split one complete CSV record (possibly spanning lines) into its fields."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if len(rows) != 1:
        raise ValueError(f"expected one CSV record, got {len(rows)}")
    return rows[0]


def record_from_fields(fields: Sequence[str]) -> dict[str, Any]:
    """Name the fields of a csvlog record, omitting empty ones."""
    if len(fields) not in CSV_FIELD_COUNTS:
        raise ValueError(f"unexpected number of CSV log fields: {len(fields)}")
    names = CSV_FIELDS[: len(fields)]
    return {name: value for name, value in zip(names, fields, strict=True) if value}


def parse_pgaudit(message: str) -> dict[str, str] | None:
    """Return the pgaudit fields if ``message`` is an ``AUDIT: <csv>`` line, else None."""
    if not message.startswith(AUDIT_PREFIX):
        return None
    try:
        rows = list(csv.reader(io.StringIO(message[len(AUDIT_PREFIX) :], newline="")))
    except csv.Error:
        return None
    if len(rows) != 1 or not len(AUDIT_FIELDS) - 1 <= len(rows[0]) <= len(AUDIT_FIELDS):
        return None
    row = rows[0]
    return dict(zip(AUDIT_FIELDS[: len(row)], row, strict=True))


def format_csv_record(fields: Sequence[str]) -> dict[str, Any]:
    """Build the JSON line for one csvlog record; raises ValueError on a bad field count."""
    record = record_from_fields(fields)
    logger = "postgres"
    audit = parse_pgaudit(record.get("message", ""))
    if audit is not None:
        logger = "pgaudit"
        del record["message"]
        record["audit"] = audit
    return {
        "level": severity_level(record.get("error_severity", "")),
        "ts": time.time(),
        "logger": logger,
        "msg": "record",
        "record": record,
    }


class CsvRecordAssembler:
    """Joins the lines of one CSV record.

    A newline inside a quoted field splits a record over several lines. PostgreSQL
    escapes a quote inside a field as ``""``, so a record is complete exactly when the
    number of ``"`` characters seen so far is even.
    """

    def __init__(self, max_size: int = MAX_RECORD) -> None:
        self._max_size = max_size
        self._parts: list[str] = []
        self._quotes = 0
        self._size = 0

    def feed(self, line: str) -> str | None:
        """Add one line (without its newline); return the record once it is complete.

        Raises ValueError, and forgets the partial record, if it grows beyond the limit.
        """
        self._parts.append(line)
        self._quotes += line.count('"')
        self._size += len(line) + 1
        if self._size > self._max_size:
            self.reset()
            raise ValueError(f"CSV log record longer than {self._max_size} characters")
        if self._quotes % 2:
            return None
        text = "\n".join(self._parts)
        self.reset()
        return text

    def reset(self) -> None:
        self._parts.clear()
        self._quotes = 0
        self._size = 0
