"""Configuration PostgreSQL accepts: owned parameters, refused values, no line breaks.

Unit tests render custom.conf; the end-to-end tests run ``instance-manager run`` and, where
PostgreSQL is involved, read the values in effect with SHOW.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from instance_manager import settings
from instance_manager.errors import SettingsError
from instance_manager.postgres import config, parameters
from tests.daemon import PG_BIN, Daemon, Instance, base_spec, http_get, pg_user, postmaster_pid
from tests.test_config_render import effective, make_settings, parse_conf

Start = Callable[..., Daemon]

# --- parameters the manager owns -----------------------------------------------------------

# A user value for each; none may reach custom.conf.
OWNED_FROM_USER = {
    "archive_library": "basic_archive",  # PostgreSQL 15 would use it instead of archive_command
    "bonjour": "on",
    "data_sync_retry": "on",
    "event_source": "x",
    "jit_provider": "none",
    "ssl_prefer_server_ciphers": "off",
    "ssl_crl_dir": "/tmp/crl",
    "synchronized_standby_slots": "s1",
    "pg_failover_slots.primary_dsn": "host=elsewhere",
    "allow_alter_system": "on",
    "include": "/etc/passwd",
    "Include_Dir": "/etc",
    "include_if_exists": "/tmp/x.conf",
}


def test_owned_parameters_never_reach_custom_conf(tmp_root: Path) -> None:
    rendered = config.render_custom_conf(make_settings(tmp_root, OWNED_FROM_USER))
    assert sorted(rendered.ignored) == sorted(OWNED_FROM_USER)
    names = {name for name, _ in parse_conf(rendered.custom_conf)}
    assert not names & {name.lower() for name in OWNED_FROM_USER}


def test_cloudnativepg_lists_are_owned() -> None:
    # Fixed and blocked are disjoint, as in CloudNativePG; both are owned.
    assert not parameters.FIXED & parameters.BLOCKED
    assert parameters.FIXED | parameters.BLOCKED <= parameters.OWNED
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file", "ssl_crl_file", "ssl_crl_dir"):
        assert parameters.is_owned(name), name
    # What CloudNativePG leaves to the user stays the user's.
    for name in ("ssl_ciphers", "ssl_min_protocol_version", "wal_level", "huge_pages"):
        assert not parameters.is_owned(name), name


# --- refused values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "safe"),
    [
        ("wal_level", "minimal", "logical"),
        ("WAL_LEVEL", "Minimal", "logical"),
        ("wal_level", "verbose", "logical"),
        ("full_page_writes", "off", "on"),
        ("full_page_writes", False, "on"),
        ("full_page_writes", "0", "on"),
        ("full_page_writes", "of", "on"),
        ("full_page_writes", "maybe", "on"),
        ("wal_log_hints", "off", "on"),
        ("wal_log_hints", "no", "on"),
        ("wal_log_hints", "", "on"),
    ],
)
def test_unsafe_values_are_refused(tmp_root: Path, name: str, value: Any, safe: str) -> None:
    rendered = config.render_custom_conf(make_settings(tmp_root, {name: value}))
    assert effective(rendered.custom_conf)[name.lower()] == safe
    [refusal] = rendered.refused
    assert (refusal.parameter, refusal.used) == (name, safe)
    assert refusal.reason


@pytest.mark.parametrize(
    ("name", "value", "applied"),
    [
        ("wal_level", "replica", "replica"),
        ("wal_level", "hot_standby", "hot_standby"),
        ("full_page_writes", True, "on"),
        ("full_page_writes", "TRUE", "TRUE"),
        ("wal_log_hints", "yes", "yes"),
    ],
)
def test_safe_values_are_applied(tmp_root: Path, name: str, value: Any, applied: str) -> None:
    rendered = config.render_custom_conf(make_settings(tmp_root, {name: value}))
    assert effective(rendered.custom_conf)[name] == applied
    assert rendered.refused == ()


def test_wal_log_hints_off_needs_data_checksums(tmp_root: Path) -> None:
    s = make_settings(tmp_root, {"wal_log_hints": "off"})
    assert effective(config.render_custom_conf(s).custom_conf)["wal_log_hints"] == "on"
    with_checksums = config.render_custom_conf(s, data_checksums=True)
    assert effective(with_checksums.custom_conf)["wal_log_hints"] == "off"
    assert with_checksums.refused == ()
    # Checksums never make full_page_writes = off acceptable.
    s = make_settings(tmp_root, {"full_page_writes": "off"})
    assert config.render_custom_conf(s, data_checksums=True).refused


def test_write_all_warns_naming_each_refused_parameter(
    tmp_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_settings(tmp_root, {"wal_level": "minimal", "full_page_writes": "off"})
    with caplog.at_level(logging.WARNING, logger="instance-manager"):
        config.write_all(s)
    warned = {
        r.fields["parameter"]: r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "refusing a parameter value"
    }
    assert set(warned) == {"wal_level", "full_page_writes"}
    assert warned["wal_level"]["value"] == "minimal"
    assert warned["wal_level"]["used"] == "logical"


# --- line breaks and NUL -------------------------------------------------------------------

BAD_TEXT = ["a\nb", "a\rb", "a\0b"]


def bad_documents(bad: str) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(document, flags, field) for each string that reaches a file PostgreSQL reads."""
    pg = "spec.postgresql"
    return [
        ({"metadata": {"name": bad}}, {}, "metadata.name"),
        ({"spec": {"postgresql": {"pg_hba": ["local all all peer", bad]}}}, {}, f"{pg}.pg_hba[1]"),
        ({"spec": {"postgresql": {"pg_ident": [bad]}}}, {}, f"{pg}.pg_ident[0]"),
        (
            {"spec": {"postgresql": {"shared_preload_libraries": [bad]}}},
            {},
            f"{pg}.shared_preload_libraries[0]",
        ),
        ({"spec": {"postgresql": {"parameters": {"work_mem": bad}}}}, {}, f"{pg}.parameters"),
        ({"spec": {"postgresql": {"parameters": {bad: "1"}}}}, {}, f"{pg}.parameters"),
        (
            {"spec": {"bootstrap": {"initdb": {"localeCollate": bad}}}},
            {},
            "spec.bootstrap.initdb.localeCollate",
        ),
        ({"spec": {"plugins": [{"name": bad}]}}, {}, "spec.plugins[0].name"),
        (
            {"spec": {"externalClusters": [{"name": "origin", "plugin": {"name": bad}}]}},
            {},
            "spec.externalClusters[0].plugin.name",
        ),
        ({}, {"listenAddresses": bad}, "instance.listenAddresses"),
        ({}, {"scratchDir": f"/tmp/{bad}"}, "instance.scratchDir"),
        ({}, {"pgData": f"/tmp/{bad}"}, "instance.pgData"),
    ]


