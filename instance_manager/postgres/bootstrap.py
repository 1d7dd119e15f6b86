"""First start: ``initdb`` and, once the server runs, the roles and database CNPG creates."""

from __future__ import annotations

import asyncio
from pathlib import Path

from instance_manager import durable, log
from instance_manager.errors import SettingsError
from instance_manager.postgres import sql as pgsql
from instance_manager.process import spawn
from instance_manager.settings import Settings

_logger = log.get()
# Written after initdb, removed once the application database exists: a crash in
# between makes the next start finish the job (every step is idempotent).
PENDING_MARKER = ".instance-manager-bootstrap"
CHECK_EMPTY_WAL_ARCHIVE = ".check-empty-wal-archive"
INITDB_TIMEOUT = 600.0

# Functions pg_rewind needs, granted to streaming_replica as CNPG does.
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)


def is_initialised(pgdata: Path) -> bool:
    return (pgdata / "PG_VERSION").is_file()


def bootstrap_pending(pgdata: Path) -> bool:
    """initdb ran but the application database and owner are not created yet."""
    return (pgdata / PENDING_MARKER).exists()


def initdb_argv(settings: Settings) -> list[str]:
    init = settings.cluster.spec.bootstrap.initdb
    argv = [
        settings.bin("initdb"),
        "-D",
        str(settings.pgdata),
        "--username=postgres",
        f"--encoding={init.encoding}",
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
    ]
    if init.locale:
        argv.append(f"--locale={init.locale}")
    else:
        argv += [f"--lc-collate={init.localeCollate}", f"--lc-ctype={init.localeCType}"]
    if init.dataChecksums:
        argv.append("--data-checksums")
    if init.walSegmentSize:
        argv.append(f"--wal-segsize={init.walSegmentSize}")
    if settings.wal_dir is not None:
        argv.append(f"--waldir={settings.wal_dir}")
    return argv + list(init.options)


async def initdb(settings: Settings) -> None:
    """Create a new data directory in an empty (or absent) PGDATA."""
    pgdata, wal_dir = settings.pgdata, settings.wal_dir
    if pgdata.exists() and any(pgdata.iterdir()):
        raise SettingsError(
            f"instance.pgData: {pgdata} is neither empty nor a PostgreSQL data directory"
        )
    if wal_dir is not None and wal_dir.is_dir() and any(wal_dir.iterdir()):
        raise SettingsError(
            f"instance.walDir: {wal_dir} is not empty, and PGDATA {pgdata} is: "
            "initdb needs both empty"
        )
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = initdb_argv(settings)
    log.event(_logger, "running initdb", argv=argv)
    _, out = await spawn.run(argv, env=spawn.base_env({"LC_ALL": "C"}), timeout=INITDB_TIMEOUT)
    for line in out.splitlines():
        if line.strip():
            log.event(log.get("initdb"), line)
    for marker in (PENDING_MARKER, CHECK_EMPTY_WAL_ARCHIVE):
        (pgdata / marker).touch(mode=0o600)


async def ensure_roles(settings: Settings) -> None:
    """streaming_replica and cnpg_metrics_exporter, created or repaired (primary only)."""
    conn = await pgsql.connect(settings)
    async with conn:
        exists = await (
            await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'streaming_replica'")
        ).fetchone()
        if not exists:
            await conn.execute("CREATE ROLE streaming_replica LOGIN REPLICATION")
            await conn.execute(
                "COMMENT ON ROLE streaming_replica IS 'Special user for streaming replication'"
            )
        for function in REWIND_FUNCTIONS:
            await conn.execute(f"GRANT EXECUTE ON FUNCTION {function} TO streaming_replica")
        async with conn.transaction():
            exists = await (
                await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cnpg_metrics_exporter'")
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            await conn.execute(
                f"{verb} ROLE cnpg_metrics_exporter LOGIN PASSWORD NULL NOSUPERUSER NOCREATEDB "
                "NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
            )
            await conn.execute("GRANT pg_monitor TO cnpg_metrics_exporter")


async def finish_bootstrap(settings: Settings) -> bool:
    """Create the application owner and database after initdb. Returns True if it ran."""
    if not bootstrap_pending(settings.pgdata):
        return False
    marker = settings.pgdata / PENDING_MARKER
    from psycopg import sql

    init = settings.cluster.spec.bootstrap.initdb
    owner, database = init.owner_name, init.database
    conn = await pgsql.connect(settings)
    async with conn:
        if not await (
            await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [owner])
        ).fetchone():
            await conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        if not await (
            await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        ).fetchone():
            await conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
            )
        for statement in init.postInitSQL:
            await conn.execute(statement.encode())
    if init.postInitApplicationSQL:
        app = await pgsql.connect(settings, dbname=database)
        async with app:
            for statement in init.postInitApplicationSQL:
                await app.execute(statement.encode())
    marker.unlink()
    # The removal must survive a crash, or postInitSQL would run twice; off the loop.
    await asyncio.to_thread(durable.fsync_dir, settings.pgdata)
    log.event(_logger, "bootstrap complete", database=database, owner=owner)
    return True
