"""HA replication slots and synchronous standbys against real PostgreSQL.

The primary is the daemon (``tests/daemon.py``); the standby is a ``pg_basebackup`` clone
run as a plain ``postgres -D`` (as the postgres account) that streams from the primary with
its own HA slot and ``application_name``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from instance_manager import settings
from instance_manager.cluster import slots, sync
from instance_manager.cluster_model import (
    HighAvailabilitySlots,
    ReplicationSlots,
    Spec,
    SynchronizeReplicas,
)
from instance_manager.postgres import config
from tests.daemon import (
    PG_BIN,
    RUN_AS,
    Daemon,
    Instance,
    chown_tree,
    free_port,
    kill_postgres,
)
from tests.waiting import eventually

PREFIX = "_cnpg_"
Conn = psycopg.AsyncConnection[Any]

pytestmark = pytest.mark.slow


class Standby:
    """A streaming standby of ``primary`` named ``name`` (its application_name)."""

    def __init__(self, root: Path, primary: Instance, name: str) -> None:
        self.root = root / name
        self.primary = primary
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.root.mkdir()
        self.sockets.mkdir()
        subprocess.run(["chown", "-R", f"{RUN_AS}:{RUN_AS}", str(self.root)], check=True)

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "s"

    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def clone(self) -> None:
        source = ("-h", "127.0.0.1", "-p", str(self.primary.pg_port), "-U", "postgres")
        target = ("-D", str(self.pgdata), "-X", "stream", "-c", "fast", "--no-sync")
        subprocess.run(
            [str(PG_BIN / "pg_basebackup"), *source, *target],
            user=RUN_AS,
            cwd=self.root,
            check=True,
            capture_output=True,
        )
        (self.pgdata / "standby.signal").touch()
        subprocess.run(["chown", f"{RUN_AS}:{RUN_AS}", str(self.pgdata / "standby.signal")])

    def start(self) -> None:
        primary = (
            f"host=127.0.0.1 port={self.primary.pg_port} user=postgres application_name={self.name}"
        )
        settings_ = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockets),
            # The clone's custom.conf points at the primary's daemon: its log pipes, its
            # archive and restore client. This standby logs to stderr and only streams.
            "logging_collector": "off",
            "log_destination": "stderr",
            "archive_mode": "off",
            "restore_command": "",
            "primary_conninfo": primary,
            "primary_slot_name": slots.ha_slot_name(PREFIX, self.name),
            "hot_standby": "on",
        }
        argv = [str(PG_BIN / "postgres"), "-D", str(self.pgdata)]
        for key, value in settings_.items():
            argv += ["-c", f"{key}={value}"]
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            argv, user=RUN_AS, cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            self.proc.wait(30)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        kill_postgres(self.pgdata)


async def connect(conninfo: str) -> Conn:
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=5)


async def connect_when_ready(conninfo: str, timeout: float = 30.0) -> Conn:
    async def attempt() -> Conn | None:
        try:
            return await connect(conninfo)
        except psycopg.OperationalError:
            return None

    return await eventually(attempt, timeout, f"PostgreSQL at {conninfo}")


async def value(conn: Conn, query: str, *params: Any) -> Any:
    cur = await conn.execute(query, params or None)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def slot_table(conn: Conn) -> dict[str, str | None]:
    """name -> restart_lsn of every physical slot."""
    cur = await conn.execute(
        "SELECT slot_name, restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'physical'"
    )
    return {str(name): lsn for name, lsn in await cur.fetchall()}


@pytest.fixture
def primary(instance: Instance, daemons: Callable[..., Daemon]) -> Instance:
    daemons(instance).wait_ready()
    return instance


@pytest.fixture
def standbys(tmp_root: Path) -> Iterator[list[Standby]]:
    made: list[Standby] = []
    yield made
    for standby in made:
        standby.kill()


async def start_standby(
    tmp_root: Path, primary: Instance, made: list[Standby], name: str = "test-2"
) -> tuple[Standby, Conn]:
    standby = Standby(tmp_root, primary, name)
    made.append(standby)
    await asyncio.to_thread(standby.clone)
    standby.start()
    return standby, await connect_when_ready(standby.conninfo())


async def streaming(conn: Conn, name: str, state: str = "streaming") -> bool:
    query = "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = %s"
    return bool(await value(conn, query, name, state))


# --- the primary's HA slots -----------------------------------------------------------------


async def test_primary_slots_are_created_and_dropped_and_an_active_one_survives(
    primary: Instance, tmp_root: Path
) -> None:
    conn = await connect(primary.conninfo())
    changes = await slots.reconcile_primary_slots(conn, ["test-2", "Test.3"], PREFIX)
    assert sorted(changes.created) == ["_cnpg_test_2", "_cnpg_test_3"]
    table = await slot_table(conn)
    assert table["_cnpg_test_2"] and table["_cnpg_test_3"]  # WAL reserved at once
    again = await slots.reconcile_primary_slots(conn, ["test-2", "Test.3"], PREFIX)
    assert not again.changed and not again.retry

    await conn.execute("SELECT pg_create_physical_replication_slot('user_slot', true)")
    await conn.execute("SELECT pg_create_physical_replication_slot('_cnpg_old')")
    await conn.execute("SELECT pg_create_physical_replication_slot('_cnpg_busy', true)")
    receiver = await asyncio.create_subprocess_exec(
        str(PG_BIN / "pg_receivewal"),
        *("-h", "127.0.0.1", "-p", str(primary.pg_port), "-U", "postgres"),
        *("-S", "_cnpg_busy", "-D", str(tmp_root), "--no-loop"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = "SELECT active FROM pg_replication_slots WHERE slot_name = %s"
        await eventually(lambda: value(conn, active, "_cnpg_busy"), 20, "the busy slot in use")
        changes = await slots.reconcile_primary_slots(conn, ["test-2"], PREFIX)
        assert sorted(changes.dropped) == ["_cnpg_old", "_cnpg_test_3"]
        assert changes.busy == ["_cnpg_busy"] and changes.retry
        assert set(await slot_table(conn)) == {"_cnpg_test_2", "_cnpg_busy", "user_slot"}
    finally:
        receiver.terminate()
        async with asyncio.timeout(10):
            await receiver.wait()

    async def inactive() -> bool:
        return not await value(conn, active, "_cnpg_busy")

    await eventually(inactive, 20, "the busy slot to be released")
    changes = await slots.reconcile_primary_slots(conn, ["test-2"], PREFIX)
    assert changes.dropped == ["_cnpg_busy"] and not changes.retry

    changes = await slots.reconcile_primary_slots(conn, ["test-2"], PREFIX, enabled=False)
    assert changes.dropped == ["_cnpg_test_2"]
    assert set(await slot_table(conn)) == {"user_slot"}  # user slots stay on the primary
    await conn.close()


def test_ha_slot_names() -> None:
    assert slots.ha_slot_name("_cnpg_", "cluster-example-1") == "_cnpg_cluster_example_1"
    assert slots.ha_slot_name("_cnpg_", "Pod..Name--2") == "_cnpg_pod_name_2"
    assert slots.ha_slot_name("my_", "a") == "my_a"


# --- a standby mirrors the primary's slots --------------------------------------------------


async def advance_on_primary(conn: Conn, *names: str) -> str:
    """Write WAL, then move ``names`` to the end of it as their consumers would."""
    await conn.execute("CREATE TABLE IF NOT EXISTS t (i int)")
    await conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    await conn.execute("SELECT pg_switch_wal()")
    lsn = str(await value(conn, "SELECT pg_current_wal_lsn()::text"))
    for name in names:
        await conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (name, lsn))
    return lsn


async def test_standby_slots_follow_the_primary(
    primary: Instance, tmp_root: Path, standbys: list[Standby]
) -> None:
    pconn = await connect(primary.conninfo())
    await slots.reconcile_primary_slots(pconn, ["test-2", "test-3"], PREFIX)
    for name, reserve in (("keep_me", True), ("skip_me", True), ("_cnpg_test_4", False)):
        await pconn.execute("SELECT pg_create_physical_replication_slot(%s, %s)", (name, reserve))
    _, sconn = await start_standby(tmp_root, primary, standbys)
    await eventually(lambda: streaming(pconn, "test-2"), 30, "test-2 streaming")
    for stray in ("_cnpg_stray", "_cnpg_test_2"):
        await sconn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (stray,))

    async def mirror(sync_enabled: bool = True) -> slots.SlotChanges:
        changes = await slots.mirror_standby_slots(
            sconn, pconn, "_cnpg_test_2", PREFIX, sync_enabled, ["^skip_"]
        )
        assert not changes.failed and not changes.busy
        return changes

    changes = await mirror()
    assert sorted(changes.created) == ["_cnpg_test_3", "keep_me"]
    assert sorted(changes.dropped) == ["_cnpg_stray", "_cnpg_test_2"]
    assert set(await slot_table(sconn)) == {"_cnpg_test_3", "keep_me"}

    lsn = await advance_on_primary(pconn, "_cnpg_test_3", "keep_me")
    replayed = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
    await eventually(lambda: value(sconn, replayed, lsn), 30, f"replay up to {lsn}")
    changes = await mirror()
    assert sorted(changes.advanced) == ["_cnpg_test_3", "keep_me"]
    on_standby = await slot_table(sconn)
    assert on_standby["_cnpg_test_3"] == on_standby["keep_me"] == lsn
    assert (await slot_table(pconn))["_cnpg_test_3"] == lsn
    assert not (await mirror()).changed  # nothing new: nothing done

    await pconn.execute("SELECT pg_drop_replication_slot('_cnpg_test_3')")
    changes = await mirror()
    assert changes.dropped == ["_cnpg_test_3"]
    changes = await mirror(sync_enabled=False)  # user slots are no longer copied
    assert changes.dropped == ["keep_me"] and not changes.created
    assert set(await slot_table(sconn)) == set()
    await sconn.close()
    await pconn.close()


async def test_slot_mirror_runs_on_its_interval_and_not_while_fenced(
    primary: Instance, tmp_root: Path, standbys: list[Standby]
) -> None:
    pconn = await connect(primary.conninfo())
    await slots.reconcile_primary_slots(pconn, ["test-2", "test-3"], PREFIX)
    standby, sconn = await start_standby(tmp_root, primary, standbys)
    fenced = True
    config = ReplicationSlots(updateInterval=1)
    mirror = slots.SlotMirror(
        "test-2",
        config,
        lambda: connect(standby.conninfo()),
        lambda: connect(primary.conninfo()),
        lambda: fenced,
    )
    assert await mirror.run_once() is None and mirror.passes == 0
    fenced = False
    task = asyncio.create_task(mirror.run())
    try:

        async def mirrored(name: str) -> bool:
            return name in await slot_table(sconn)

        await eventually(lambda: mirrored("_cnpg_test_3"), 20, "the HA slot of test-3")
        await pconn.execute("SELECT pg_create_physical_replication_slot('late', true)")
        await eventually(lambda: mirrored("late"), 20, "a slot made after the first pass")
        assert mirror.last is not None and not mirror.last.failed
        passes = mirror.passes
        off = ReplicationSlots(
            updateInterval=1,
            highAvailability=HighAvailabilitySlots(enabled=False),
            synchronizeReplicas=SynchronizeReplicas(enabled=False),
        )
        mirror.update(off)
        await eventually(lambda: mirror.passes > passes, 20, "a pass for the new settings")
        assert not mirror.enabled
        assert "late" not in await slot_table(sconn)  # user slots no longer synchronized
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await sconn.close()
    await pconn.close()


# --- synchronous_standby_names makes commits wait -------------------------------------------


def primary_settings(inst: Instance) -> settings.Settings:
    flags = {
        "pgData": str(inst.pgdata),
        "scratchDir": str(inst.scratch),
        "port": inst.pg_port,
        "podName": "test-1",
        "listenAddresses": "127.0.0.1",
    }
    return settings.load(inst.config_file, {}, flags)


async def apply_sync(conn: Conn, inst: Instance, spec: Spec, healthy: list[str]) -> str:
    """Render custom.conf as the primary's reconciler would, reload, return the setting."""
    s = primary_settings(inst)
    managed = sync.sync_parameters("test", ["test-1", "test-2"], "test-1", healthy, spec)
    rendered = config.render_custom_conf(s, managed=managed)
    config.write_atomic(inst.pgdata / config.CUSTOM_CONF, rendered.custom_conf)
    chown_tree(inst.pgdata / config.CUSTOM_CONF)  # the daemon writes it as postgres
    await conn.execute("SELECT pg_reload_conf()")
    expected = managed.get(sync.SYNC_PARAMETER, "")
    query = "SELECT current_setting('synchronous_standby_names') = %s"
    await eventually(lambda: value(conn, query, expected), 20, f"the setting {expected!r}")
    return expected


