"""``instance-manager status`` (status_cli.py) against a served ``/pg/status``."""

from __future__ import annotations

import asyncio
import io
import json

from instance_manager import status_cli
from tests.api_helpers import Primary, certs, primary, serve_api
from tests.daemon import free_port

__all__ = ["certs", "primary"]  # fixtures


async def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(status_cli.main, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_json_and_summary(primary: Primary) -> None:
    async with serve_api(primary.settings()) as api:
        code, out, _ = await run("-o", "json", "--port", str(api.status_port))
        assert code == 0
        status = json.loads(out)
        assert status["isPrimary"] is True and status["sessionID"] == api.state.session_id
        code, out, _ = await run("--port", str(api.status_port))
    assert code == 0
    assert "Instance:            test-1 (primary)" in out
    assert f"System ID:           {status['systemID']}" in out
    assert "Pending restart:     no" in out
    assert "WAL archiving:" in out


async def test_tls_and_failures(primary: Primary) -> None:
    async with serve_api(primary.settings(), primary.certs) as api:
        code, out, _ = await run("--tls", "--port", str(api.status_port))
        assert code == 0 and "(primary)" in out
    async with serve_api(primary.settings(port=1)) as api:  # PostgreSQL unreachable: 500
        code, _, err = await run("--port", str(api.status_port))
        assert code == 1 and "HTTP 500" in err
    code, _, err = await run("--port", str(free_port()))
    assert code == 1 and "cannot reach" in err
    assert (await run("--output", "yaml"))[0] == 2


def test_standby_summary() -> None:
    lines = status_cli.summary(
        {
            "isPrimary": False,
            "pod": {"metadata": {"name": "test-2"}},
            "receivedLsn": "0/5000000",
            "replayLsn": "0/4000000",
            "isWalReceiverActive": True,
            "pendingRestart": True,
            "pendingRestartForDecrease": True,
            "lastFailedWAL": "000000010000000000000004",
            "lastFailedWALTime": "2026-01-01T00:00:00Z",
            "mightBeUnavailable": True,
        }
    )
    text = "\n".join(lines)
    assert "test-2 (standby)" in text and "WAL receiver:        active" in text
    assert "Pending restart:     yes (a setting decreases)" in text
    assert "last failed:       000000010000000000000004" in text
    assert "restarting or stopping" in text
