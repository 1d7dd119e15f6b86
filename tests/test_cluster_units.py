"""Standalone cluster pieces without PostgreSQL: the view, the start decision, reports, CLI."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
import yaml

from instance_manager import settings as settings_module
from instance_manager.cluster import cli, reports, standby, view
from instance_manager.cluster.prepare import Action, decide
from instance_manager.cluster.reports import Report
from instance_manager.cluster_model import Cluster
from instance_manager.errors import SettingsError
from instance_manager.settings import Peer

PEERS = {n: Peer(host="127.0.0.1", port=p) for n, p in (("b", 5433), ("a", 5432), ("c", 5434))}


def claim(name: str, at: str) -> Report:
    return Report(name=name, role="primary", currentPrimary=name, currentPrimaryTimestamp=at)


def cluster(status: dict[str, str] | None = None) -> Cluster:
    return Cluster(status=dict(status or {}))


def test_the_newest_claim_is_the_current_primary() -> None:
    found = {
        "a": claim("a", "2026-01-01T00:00:00.000001Z"),
        "b": claim("b", "2026-01-01T00:00:01.000000Z"),
        "c": Report(name="c", currentPrimary="a", currentPrimaryTimestamp="2027-01-01T00:00:00Z"),
    }
    seen = view.build(cluster({"currentPrimary": "c"}), "a", PEERS, found)
    assert seen.current_primary == "b"  # c's report names another pod: not a claim
    assert seen.target_primary == "b"  # no target in the document: the current primary
    assert seen.other_is_current


def test_the_document_decides_without_claims_and_a_new_cluster_targets_the_first_peer() -> None:
    assert view.build(cluster({"currentPrimary": "c"}), "a", PEERS, {}).current_primary == "c"
    fresh = view.build(cluster(), "a", PEERS, {})
    assert (fresh.current_primary, fresh.target_primary, fresh.i_am_target) == (None, "a", True)
    moved = view.build(cluster({"targetPrimary": "c"}), "a", PEERS, {"a": claim("a", "1")})
    assert (moved.target_primary, moved.current_primary, moved.i_am_target) == ("c", "a", False)


@pytest.mark.parametrize(
    ("files", "status", "claims", "action"),
    [
        ((), {}, {}, Action.START),  # empty, target of a new cluster: initdb
        ((), {"targetPrimary": "b"}, {}, Action.WAIT),  # empty, nobody primary yet
        ((), {}, {"b": "2"}, Action.JOIN),  # empty, another is primary
        (("PG_VERSION", "standby.signal"), {"targetPrimary": "a"}, {"b": "2"}, Action.START),
        (("PG_VERSION",), {}, {"a": "1"}, Action.START),  # the primary restarts
        (("PG_VERSION",), {"targetPrimary": "b"}, {"a": "1"}, Action.WAIT),  # switchover half-way
        (("PG_VERSION",), {"targetPrimary": "b"}, {"a": "1", "b": "2"}, Action.DEMOTE),
        (("PG_VERSION",), {"targetPrimary": "a"}, {"a": "1", "b": "2"}, Action.DEMOTE),
    ],
)
def test_what_an_instance_does_before_it_starts(
    tmp_path: Path,
    files: tuple[str, ...],
    status: dict[str, str],
    claims: dict[str, str],
    action: Action,
) -> None:
    for name in files:
        (tmp_path / name).write_text("")
    found = {n: claim(n, at) for n, at in claims.items()}
    assert decide(tmp_path, view.build(cluster(status), "a", PEERS, found)) is action


def test_reports_are_replaced_whole_and_readable_by_everyone(tmp_path: Path) -> None:
    directory = reports.reports_dir(tmp_path / "cluster.yaml")
    assert directory == tmp_path / "cluster.yaml.status"
    old = os.umask(0o077)
    try:
        reports.write(directory, claim("a", "1"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((directory / "a.json").stat().st_mode) == 0o644
    (directory / "b.json").write_text("{not json")
    (directory / "c.json").write_text('{"name": "someone-else"}')
    assert reports.read_all(directory, ["a", "b", "c"]) == {"a": claim("a", "1")}
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


def test_slot_names_and_primary_conninfo(tmp_path: Path) -> None:
    document = tmp_path / "cluster.yaml"
    flags = {"pgData": str(tmp_path / "d"), "podName": "pg-2", "scratchDir": str(tmp_path)}
    document.write_text(
        yaml.safe_dump({"instance": {"peers": {"pg-1": {"host": "h1", "port": 5432},
                                               "pg-2": {"host": "h2", "port": 5433}}}})
    )  # fmt: skip
    s = settings_module.load(document, {}, flags)
    assert standby.slot_name(s) == "_cnpg_pg_2"
    seen = view.build(s.cluster, "pg-2", s.instance.peers or {}, {"pg-1": claim("pg-1", "1")})
    wanted = standby.recovery_settings(s, seen)
    assert wanted["primary_slot_name"] == "_cnpg_pg_2"
    conninfo = wanted["primary_conninfo"]
    for part in ("host=h1", "port=5432", "user=streaming_replica", "application_name=pg-2",
                 "tcp_user_timeout=5000", "dbname=postgres"):  # fmt: skip
        assert part in conninfo.split()


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ({"Pg_1": {"host": "h", "port": 1}}, "is not a pod name"),
        ({"pg-1": {"host": "", "port": 1}}, "host"),
        ({"pg-1": {"host": "h", "port": 0}}, "port"),
        ({"pg-1": {"host": "h", "port": 70000}}, "port"),
        ({"pg-3": {"host": "h", "port": 5}}, "this instance (pg-1) is not among them"),
    ],
)
def test_peers_are_validated(tmp_path: Path, peers: dict[str, object], message: str) -> None:
    document = tmp_path / "cluster.yaml"
    document.write_text(yaml.safe_dump({"instance": {"peers": peers}}))
    with pytest.raises(SettingsError, match=r"instance\.peers") as raised:
        settings_module.load(document, {}, {"pgData": str(tmp_path / "d"), "podName": "pg-1"})
    assert message in str(raised.value)


def cli_args(document: Path, command: str, to: str) -> argparse.Namespace:
    return argparse.Namespace(command=command, to=to, config=document, timeout=1.0)


@pytest.mark.parametrize(
    ("command", "to", "message"),
    [
        ("switchover", "pg-9", "pg-9 is not an instance of this cluster"),
        ("switchover", "pg-1", "pg-1 is already the primary"),
        ("failover", "pg-3", "pg-3 is not running as a standby"),
        ("switchover", "pg-2", "pg-2 is not a ready streaming standby"),
    ],
)
def test_the_commands_refuse_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, to: str, message: str
) -> None:
    document = tmp_path / "cluster.yaml"
    peers = {f"pg-{i}": {"host": "127.0.0.1", "port": 1, "statusPort": 1} for i in (1, 2, 3)}
    document.write_text(yaml.safe_dump({"instance": {"peers": peers}}))
    directory = reports.reports_dir(document)
    reports.write(directory, claim("pg-1", "1"))
    reports.write(directory, Report(name="pg-2", role="replica", ready=False))
    before = document.read_bytes()
    assert cli.main(cli_args(document, command, to)) == cli.EXIT_REFUSED
    assert message in capsys.readouterr().err
    assert document.read_bytes() == before


def test_failover_writes_the_target_keeping_mode_and_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = tmp_path / "cluster.yaml"
    peers = {f"pg-{i}": {"host": "127.0.0.1", "port": 1, "statusPort": 1} for i in (1, 2)}
    document.write_text(yaml.safe_dump({"spec": {"instances": 2}, "instance": {"peers": peers}}))
    os.chmod(document, 0o640)
    reports.write(reports.reports_dir(document), Report(name="pg-2", role="replica"))
    assert cli.main(cli_args(document, "failover", "pg-2")) == cli.EXIT_TIMEOUT
    written = yaml.safe_load(document.read_text())
    assert written["status"] == {"targetPrimary": "pg-2"}
    assert written["spec"] == {"instances": 2}
    assert stat.S_IMODE(document.stat().st_mode) == 0o640
    assert "timed out after 1 s waiting: pg-2 is the current primary" in capsys.readouterr().out
