"""Standalone cluster: a standby's readiness with the streaming strategy and maximumLag."""

from __future__ import annotations

import subprocess

import pytest

from tests.cluster_kit import Trio
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import http_get, wait_for
from tests.test_cluster_switchover import started

pytestmark = pytest.mark.slow


def test_streaming_readiness_follows_the_replay_lag(three_instances: Trio) -> None:
    trio = three_instances
    trio.spec = {
        **trio.spec,
        "probes": {"readiness": {"type": "streaming", "maximumLag": "1Mi"}},
    }
    trio.write_document()
    started(trio)
    standby = trio.members["pg-2"]
    assert http_get(standby.url("/readyz"))[0] == 200
    trio.sql("pg-2", "SELECT pg_wal_replay_pause()")
    trio.sql(
        "pg-1",
        "CREATE TABLE lag AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )

    def answer() -> tuple[int, str]:
        return http_get(standby.url("/readyz"))

    _, body = wait_for(lambda: (a := answer())[0] == 500 and a, 30, "/readyz to fail")
    assert "streaming replica lagging" in body
    other = trio.members["pg-3"]  # replays as it receives: it catches up
    wait_for(lambda: http_get(other.url("/readyz"))[0] == 200, 30, "pg-3 ready")
    assert answer()[0] == 500
    # The switchover command refuses the lagging standby and leaves the document alone.
    before = trio.document.read_bytes()
    out = subprocess.run(trio.cli("switchover", "--to", "pg-2"), capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pg-2 is not a ready streaming standby" in out.stderr
    assert trio.document.read_bytes() == before
    trio.sql("pg-2", "SELECT pg_wal_replay_resume()")
    wait_for(lambda: answer()[0] == 200, 30, "/readyz to pass again")
