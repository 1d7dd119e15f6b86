"""Helpers of the pgBackRest plugin tests: the sidecar as a process of its own (run as
postgres, like the daemon's PostgreSQL), the pgbackrest command line, SQL, and gRPC calls
made straight to the sidecar.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.plugins.connection import Channel, Plugin
from tests.daemon import PG_BIN, PYTHON, Instance, base_spec, chown_tree, pg_user, wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def pgbackrest_spec(
    repo: Path, stanza: str = "main", max_parallel: int = 1, **parameters: str
) -> dict[str, Any]:
    """A Cluster spec whose WAL goes to pgBackRest through the plugin."""
    plugin = {
        "name": PLUGIN_NAME,
        "isWALArchiver": True,
        "parameters": {"stanza": stanza, "repo1-path": str(repo), **parameters},
    }
    return base_spec(plugins=[plugin], wal={"maxParallel": max_parallel})


def cluster_json(inst: Instance) -> bytes:
    """The Cluster as the daemon sends it in cluster_definition."""
    doc = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "test"},
        "spec": inst.spec,
    }
    return json.dumps(doc).encode()


def make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    chown_tree(path)
    return path


class SidecarProcess:
    """``python -m instance_manager.pgbackrest`` beside one test instance, as postgres;
    ``allow``: the options its command line enables (``--allow-option``)."""

    def __init__(
        self, inst: Instance, *, pgdata: Path | None = None, allow: Sequence[str] = ()
    ) -> None:
        self.inst = inst
        self.allow = tuple(allow)
        self.socket_dir = inst.root / "plugins"
        self.work_dir = inst.root / "pbw"
        self.log_path = inst.root / "sidecar.log"
        self.pgdata = pgdata or inst.pgdata
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.socket_dir / PLUGIN_NAME

    def env(self) -> dict[str, str]:
        user = pg_user()
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": user.pw_dir,
            "PGDATA": str(self.pgdata),
            "POD_NAME": "test-1",
            "PGBACKREST_PG1_PORT": str(self.inst.pg_port),
            "PGBACKREST_PG1_SOCKET_PATH": str(self.inst.socket_dir),
        }

    def argv(self) -> list[str]:
        return [PYTHON, "-m", "instance_manager.pgbackrest", "--socket-dir",
                str(self.socket_dir), "--work-dir", str(self.work_dir),
                *(f"--allow-option={name}" for name in self.allow)]  # fmt: skip

    def start(self) -> SidecarProcess:
        make_dir(self.socket_dir)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                cwd="/", user="postgres", group="postgres", extra_groups=[],
            )  # fmt: skip
        started = time.monotonic()
        wait_for(lambda: self._listening(started), 30, "the pgBackRest sidecar's socket")
        return self

    def refused(self, **env: str) -> tuple[int, list[dict[str, Any]]]:
        """Start it expecting it to exit before serving: (exit status, its log lines)."""
        make_dir(self.socket_dir)
        done = subprocess.run(
            self.argv(), capture_output=True, env=self.env() | env, cwd="/", timeout=60,
            user="postgres", group="postgres", extra_groups=[],
        )  # fmt: skip
        lines = [json.loads(raw) for raw in done.stdout.splitlines() if raw.startswith(b"{")]
        return done.returncode, lines

    def _listening(self, since: float) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited {self.proc.returncode}:\n{self.tail()}")
        return any(
            line.get("msg") == "plugin listening" and float(line.get("ts", 0)) >= since - 1
            for line in self.lines()
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def lines(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"msg": raw})
        return out

    def find(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("msg") == msg]

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


# -- pgbackrest by hand, for the assertions -----------------------------------------------


def pgbackrest(
    inst: Instance, repo: Path, stanza: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PGBACKREST_STANZA": stanza,
        "PGBACKREST_REPO1_PATH": str(repo),
        "PGBACKREST_PG1_PATH": str(inst.pgdata),
        "PGBACKREST_PG1_PORT": str(inst.pg_port),
        "PGBACKREST_PG1_SOCKET_PATH": str(inst.socket_dir),
        "PGBACKREST_LOG_LEVEL_FILE": "off",
        "PGBACKREST_LOCK_PATH": str(inst.root / "cli-lock"),
    }
    done = subprocess.run(
        ["pgbackrest", *args], capture_output=True, text=True, env=env, timeout=120,
        user="postgres", group="postgres", extra_groups=[], cwd="/",
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"pgbackrest {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


def info(inst: Instance, repo: Path, stanza: str = "main", *args: str) -> dict[str, Any]:
    """The stanza's entry of ``pgbackrest info --output=json``."""
    out = pgbackrest(inst, repo, stanza, "info", "--output=json", *args).stdout
    entries: list[dict[str, Any]] = json.loads(out)
    return next(e for e in entries if e["name"] == stanza)


def archived_segments(inst: Instance, repo: Path, stanza: str = "main") -> set[str]:
    """Names of the WAL segments stored in the stanza's archive."""
    listing = pgbackrest(
        inst, repo, stanza, "repo-ls", "--recurse", "--output=json", f"archive/{stanza}"
    ).stdout
    names = (Path(path).name for path in json.loads(listing))
    return {name[:24] for name in names if len(name) > 24 and name[24] == "-"}


# -- SQL, WAL, pgbench ----------------------------------------------------------------------


def sql(inst: Instance, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(statement.encode())
        return cur.fetchall() if cur.description else []


def switch_segments(inst: Instance, count: int) -> list[str]:
    closed = []
    for i in range(count):
        sql(inst, f"CREATE TABLE IF NOT EXISTS w (i int); INSERT INTO w VALUES ({i})")
        closed.append(str(sql(inst, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))
    return closed


def archiver(inst: Instance) -> tuple[str, int, int]:
    """(last_archived_wal, archived_count, failed_count) of pg_stat_archiver."""
    row = sql(
        inst,
        "SELECT coalesce(last_archived_wal, ''), archived_count, failed_count "
        "FROM pg_stat_archiver",
    )[0]
    return str(row[0]), int(row[1]), int(row[2])


def wait_archived(inst: Instance, segment: str, timeout: float = 90) -> None:
    wait_for(lambda: archiver(inst)[0] >= segment, timeout, f"{segment} to be archived")


def ready_files(inst: Instance) -> set[str]:
    status = inst.pgdata / "pg_wal" / "archive_status"
    return {p.name.removesuffix(".ready") for p in status.iterdir() if p.name.endswith(".ready")}


def pgbench(inst: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(inst.pg_port), "-U", "postgres"]
    return subprocess.run(
        [*argv, *args, "postgres"], capture_output=True, text=True, timeout=120, check=True
    )


# -- gRPC straight to the sidecar ---------------------------------------------------------


def call(socket: Path, body: Callable[[Channel], Awaitable[T]]) -> T:
    """Run ``body`` on a handshaken channel to the sidecar (as the daemon would open it)."""

    async def main() -> T:
        plugin = Plugin(PLUGIN_NAME, socket)
        try:
            async with plugin.channel() as ch:
                return await body(ch)
        finally:
            await plugin.close()

    return asyncio.run(main())


def run_as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=True, capture_output=True, text=True, timeout=120, cwd="/",
        user="postgres", group="postgres", extra_groups=[],
    )  # fmt: skip
