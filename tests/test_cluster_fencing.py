"""Standalone cluster: fencing through the document's ``cnpg.io/fencedInstances`` annotation.

A fenced instance's PostgreSQL is stopped while its daemon keeps serving (``/readyz`` 500,
``/startupz`` Skipped, ``cnpg_collector_fencing_on 1``, ``fenced`` in its report); it
starts no PostgreSQL after a restart of the daemon; lifting the fence starts it again.
Once fenced, a primary answers the operator's ``/pg/archive/partial`` for real.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.api_helpers import Certs, make_certs, operator_status
from tests.cluster_kit import NAMES, Trio
from tests.cluster_kit import three_instances as three_instances  # the fixture
from tests.daemon import Instance, http_get, postgres_runs, wait_for

pytestmark = pytest.mark.slow


def started(trio: Trio) -> None:
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        for daemon in trio.daemons.values():
            daemon.wait_ready()
    except AssertionError:
        raise AssertionError(trio.tails()) from None


def fence(trio: Trio, names: list[str] | None) -> None:
    trio.annotations.clear()
    if names is not None:
        trio.annotations["cnpg.io/fencedInstances"] = json.dumps(names)
    trio.write_document()


def metric(inst: Instance, name: str) -> str:
    """The value of the sample ``name``; "" until the metrics server answers."""
    status, text = http_get(f"http://127.0.0.1:{inst.metrics_port}/metrics", 5.0)
    if status != 200:
        return ""
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return lines[0].split()[1] if lines else ""


def wait_fenced(trio: Trio, name: str) -> None:
    inst = trio.members[name]
    try:
        wait_for(lambda: trio.report(name).get("fenced") is True, 30, f"{name} reports fenced")
        wait_for(lambda: not postgres_runs(inst.pgdata), 60, f"{name}'s PostgreSQL stopped")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    assert http_get(inst.url("/readyz"))[0] == 500
    assert http_get(inst.url("/startupz")) == (200, "Skipped")
    assert http_get(inst.url("/healthz")) == (200, "OK")  # the daemon itself is alive
    wait_for(lambda: metric(inst, "cnpg_collector_fencing_on") == "1", 30, "fencing_on 1")


def test_fencing_one_instance_on_and_off_across_a_daemon_restart(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    fence(trio, ["pg-2"])
    wait_fenced(trio, "pg-2")
    assert postgres_runs(trio.members["pg-1"].pgdata) and postgres_runs(trio.members["pg-3"].pgdata)
    trio.wait_streaming("pg-1", {"pg-3"})
    assert trio.daemons["pg-2"].find("instance fenced")

    # A restarted daemon reads the annotation before its first start: no PostgreSQL.
    assert trio.daemons["pg-2"].stop() == 0
    daemon = trio.start("pg-2")
    daemon.wait_log("fenced: PostgreSQL stays down")
    wait_for(lambda: http_get(trio.members["pg-2"].url("/readyz"), 1.0)[0] == 500, 30, "/readyz")
    assert not postgres_runs(trio.members["pg-2"].pgdata)
    assert daemon.find("PostgreSQL is accepting connections") == []

    fence(trio, None)
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"}, timeout=60)
    daemon.wait_ready()
    wait_for(lambda: trio.report("pg-2").get("fenced") is False, 30, "pg-2 no longer fenced")
    wait_for(lambda: metric(trio.members["pg-2"], "cnpg_collector_fencing_on") == "0", 30, "0")

    # A daemon killed while its PostgreSQL ran: fenced at the restart, it stops that one.
    trio.daemons["pg-3"].kill()
    assert postgres_runs(trio.members["pg-3"].pgdata)
    fence(trio, ["pg-3"])
    try:
        trio.start("pg-3").wait_log("fenced: PostgreSQL stopped")
        wait_for(lambda: not postgres_runs(trio.members["pg-3"].pgdata), 30, "pg-3 stopped")
    except AssertionError:
        raise AssertionError(trio.daemons["pg-3"].tail(40)) from None
    assert trio.daemons["pg-3"].find("PostgreSQL is accepting connections") == []


def test_fencing_every_instance_with_a_star(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    fence(trio, ["*"])
    for name in NAMES:
        wait_fenced(trio, name)
    assert trio.current_primary() == "pg-1"  # the claim stays while fenced

    fence(trio, None)
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"}, timeout=90)
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(False,)]
    for name in NAMES:
        trio.daemons[name].wait_ready()
    assert trio.current_primary() == "pg-1"


def test_invalid_annotation_fences_nobody(three_instances: Trio) -> None:
    trio = three_instances
    started(trio)
    trio.annotations["cnpg.io/fencedInstances"] = '["pg-2"'  # not JSON
    trio.write_document()
    trio.daemons["pg-2"].wait_log("settings file changed")
    fence(trio, ["pg-3"])  # a later valid one is followed: the invalid one was read
    wait_fenced(trio, "pg-3")
    assert postgres_runs(trio.members["pg-2"].pgdata)
    assert trio.report("pg-2").get("fenced") is False


def post_partial(trio: Trio, name: str, certs: Certs) -> tuple[int, Any]:
    """The operator's POST /pg/archive/partial over mTLS (server checked against the
    cluster CA)."""
    context = ssl.create_default_context(cafile=str(trio.root / "doc/cluster.yaml.certs/ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(
        str(certs.directory / "operator.crt"), str(certs.directory / "operator.key")
    )
    url = f"https://127.0.0.1:{trio.members[name].status_port}/pg/archive/partial"
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_fenced_primary_archives_its_partial_segment(
    three_instances: Trio, tmp_root: Path
) -> None:
    trio = three_instances
    certs = make_certs(tmp_root / "operator-certs")
    trio.status.update(operator_status(certs, targetPrimary="pg-1", currentPrimary="pg-1"))
    trio.instance_options["statusPortTLS"] = True
    trio.write_document()
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
        wait_for(lambda: trio.report("pg-1").get("ready"), 60, "pg-1 ready")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    wait_for(lambda: post_partial(trio, "pg-1", certs)[0] == 400, 30, "the operator API")
    status, body = post_partial(trio, "pg-1", certs)
    assert (status, body["error"]["code"]) == (400, "NOT_FENCED")

    fence(trio, ["pg-1"])
    try:
        wait_for(lambda: trio.report("pg-1").get("fenced") is True, 30, "pg-1 reports fenced")
        wait_for(lambda: not postgres_runs(trio.members["pg-1"].pgdata), 60, "pg-1 stopped")
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    status, body = post_partial(trio, "pg-1", certs)
    assert status == 200, body
    segment = body["data"]
    stored = trio.plugin.storage / f"{segment}.partial"
    wait_for(stored.exists, 30, f"{stored.name} in the archive")
    assert not list((trio.members["pg-1"].pgdata / "pg_wal").glob("*.partial"))

    fence(trio, None)
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"}, timeout=90)
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(False,)]
