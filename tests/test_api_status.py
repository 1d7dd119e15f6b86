"""``/pg/status`` against real PostgreSQL: a daemon-run primary and a streaming standby."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from instance_manager.postgres.sql import Session
from instance_manager.state import InstanceState
from instance_manager.web import status_sql
from instance_manager.web.status import StatusReader
from tests.api_helpers import (
    Primary,
    api_spec,
    certs,
    load_settings,
    operator_status,
    pg,
    primary,
    serve_api,
    start_standby,
    write_cluster,
)
from tests.daemon import Instance, wait_for

__all__ = ["certs", "primary"]  # fixtures

HEX64 = re.compile(r"^[0-9a-f]{64}$")
LSN = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")


async def fetch_status(base: str, client: Any) -> tuple[int, Any]:
    async with client.get(base + "/pg/status") as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text


async def test_primary_status_fields(primary: Primary) -> None:
    conninfo = primary.conninfo()
    pg(conninfo, "SELECT pg_create_physical_replication_slot('keep_me', true)")
    # Something for the archiver; then wait until it caught up, so that nothing more is
    # archived between /pg/status and the query it is compared with.
    switched = pg(conninfo, "SELECT pg_walfile_name(pg_switch_wal())")
    wait_for(
        lambda: pg(conninfo, "SELECT last_archived_wal FROM pg_stat_archiver") == switched,
        30,
        f"{switched} to be archived",
    )
    # Right after a switch the insert position sits on a segment boundary, where the next
    # record (the daemon's own post-start work, say) changes pg_walfile_name(current):
    # write a record so that both readings below name the same segment.
    pg(conninfo, "CREATE TABLE off_the_boundary ()")
    async with serve_api(primary.settings()) as api, api.client(None) as client:
        code, status = await fetch_status(api.base, client)
    assert code == 200, status
    assert status["isPrimary"] is True
    assert status["systemID"] == str(
        pg(conninfo, "SELECT system_identifier FROM pg_control_system()")
    )
    assert LSN.match(status["currentLsn"])
    assert status["currentWAL"] == pg(conninfo, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    assert status["timeLineID"] == 1
    assert status["loadedConfigurationHash"] == pg(
        conninfo, "SELECT current_setting('cnpg.config_sha256')"
    )
    assert status["lastArchivedWAL"] == pg(
        conninfo, "SELECT last_archived_wal FROM pg_stat_archiver"
    )
    assert status["lastArchivedWALTime"].endswith("Z")
    assert status["lastFailedWALTime"] == "-infinity"
    assert status["isArchivingWAL"] is True
    slots = {slot["slotName"]: slot for slot in status["replicationSlotsInfo"]}
    assert slots["keep_me"]["slotType"] == "physical"
    assert slots["keep_me"]["walStatus"] == "reserved"
    assert "active" not in slots["keep_me"]  # false: omitted, as Go's omitempty does
    assert status["pod"] == {
        "metadata": {"name": "test-1", "creationTimestamp": None},
        "spec": {"containers": None},
        "status": {},
    }
    assert HEX64.match(status["executableHash"])
    assert status["instanceArch"] in ("amd64", "arm64")
    assert status["instanceManagerVersion"]
    assert status["sessionID"] == api.state.session_id
    assert status["pendingRestart"] is False
    for absent in ("receivedLsn", "replayLsn", "replicationInfo", "mightBeUnavailableMaskedError"):
        assert absent not in status
    for zero in ("node", "isPodReady", "isPgRewindRunning", "isWalReceiverActive"):
        assert zero in status
    assert list(status) == [n for n, _ in status_sql.FIELDS if n in status]  # Go's order


async def test_streaming_standby_and_replication_info(primary: Primary) -> None:
    standby = start_standby(primary.inst.root / "sb", primary.inst.pg_port, "test-2")
    try:
        wait_for(
            lambda: pg(primary.conninfo(), "SELECT count(*) FROM pg_stat_replication"),
            30,
            "the standby to stream",
        )
        state = InstanceState(postmaster_running=True)
        session = Session(standby.settings())
        reader = StatusReader(standby.settings, state, session)
        values = await reader.read()
        shaped = status_sql.shape(values)
        assert shaped["isPrimary"] is False
        assert shaped["isWalReceiverActive"] is True
        assert LSN.match(shaped["receivedLsn"]) and LSN.match(shaped["replayLsn"])
        assert status_sql.lsn(shaped["receivedLsn"]) >= status_sql.lsn(shaped["replayLsn"])
        assert shaped["replayPaused"] is False
        for primary_only in ("currentLsn", "currentWAL", "replicationSlotsInfo", "readyWalFiles"):
            assert primary_only not in shaped
        with psycopg.connect(standby.conninfo(), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        assert (await reader.read())["replayPaused"] is True
        await session.close()

        async with serve_api(primary.settings()) as api, api.client(None) as client:
            code, status = await fetch_status(api.base, client)
        assert code == 200
        (info,) = status["replicationInfo"]
        assert info["applicationName"] == "test-2"
        assert info["state"] == "streaming"
        assert LSN.match(info["receivedLsn"])  # pg_stat_replication.sent_lsn, as CNPG names it
        assert re.match(r"^\d\d:\d\d:\d\d\.\d{6}$", info["replayLag"])
        assert info["syncState"] == "async" and info["syncPriority"] == "0"
    finally:
        standby.proc.send_signal(signal.SIGINT)
        standby.proc.wait(30)


async def test_pending_restart_for_decrease(primary: Primary) -> None:
    spec = api_spec()
    spec["postgresql"]["parameters"]["max_connections"] = "15"
    spec["primaryUpdateStrategy"] = "supervised"  # else it restarts itself at once
    write_cluster(primary.inst, spec, operator_status(primary.certs))
    primary.daemon.signal(signal.SIGHUP)
    primary.daemon.wait_log("configuration applied; some parameters need a restart")
    async with serve_api(primary.settings()) as api, api.client(None) as client:
        code, status = await fetch_status(api.base, client)
    assert code == 200
    assert status["pendingRestart"] is True
    assert status["pendingRestartForDecrease"] is True


async def test_postgres_down_is_500_unless_we_caused_it(primary: Primary, tmp_path: Path) -> None:
    wrong = primary.settings(port=1)  # nothing listens there
    async with serve_api(wrong) as api, api.client(None) as client:
        code, text = await fetch_status(api.base, client)
        assert code == 500
        assert isinstance(text, str) and text.endswith("\n") and text.strip()
        api.state.might_be_unavailable = True
        code, status = await fetch_status(api.base, client)
    assert code == 200
    assert status["mightBeUnavailable"] is True
    assert status["mightBeUnavailableMaskedError"]
    assert status["isPrimary"] is True  # no standby.signal
    assert "systemID" in status and status["systemID"] == ""


class CountingSession(Session):
    statements = 0

    async def fetchone(self, query: str, timeout: float = 5.0) -> tuple[object, ...] | None:
        self.statements += 1
        # A deliberate delay, not a synchronisation: the other 19 requests arrive while this
        # reading runs, and nothing observable marks the moment they all wait for it.
        await asyncio.sleep(0.05)
        return await super().fetchone(query, timeout)


async def test_concurrent_requests_share_readings(primary: Primary) -> None:
    settings = primary.settings()
    session = CountingSession(settings)
    reader = StatusReader(lambda: settings, InstanceState(), session)
    replies = await asyncio.gather(*(reader.reply() for _ in range(20)))
    assert {r.status for r in replies} == {200}
    assert session.statements <= 2  # one reading started, one for everyone who came later
    later = await reader.reply()
    assert session.statements <= 3 and later.status == 200
    await session.close()


async def test_failing_archiver_is_reported(instance: Instance, daemons: Any) -> None:
    # An enabled WAL archiver plugin whose socket is missing: every archive attempt fails.
    write_cluster(instance, api_spec(plugins=[{"name": "gone.io", "isWALArchiver": True}]), {})
    daemon = daemons(instance)
    daemon.wait_ready()
    segment = pg(instance.conninfo(), "SELECT pg_walfile_name(pg_switch_wal())")
    wait_for(
        lambda: pg(instance.conninfo(), "SELECT last_failed_wal FROM pg_stat_archiver"),
        30,
        "a failed archive attempt",
    )
    async with serve_api(load_settings(instance)) as api, api.client(None) as client:
        code, status = await fetch_status(api.base, client)
    assert code == 200
    assert status["lastFailedWAL"] == segment
    assert status["lastFailedWALTime"].endswith("Z")
    assert status["readyWalFiles"] >= 1
    assert "isArchivingWAL" not in status  # false: omitted
    daemon.stop()


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (None, "-infinity"),
        (0, "1970-01-01T00:00:00Z"),
        (1_700_000_000_123_400, "2023-11-14T22:13:20.1234Z"),
    ],
)
def test_rfc3339_nano(micros: int | None, text: str) -> None:
    assert status_sql.rfc3339(micros) == text
