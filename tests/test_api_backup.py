"""``/pg/mode/backup`` against real PostgreSQL, through TLS with the pinned certificate."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from tests.api_helpers import Api, Primary, certs, pg, primary, serve_api
from tests.daemon import PG_BIN, chown_tree, free_port, wait_for
from tests.waiting import eventually

__all__ = ["certs", "primary"]  # fixtures
URL = "/pg/mode/backup"
KILL_BACKUP_SESSION = """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND query LIKE '%backup_start%'
AND pid <> pg_backend_pid()"""


async def call(client: aiohttp.ClientSession, api: Api, method: str, body: Any = None,
               raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    async with client.request(method, api.base + URL, data=data) as resp:
        text = await resp.text()
        return resp.status, (await resp.json() if "json" in resp.content_type else text)


async def wait_phase(client: aiohttp.ClientSession, api: Api, phase: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        code, body = await call(client, api, "GET")
        if code == 200 and body.get("data", {}).get("phase") == phase:
            return dict(body)
        assert code in (200, 422), body
        assert "error" not in body or body["error"]["code"] == "ANOTHER_REQUEST_IN_PROGRESS"
        return None

    return await eventually(reached, 30, f"phase {phase}")


_SKIPPED = {"postmaster.pid", "postmaster.opts"}
_EMPTIED = {"pg_wal", "pg_replslot", "pg_stat_tmp", "pg_dynshmem", "pg_notify", "pg_serial",
            "pg_snapshots", "pg_subtrans"}  # fmt: skip


def copy_data_files(pgdata: Path, target: Path) -> None:
    """What a backup tool copies while the backup runs (files may vanish under it)."""
    for root, dirs, files in os.walk(pgdata):
        rel = Path(root).relative_to(pgdata)
        (target / rel).mkdir(mode=0o700, exist_ok=True)
        if rel.parts and rel.parts[0] in _EMPTIED:
            keep = "archive_status" if rel == Path("pg_wal") else None
            dirs[:] = [d for d in dirs if d == keep]
            continue
        for name in files:
            if rel == Path(".") and name in _SKIPPED:
                continue
            with contextlib.suppress(FileNotFoundError):  # gone while we copied
                shutil.copy2(Path(root) / name, target / rel / name)


def start_restored(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    run = data.parent / "run"
    run.mkdir()
    chown_tree(data.parent)
    os.chmod(data, 0o700)
    port = free_port()
    out = log.open("wb")
    proc = subprocess.Popen(
        [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"port={port}",
         "-c", "listen_addresses=", "-c", f"unix_socket_directories={run}",
         "-c", "logging_collector=off", "-c", "log_destination=stderr",
         "-c", "archive_mode=off"],
        stdout=out, stderr=out, user="postgres", group="postgres", extra_groups=[],
    )  # fmt: skip
    return proc, f"host={run} port={port} user=postgres dbname=postgres"


def accepts(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


async def test_full_backup_is_restorable(primary: Primary) -> None:
    conninfo = primary.conninfo()
    pg(conninfo, "CREATE TABLE before_backup AS SELECT g FROM generate_series(1, 1000) g")
    backup_dir = primary.inst.root / "restore" / "data"
    backup_dir.parent.mkdir()
    async with serve_api(primary.settings(), primary.certs) as api, api.client() as client:
        start = {"backupName": "nightly-1", "immediateCheckpoint": True, "waitForArchive": True}
        code, body = await call(client, api, "POST", start)
        assert code == 200, body
        assert body == {"data": {"data": {"backupName": "nightly-1", "phase": "starting"}}}
        started = await wait_phase(client, api, "started")
        assert started["data"]["beginLSN"]
        assert pg(conninfo, "SELECT temporary FROM pg_replication_slots "
                            "WHERE slot_name = 'nightly_1'") is True  # fmt: skip
        await asyncio.to_thread(copy_data_files, primary.inst.pgdata, backup_dir)
        pg(conninfo, "CREATE TABLE during_backup AS SELECT g FROM generate_series(1, 500) g")
        code, body = await call(client, api, "PUT", {"backupName": "nightly-1"})
        assert code == 200, body
        assert body["data"]["data"]["phase"] in ("closing", "completed")
        done = (await wait_phase(client, api, "completed"))["data"]
    label = base64.b64decode(done["labelFile"]).decode()
    assert label.startswith("START WAL LOCATION:") and "LABEL: nightly-1" in label
    assert done["endLSN"] and "spcmapFile" not in done  # no tablespaces: omitted
    # The session is closed before "completed"; its backend then drops the temporary slot.
    slot = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'nightly_1'"
    await eventually(lambda: pg(conninfo, slot) == 0, 10, "the backup's temporary slot to go")
    # WAL from the start of the backup to its end (the temporary slot kept it until now).
    for segment in (primary.inst.pgdata / "pg_wal").iterdir():
        if segment.is_file():
            shutil.copy2(segment, backup_dir / "pg_wal" / segment.name)
    (backup_dir / "backup_label").write_text(label)
    proc, restored = start_restored(backup_dir, primary.inst.root / "restore" / "pg.log")
    try:
        log_file = primary.inst.root / "restore" / "pg.log"

        def up() -> bool:
            assert proc.poll() is None, log_file.read_text()
            return accepts(restored)

        wait_for(up, 60, "the restored copy to accept connections")
        assert pg(restored, "SELECT count(*) FROM before_backup") == 1000
        assert pg(restored, "SELECT count(*) FROM during_backup") == 500
        log = log_file.read_text()
        assert "starting backup recovery with redo LSN" in log, log
        assert (backup_dir / "backup_label.old").exists()  # PostgreSQL used our label
    finally:
        proc.terminate()
        proc.wait(30)


async def test_state_machine_errors(primary: Primary) -> None:
    async with serve_api(primary.settings(), primary.certs) as api, api.client() as client:
        assert await call(client, api, "GET") == (200, {"data": {}})
        code, body = await call(client, api, "PUT", {"backupName": "x"})
        assert (code, body["error"]["code"]) == (400, "NO_ONGOING_BACKUP")
        for raw in (b"", b"{", b"[1]", b'{"backupName": 5}', b'{"immediateCheckpoint": "yes"}'):
            code, body = await call(client, api, "POST", raw=raw)
            assert (code, body["error"]["code"]) == (400, "FAILED_TO_PARSE_REQUEST"), raw
        code, body = await call(client, api, "DELETE")
        assert code == 405
        # Go decoding: null is an empty request, case-insensitive names, extra fields ignored
        code, _ = await call(client, api, "POST", raw=b'{"BACKUPNAME": "b1", "x": 1} trailing')
        assert code == 200
        await wait_phase(client, api, "started")
        code, body = await call(client, api, "PUT", {"backupName": "other"})
        assert (code, body["error"]) == (
            422, {"code": "NOT_CURRENT_RUNNING_BACKUP", "message": "Phase is: started"}
        )  # fmt: skip
        # A new POST closes the running session: PostgreSQL aborts that backup.
        assert (await call(client, api, "POST", {"backupName": "b2", "immediateCheckpoint": True}))[
            0
        ] == 200
        await wait_phase(client, api, "started")
        slots = pg(
            primary.conninfo(), "SELECT string_agg(slot_name, ',') FROM pg_replication_slots"
        )
        assert slots == "b2"
        api.operator.backup.busy = True  # a background step in progress
        code, body = await call(client, api, "GET")
        assert (code, body["error"]["code"]) == (422, "ANOTHER_REQUEST_IN_PROGRESS")
        api.operator.backup.busy = False
        assert (await call(client, api, "PUT", {"backupName": "b2"}))[0] == 200
        await wait_phase(client, api, "completed")
        code, body = await call(client, api, "PUT", {"backupName": "b2"})
        assert (code, body["error"]) == (
            422, {"code": "CANNOT_CLOSE_NOT_STARTED", "message": "Phase is: completed"}
        )  # fmt: skip


async def test_a_name_that_cannot_name_a_slot_is_refused(primary: Primary) -> None:
    """The slot is named after the backup: no name, or one over 63 characters, is a 400,
    not a backup that fails in the background (an error line for a client's mistake)."""
    async with serve_api(primary.settings(), primary.certs) as api, api.client() as client:
        for raw in (
            b"{}",
            b"null",
            b'{"backupName": ""}',
            json.dumps({"backupName": "b" * 64}).encode(),
        ):
            code, body = await call(client, api, "POST", raw=raw)
            assert (code, body["error"]["code"]) == (400, "FAILED_TO_PARSE_REQUEST"), raw
            assert "backupName must be 1 to 63 characters" in body["error"]["message"]
        assert await call(client, api, "GET") == (200, {"data": {}})
        assert (await call(client, api, "POST", {"backupName": "é" * 63}))[0] == 200
        await wait_phase(client, api, "started")


async def test_failed_backup_is_reported(primary: Primary) -> None:
    name = "dup"
    pg(primary.conninfo(), "SELECT pg_create_physical_replication_slot('dup')")  # taken
    async with serve_api(primary.settings(), primary.certs) as api, api.client() as client:
        assert (await call(client, api, "POST", {"backupName": name}))[0] == 200

        async def failed() -> dict[str, Any] | None:
            code, body = await call(client, api, "GET")
            return dict(body) if code == 200 and "error" in body else None

        body = await eventually(failed, 5, "the backup error to be reported")
        assert body["error"]["code"] == "BACKUP_STATUS_CONTAINS_ERROR"
        assert 'replication slot "dup" already exists' in body["error"]["message"]
        assert body["data"]["phase"] == "starting"
        code, body = await call(client, api, "PUT", {"backupName": name})
        assert (code, body["error"]["code"]) == (422, "BACKUP_FAILED")


async def test_no_connection_and_closing(primary: Primary) -> None:
    async with serve_api(primary.settings(port=1), primary.certs) as api, api.client() as client:
        code, body = await call(client, api, "POST", {"backupName": "b"})
        assert (code, body["error"]["code"]) == (422, "CANNOT_INITIALIZE_CONNECTION")
    async with serve_api(primary.settings(), primary.certs) as api, api.client() as client:
        await call(client, api, "POST", {"backupName": "b3", "immediateCheckpoint": True})
        await wait_phase(client, api, "started")
        # The janitor notices a dead connection.
        pg(primary.conninfo(), KILL_BACKUP_SESSION)
        await api.operator.backup.check_session()
        code, body = await call(client, api, "GET")
        assert body["data"]["phase"] == "completed"
        assert body["error"]["message"].startswith("error while pinging")
        await call(client, api, "POST", {"backupName": "b4", "immediateCheckpoint": True})
        await wait_phase(client, api, "started")
        await api.operator.close()  # before a shutdown: the session's connection goes
        # The backup's temporary slot goes with its backend, which exits after the client
        # closed the connection: asynchronously, later on a busy machine.
        slots = "SELECT count(*) FROM pg_replication_slots"
        await eventually(lambda: pg(primary.conninfo(), slots) == 0, 10, "the slot dropped")