def sync_spec(durability: str) -> Spec:
    synchronous = {"method": "any", "number": 1, "dataDurability": durability}
    return msgspec.convert({"instances": 2, "postgresql": {"synchronous": synchronous}}, Spec)


async def insert_waits_for_sync_rep(conn: Conn, writer: Conn) -> asyncio.Task[Any]:
    pid = await value(writer, "SELECT pg_backend_pid()")
    task = asyncio.create_task(writer.execute("INSERT INTO t VALUES (1)"))
    waiting = "SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = %s"
    await eventually(lambda: value(conn, waiting, pid), 20, "the commit to wait for a standby")
    assert not task.done()
    return task


async def test_required_durability_makes_a_commit_wait_for_the_standby(
    primary: Instance, tmp_root: Path, standbys: list[Standby]
) -> None:
    conn = await connect(primary.conninfo())
    await slots.reconcile_primary_slots(conn, ["test-2"], PREFIX)
    await conn.execute("CREATE TABLE t (i int)")
    standby, _ = await start_standby(tmp_root, primary, standbys)
    setting = await apply_sync(conn, primary, sync_spec("required"), ["test-1"])
    assert setting == 'ANY 1 ("test-2","test-1")'
    metadata = await value(conn, "SHOW cnpg.synchronous_standby_names_metadata")
    assert metadata == '{"method":"ANY","number":1,"standbyNames":["test-2","test-1"]}'
    await eventually(lambda: streaming(conn, "test-2"), 30, "test-2 streaming")
    sync_state = "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'test-2'"

    async def quorum() -> bool:
        return await value(conn, sync_state) == "quorum"

    await eventually(quorum, 20, "test-2 to be a quorum standby")
    async with asyncio.timeout(10):
        await conn.execute("INSERT INTO t VALUES (0)")  # the standby confirms

    await asyncio.to_thread(standby.stop)
    writer = await connect(primary.conninfo())
    blocked = await insert_waits_for_sync_rep(conn, writer)
    standby.start()
    async with asyncio.timeout(30):
        await blocked  # released once the standby is back and confirms
    assert await value(conn, "SELECT count(*) FROM t") == 2
    await writer.close()
    await conn.close()


async def test_preferred_durability_does_not_wait_without_a_healthy_standby(
    primary: Instance, tmp_root: Path, standbys: list[Standby]
) -> None:
    conn = await connect(primary.conninfo())
    await slots.reconcile_primary_slots(conn, ["test-2"], PREFIX)
    await conn.execute("CREATE TABLE t (i int)")
    standby, _ = await start_standby(tmp_root, primary, standbys)
    await eventually(lambda: streaming(conn, "test-2"), 30, "test-2 streaming")
    setting = await apply_sync(conn, primary, sync_spec("preferred"), ["test-1", "test-2"])
    assert setting == 'ANY 1 ("test-2")'

    await asyncio.to_thread(standby.stop)
    assert await apply_sync(conn, primary, sync_spec("preferred"), ["test-1"]) == ""
    assert await value(conn, "SHOW cnpg.synchronous_standby_names_metadata") == ""
    async with asyncio.timeout(10):
        await conn.execute("INSERT INTO t VALUES (1)")  # nobody to wait for
    await conn.close()
