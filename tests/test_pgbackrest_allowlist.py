"""The pgBackRest sidecar's boundary with the Cluster, without PostgreSQL: which options the
plugin's parameters may set, what the sidecar's command line enables, and the checks of its
work, lock and spool directories. The gRPC server runs in-process over a stand-in
``pgbackrest`` program that records whether it was ever run.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from instance_manager.pgbackrest import PLUGIN_NAME
from instance_manager.pgbackrest.allowlist import OWNED, OptionPolicy
from instance_manager.pgbackrest.options import DEFAULTS, ConfigError, OptionRefused, Resolver
from instance_manager.pgbackrest.runner import Runner
from instance_manager.pgbackrest.server import PluginServer
from instance_manager.pgbackrest.sidecar import Sidecar
from instance_manager.plugins._gen import backup_pb2, metrics_pb2, wal_pb2
from instance_manager.plugins.connection import Plugin
from tests.daemon import PYTHON, pg_user

REPO_ROOT = Path(__file__).resolve().parent.parent


def cluster(parameters: dict[str, Any]) -> dict[str, Any]:
    plugin = {"name": PLUGIN_NAME, "parameters": parameters}
    return {"metadata": {"name": "c"}, "spec": {"plugins": [plugin]}}


def resolver(tmp_path: Path, environ: dict[str, str] | None = None, *allow: str) -> Resolver:
    return Resolver(PLUGIN_NAME, environ or {}, tmp_path / "work", OptionPolicy(allow))


# -- the allowlist ----------------------------------------------------------------------------


def test_repository_credentials_and_tuning_are_accepted_in_any_index(tmp_path: Path) -> None:
    parameters = {
        "stanza": "main",
        "repo1-type": "s3",
        "repo1-path": "/pg",
        "repo1S3Bucket": "b",
        "repo1-s3-endpoint": "s3.example.net",
        "repo1-s3-region": "eu-west-1",
        "repo1-s3-key": "k",
        "repo1S3KeySecret": "s",
        "repo1-s3-key-type": "shared",
        "repo1-storage-verify-tls": False,
        "repo2-type": "gcs",
        "repo2-gcs-bucket": "g",
        "repo2-gcs-key-type": "auto",
        "repo256-azure-container": "a",
        "repo1-cipher-type": "aes-256-cbc",
        "repo1CipherPass": "p",
        "repo1-retention-full": 2,
        "compressType": "lz4",
        "compress-level": 3,
        "process-max": 4,
        "buffer-size": "1MiB",
        "archive-async": True,
        "pg1-port": 5433,
    }
    env = resolver(tmp_path).own(cluster(parameters)).env
    assert env["PGBACKREST_REPO1_S3_KEY_SECRET"] == "s"
    assert env["PGBACKREST_REPO1_STORAGE_VERIFY_TLS"] == "n"
    assert env["PGBACKREST_REPO256_AZURE_CONTAINER"] == "a"
    assert env["PGBACKREST_COMPRESS_TYPE"] == "lz4" and env["PGBACKREST_PG1_PORT"] == "5433"


REFUSED = [
    ("cmd-ssh", "run a program"),
    ("cmdSsh", "run a program"),
    ("cmd", "run a program"),
    ("repo1-s3-process-cmd", "run a program"),
    ("repo1-host", "another host"),
    ("repo2-host-cmd", "run a program"),
    ("repo1-host-config-path", "another host"),
    ("pg2-host", "another host"),
    ("pg1-path", "names files"),
    ("pg1-socket-path", "names files"),
    ("lock-path", "names files"),
    ("spool-path", "names files"),
    ("log-path", "names files"),
    ("config", "names files"),
    ("config-include-path", "names files"),
    ("link-map", "names files"),
    ("tablespace-map", "names files"),
    ("repo1-sftp-private-key-file", "names files"),
    ("exec-id", "not on the plugin's list"),
    ("archive-push-queue-max", "not on the plugin's list"),  # drops WAL past the limit
    ("db1-path", "names files"),  # deprecated alias of pg1-path
    ("backup-cmd", "not on the plugin's list"),  # deprecated alias of repo1-host-cmd
    ("repo-path", "lacks its index"),
    ("repo01-path", "names files"),
    ("repo257-path", "names files"),
    ("repo257-type", "not on the plugin's list"),
    ("allowOption", "not on the plugin's list"),
    ("log-level-console", "the plugin sets"),
    ("type", "chosen per request"),
    ("repo", "chosen per request"),
]


@pytest.mark.parametrize(("key", "reason"), REFUSED)
def test_options_that_run_programs_or_name_paths_are_refused_by_name(
    tmp_path: Path, key: str, reason: str
) -> None:
    with pytest.raises(OptionRefused, match=reason) as refused:
        resolver(tmp_path).own(cluster({"stanza": "main", key: "x"}))
    assert repr(key) in str(refused.value)
    assert f"spec.plugins[{PLUGIN_NAME}]" in str(refused.value)


def test_the_recovery_source_passes_the_same_allowlist(tmp_path: Path) -> None:
    source = {"name": PLUGIN_NAME, "parameters": {"stanza": "o", "repo1-host": "h"}}
    doc = {
        "spec": {
            "externalClusters": [{"name": "origin", "plugin": source}],
            "bootstrap": {"recovery": {"source": "origin"}},
        }
    }
    with pytest.raises(OptionRefused, match=r"spec.externalClusters\[origin\]"):
        resolver(tmp_path).source(doc)


def test_only_the_sidecar_command_line_enables_an_option(tmp_path: Path) -> None:
    doc = cluster({"stanza": "main", "repo1-host": "backup", "repo2-host": "b2"})
    with pytest.raises(OptionRefused, match="repo1-host"):
        resolver(tmp_path).own(doc)
    every_index = resolver(tmp_path, None, "repo-host").own(doc)
    assert every_index.env["PGBACKREST_REPO2_HOST"] == "b2"
    with pytest.raises(OptionRefused, match="repo2-host"):
        resolver(tmp_path, None, "repo1-host").own(doc)
    # The sidecar's own PGBACKREST_* variables are its configuration: used as they are,
    # and they do not let the Cluster change the option.
    trusted = resolver(tmp_path, {"PGBACKREST_CMD_SSH": "/usr/bin/ssh"})
    assert trusted.own(cluster({"stanza": "s"})).env["PGBACKREST_CMD_SSH"] == "/usr/bin/ssh"
    with pytest.raises(OptionRefused, match="cmd-ssh"):
        trusted.own(cluster({"stanza": "s", "cmd-ssh": "/tmp/x"}))


@pytest.mark.parametrize("name", ["type", "set", "log-level-console", "repo_path", "-x"])
def test_per_request_and_plugin_options_cannot_be_enabled(name: str) -> None:
    with pytest.raises(ValueError, match="--allow-option"):
        OptionPolicy([name])


def test_the_plugin_owned_options_are_its_defaults() -> None:
    assert frozenset(DEFAULTS) == OWNED


# -- private directories ---------------------------------------------------------------------


def unsafe_directories(root: Path) -> dict[str, Path]:
    shared = root / "shared"
    shared.mkdir(mode=0o770)
    shared.chmod(0o770)
    sticky = root / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    target = root / "target"
    target.mkdir(mode=0o700)
    link = root / "link"
    link.symlink_to(target)
    other = root / "other"
    other.mkdir(mode=0o700)
    os.chown(other, pg_user().pw_uid, pg_user().pw_gid)  # the tests run as root
    not_dir = root / "file"
    not_dir.write_text("")
    return {
        "writable by its group": shared,
        "writable by its group or by everyone": sticky,
        "symbolic link": link,
        "owned by uid": other,
        "not a directory": not_dir,
    }


def test_lock_and_spool_directories_must_be_private(tmp_path: Path) -> None:
    for reason, path in unsafe_directories(tmp_path).items():
        for option in ("spool-path", "lock-path"):
            variable = "PGBACKREST_" + option.upper().replace("-", "_")
            with pytest.raises(ConfigError, match=reason) as refused:
                resolver(tmp_path, {variable: str(path)}).own(cluster({"stanza": "s"}))
            assert f"{option} {path}" in str(refused.value)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    allowed = resolver(tmp_path, None, "spool-path")
    assert allowed.own(cluster({"stanza": "s", "spool-path": str(private)}))
    assert allowed.own(cluster({"stanza": "s", "spool-path": str(tmp_path / "absent")}))
    with pytest.raises(ConfigError, match="writable by its group"):
        allowed.own(cluster({"stanza": "s", "spool-path": str(tmp_path / "shared")}))


def sidecar_exit(work_dir: Path, *extra: str, **env: str) -> tuple[int, str]:
    argv = [PYTHON, "-m", "instance_manager.pgbackrest", "--socket-dir",
            str(work_dir.parent / "sock"), "--work-dir", str(work_dir),
            "--pgbackrest", "/bin/true", *extra]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_the_sidecar_refuses_to_start_on_an_unsafe_work_directory(tmp_path: Path) -> None:
    for reason, path in unsafe_directories(tmp_path).items():
        code, output = sidecar_exit(path)
        assert code == 2, output
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        refusal = next(line for line in lines if line["msg"] == "refusing to start")
        assert reason in refusal["error"] and str(path) in refusal["error"]
    code, output = sidecar_exit(tmp_path / "w", PGBACKREST_SPOOL_PATH=str(tmp_path / "shared"))
    assert code == 2 and "spool-path" in output, output
    code, output = sidecar_exit(tmp_path / "w", "--allow-option", "type")
    assert code == 2 and "the plugin sets this option itself" in output, output
    assert not (tmp_path / "sock").exists()  # never listened


# -- refused before anything runs ------------------------------------------------------------


@pytest.fixture
async def marked(tmp_path: Path) -> AsyncIterator[tuple[PluginServer, Path]]:
    """A server whose pgbackrest is a script that leaves a marker file when run."""
    marker = tmp_path / "ran"
    program = tmp_path / "pgbackrest"
    program.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    program.chmod(0o755)
    sidecar = Sidecar(PLUGIN_NAME, "0.1.0", Runner(str(program)), resolver(tmp_path), "pod-1")
    async with PluginServer(sidecar, tmp_path / "sock", {}) as server:
        yield server, marker


async def test_a_refused_option_fails_every_call_and_runs_nothing(
    marked: tuple[PluginServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, marker = marked
    raw = json.dumps(cluster({"stanza": "s", "repo1-host": "h", "cmd-ssh": "/tmp/x"})).encode()
    plugin = Plugin(PLUGIN_NAME, server.socket_path)
    calls = {
        "Archive": lambda ch: ch.wal.Archive(
            wal_pb2.WALArchiveRequest(
                cluster_definition=raw, source_file_name="/d/pg_wal/000000010000000000000001"
            )
        ),
        "Restore": lambda ch: ch.wal.Restore(
            wal_pb2.WALRestoreRequest(
                cluster_definition=raw,
                source_wal_name="000000010000000000000001",
                destination_file_name="/d/pg_wal/RECOVERYXLOG",
            )
        ),
        "Backup": lambda ch: ch.backup.Backup(backup_pb2.BackupRequest(cluster_definition=raw)),
        "Collect": lambda ch: ch.metrics.Collect(
            metrics_pb2.CollectMetricsRequest(cluster_definition=raw)
        ),
    }
    try:
        async with plugin.channel() as ch:
            for rpc, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call(ch)
                assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION, rpc
                assert "'repo1-host'" in (failed.value.details() or ""), rpc
    finally:
        await plugin.close()
    assert not marker.exists()
    logged = [r.__dict__["fields"] for r in caplog.records if r.getMessage().endswith(" failed")]
    assert len(logged) == len(calls)
    assert all("'repo1-host'" in fields["error"] for fields in logged), logged
