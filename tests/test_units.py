"""Small pure functions: the pidfile parser, Kubernetes quantities (the shutdown plan is
tested in test_shutdown_budget.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from instance_manager.cluster_model import parse_quantity
from instance_manager.postgres import pidfile

# --- pidfile.read --------------------------------------------------------------------------

# What PostgreSQL 15 writes: pid, datadir, start time, port, socket dir, listen address,
# shared memory key, status (padded with spaces).
PIDFILE_LINES = [
    "4242",
    "/var/lib/postgresql/data/pgdata",
    "1717171717",
    "5432",
    "/controller/run",
    "*",
    "  1234567         7",
    "ready   ",
]


def write_pidfile(pgdata: Path, lines: list[str] | str) -> Path:
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    (pgdata / pidfile.PIDFILE).write_text(text)
    return pgdata


def test_pidfile_read_full(tmp_path: Path) -> None:
    write_pidfile(tmp_path, PIDFILE_LINES)
    assert pidfile.read(tmp_path) == pidfile.PidFile(
        pid=4242,
        data_dir="/var/lib/postgresql/data/pgdata",
        port=5432,
        socket_dir="/controller/run",
        status=pidfile.STATUS_READY,
    )


def test_pidfile_read_while_starting(tmp_path: Path) -> None:
    # Before the status line is added, and with a negative PID (single-user backend).
    write_pidfile(tmp_path, ["-4242", *PIDFILE_LINES[1:3], "", *PIDFILE_LINES[4:7]])
    result = pidfile.read(tmp_path)
    assert result is not None
    assert (result.pid, result.port, result.status) == (4242, None, "")


def test_pidfile_read_missing(tmp_path: Path) -> None:
    assert pidfile.read(tmp_path) is None


@pytest.mark.parametrize("garbage", ["", "\n", "not a pid\n", "12ab\n/data\n", "\x00\x00\n"])
def test_pidfile_read_garbage(tmp_path: Path, garbage: str) -> None:
    write_pidfile(tmp_path, garbage)
    with pytest.raises(ValueError, match="first line is not a PID"):
        pidfile.read(tmp_path)


# --- parse_quantity ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "size"),
    [
        ("16Mi", 16 * 1024 * 1024),
        ("1G", 1_000_000_000),
        (1024, 1024),
        (0, 0),
        ("1.5Ki", 1536),
        ("1048576", 1_048_576),
        ("1k", 1000),
        ("2K", 2000),
        ("3Gi", 3 * 1024**3),
        ("1Ti", 1024**4),
        ("1E", 10**18),
        (" 16Mi ", 16 * 1024 * 1024),
    ],
)
def test_parse_quantity(quantity: str | int, size: int) -> None:
    assert parse_quantity(quantity) == size


@pytest.mark.parametrize(
    "bad", ["", "Mi", "abc", "16Xi", "16mi", "-1Mi", "1.2.3", "16 MiB", "0x10", -1]
)
def test_parse_quantity_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)
