"""Configuration changes: reload confirmed by hash, pending restarts reported."""

from __future__ import annotations

import signal
from collections.abc import Callable

import psycopg

from tests.daemon import Daemon, Instance, base_spec

Start = Callable[..., Daemon]


def show(inst: Instance, name: str) -> str:
    with psycopg.connect(inst.conninfo(), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SHOW {name}".encode()).fetchone()
    assert row is not None
    return str(row[0])


def written_hash(inst: Instance) -> str:
    last = (inst.pgdata / "custom.conf").read_text().splitlines()[-1]
    return last.split("'")[1]


def with_params(**params: str) -> dict[str, object]:
    spec = base_spec()
    spec["postgresql"]["parameters"].update(params)  # type: ignore[index]
    return spec


def test_sighup_reloads_and_confirms_the_hash(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    instance.write_config(with_params(work_mem="7MB"))
    daemon.signal(signal.SIGHUP)
    applied = daemon.wait_log("configuration applied", count=2)
    assert applied["config_sha256"] == written_hash(instance)
    assert show(instance, "work_mem") == "7MB"
    assert show(instance, "cnpg.config_sha256") == written_hash(instance)
    assert daemon.stop() == 0


def test_restart_only_parameter_is_reported_pending(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    spec = with_params(shared_buffers="64MB")
    spec["primaryUpdateStrategy"] = "supervised"  # else it restarts itself (test_rolling_single)
    instance.write_config(spec)
    daemon.signal(signal.SIGHUP)
    pending = daemon.wait_log("configuration applied; some parameters need a restart")
    assert "shared_buffers" in pending["pending_restart"]
    assert pending["config_sha256"] == written_hash(instance)
    assert show(instance, "shared_buffers") != "64MB"
    assert daemon.stop() == 0


def test_invalid_new_settings_keep_the_running_ones(instance: Instance, daemons: Start) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    before = (instance.pgdata / "custom.conf").read_text()
    instance.write_config(base_spec(stopDelay=-5))
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_log("new settings refused; keeping the running ones")
    assert "spec.stopDelay" in refused["error"]
    assert (instance.pgdata / "custom.conf").read_text() == before
    assert daemon.stop() == 0


def test_managed_parameter_is_ignored_with_a_warning(instance: Instance, daemons: Start) -> None:
    instance.write_config(with_params(port="1", restart_after_crash="on"))
    daemon = daemons(instance)
    daemon.wait_ready()
    ignored = {
        line["parameter"] for line in daemon.find("ignoring a parameter the instance manager owns")
    }
    assert ignored == {"port", "restart_after_crash"}
    assert show(instance, "port") == str(instance.pg_port)
    assert show(instance, "restart_after_crash") == "off"
    assert daemon.stop() == 0


def test_editing_the_settings_file_reloads_without_a_signal(
    instance: Instance, daemons: Start
) -> None:
    daemon = daemons(instance)
    daemon.wait_ready()
    daemon.wait_log("configuration applied")
    instance.write_config(with_params(work_mem="9MB"))
    daemon.wait_log("settings file changed")
    daemon.wait_log("configuration applied", count=2)
    assert show(instance, "work_mem") == "9MB"
    assert daemon.stop() == 0