@pytest.mark.parametrize("bad", BAD_TEXT, ids=["newline", "carriage-return", "nul"])
def test_line_breaks_are_refused_naming_the_field(tmp_root: Path, bad: str) -> None:
    path = tmp_root / "cluster.yaml"
    for document, flags, field in bad_documents(bad):
        path.write_text(yaml.safe_dump(document))
        options = {"pgData": str(tmp_root / "pgdata"), "scratchDir": str(tmp_root / "c"), **flags}
        with pytest.raises(SettingsError) as info:
            settings.load(path, {}, options)
        message = str(info.value)
        assert message.startswith(f"invalid settings: {field}"), message
        assert not set("\n\r\0") & set(message), message
    assert sorted(p.name for p in tmp_root.iterdir()) == ["cluster.yaml"]


def test_metadata_name_from_the_environment_is_checked(tmp_root: Path) -> None:
    with pytest.raises(SettingsError, match=r"metadata\.name"):
        settings.load(None, {"CLUSTER_NAME": "x\ny"}, {"pgData": str(tmp_root / "d")})


# --- end to end: instance-manager run ------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path below ``root`` (the daemon's own log aside) with mode, size and mtime."""
    entries = {}
    for path in root.rglob("*"):
        if path.name.startswith("daemon-"):
            continue
        st = path.lstat()
        entries[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return entries


def write_document(inst: Instance, document: dict[str, Any]) -> None:
    doc: dict[str, Any] = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster"}
    doc.update(document)
    doc.setdefault("metadata", {"name": "test"})
    doc.setdefault("spec", base_spec())
    inst.config_file.write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"metadata": {"name": "test\nport = 1"}}, "metadata.name"),
        (
            {"spec": base_spec(postgresql={"pg_hba": ["host all all 0.0.0.0/0 trust\0"]})},
            "spec.postgresql.pg_hba[0]",
        ),
        (
            {"spec": base_spec(postgresql={"shared_preload_libraries": ["pg_stat_statements\r"]})},
            "spec.postgresql.shared_preload_libraries[0]",
        ),
    ],
    ids=["name-newline", "pg-hba-nul", "library-carriage-return"],
)
def test_run_refuses_line_breaks_and_writes_nothing(
    instance: Instance, daemons: Start, document: dict[str, Any], field: str
) -> None:
    write_document(instance, document)
    before = snapshot(instance.root)
    daemon = daemons(instance)
    assert daemon.wait_exit(60) == 2, daemon.tail()
    output = daemon.log_path.read_text().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith(f"instance-manager: invalid settings: {field}: "), output
    assert snapshot(instance.root) == before
    assert not instance.scratch.exists()


