"""JSON log lines on stdout, in CloudNativePG's shape.

Every line is one JSON object: ``level``, ``ts`` (epoch seconds, float), ``logger``,
``msg``, ``logging_pod`` and any extra fields passed with ``extra={"fields": {...}}``
or through :func:`event`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from instance_manager.errors import describe

_POD_NAME = ""
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one CNPG-style JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": _LEVELS.get(record.levelno, "info"),
            "ts": record.created,
            "logger": record.name,
            "msg": record.getMessage(),
            "logging_pod": _POD_NAME,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            # A group's repr counts its exceptions; what failed is inside it.
            line["error"] = describe(exc) if isinstance(exc, BaseExceptionGroup) else repr(exc)
        return json.dumps(line, default=str, separators=(",", ":"))


def setup(pod_name: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every logger to one JSON handler on stdout."""
    global _POD_NAME
    _POD_NAME = pod_name
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiohttp.access", "asyncio", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get(name: str = "instance-manager") -> logging.Logger:
    return logging.getLogger(name)


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``msg`` with structured fields."""
    logger.log(level, msg, extra={"fields": fields})


def emit_raw(line: dict[str, Any], stream: TextIO | None = None) -> None:
    """Write an already-shaped record (used by the log pipes), adding the pod name."""
    line.setdefault("ts", time.time())
    line.setdefault("logging_pod", _POD_NAME)
    out = stream or sys.stdout
    out.write(json.dumps(line, default=str, separators=(",", ":")) + "\n")
    out.flush()