# --- end to end: real PostgreSQL -----------------------------------------------------------


def show(inst: Instance, *names: str) -> dict[str, str]:
    with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5) as conn:
        return {n: str(conn.execute(f"SHOW {n}".encode()).fetchone()[0]) for n in names}  # type: ignore[index]


def with_params(**params: str) -> dict[str, Any]:
    spec = base_spec()
    spec["postgresql"]["parameters"].update(params)
    return spec


UNSAFE = {"wal_level": "minimal", "full_page_writes": "off", "wal_log_hints": "off"}
BLOCKED = {"archive_library": "basic_archive", "bonjour": "on", "ssl_prefer_server_ciphers": "off"}


def postgres_bool(conn: psycopg.Connection[Any], text: str) -> bool | None:
    try:
        row = conn.execute("SELECT %s::text::boolean", (text,)).fetchone()
    except psycopg.errors.InvalidTextRepresentation:
        return None
    assert row is not None
    return bool(row[0])


def test_refused_and_owned_parameters_are_not_in_effect(instance: Instance, daemons: Start) -> None:
    instance.write_config(with_params(**UNSAFE, **BLOCKED, work_mem="5MB"))
    daemon = daemons(instance)
    daemon.wait_ready()
    values = show(instance, *UNSAFE, *BLOCKED, "work_mem", "archive_command")
    assert values == {
        "wal_level": "logical",
        "full_page_writes": "on",
        "wal_log_hints": "on",
        "archive_library": "",
        "bonjour": "off",
        "ssl_prefer_server_ciphers": "on",
        "work_mem": "5MB",
        "archive_command": values["archive_command"],
    }
    assert " wal-archive " in values["archive_command"]
    refused = {line["parameter"]: line for line in daemon.find("refusing a parameter value")}
    assert set(refused) == set(UNSAFE)
    assert all(line["level"] == "warning" for line in refused.values())
    ignored = {
        line["parameter"] for line in daemon.find("ignoring a parameter the instance manager owns")
    }
    assert ignored == set(BLOCKED)
    # Our reading of booleans is PostgreSQL's.
    with psycopg.connect(instance.conninfo(), autocommit=True, connect_timeout=5) as conn:
        for text in ["on", "of", "o", "t", "FALSE", "ye", "n", "1", "0", "2", "", "onn"]:
            assert parameters.parse_bool(text) == postgres_bool(conn, text), text
    assert daemon.stop() == 0


@pytest.mark.slow
def test_wal_log_hints_off_is_kept_with_data_checksums(instance: Instance, daemons: Start) -> None:
    user = pg_user()
    subprocess.run(
        [str(PG_BIN / "pg_checksums"), "--enable", "-D", str(instance.pgdata)],
        check=True,
        capture_output=True,
        user=user.pw_uid,
        group=user.pw_gid,
        timeout=120,
    )
    instance.write_config(with_params(wal_log_hints="off", full_page_writes="off"))
    daemon = daemons(instance)
    daemon.wait_ready()
    values = show(instance, "data_checksums", "wal_log_hints", "full_page_writes")
    assert values == {"data_checksums": "on", "wal_log_hints": "off", "full_page_writes": "on"}
    assert [line["parameter"] for line in daemon.find("refusing a parameter value")] == [
        "full_page_writes"
    ]
    assert daemon.stop() == 0


def test_reload_of_a_newly_invalid_file_changes_nothing(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    pid = postmaster_pid(instance.pgdata)
    files = ["custom.conf", "pg_hba.conf", "pg_ident.conf", "override.conf", "postgresql.conf"]
    before = {name: (instance.pgdata / name).read_bytes() for name in files}
    write_document(instance, {"metadata": {"name": "test\nx"}, "spec": with_params(work_mem="3MB")})
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_log("new settings refused; keeping the running ones")
    assert "metadata.name" in refused["error"]
    assert {name: (instance.pgdata / name).read_bytes() for name in files} == before
    assert postmaster_pid(instance.pgdata) == pid
    assert show(instance, "cluster_name", "work_mem") == {"cluster_name": "test", "work_mem": "4MB"}
    assert http_get(instance.url("/readyz"))[0] == 200
    # Still supervised: a valid file is applied, an unsafe value in it refused.
    instance.write_config(with_params(work_mem="3MB", full_page_writes="off"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("configuration applied", count=2)
    assert show(instance, "work_mem", "full_page_writes") == {
        "work_mem": "3MB",
        "full_page_writes": "on",
    }
    assert daemon.find("refusing a parameter value")[0]["parameter"] == "full_page_writes"
    assert postmaster_pid(instance.pgdata) == pid
    assert daemon.stop() == 0
