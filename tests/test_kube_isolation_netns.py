"""Kubernetes mode: a primary cut off from the API server and its peers by a real network
cut fails liveness within the configured time, keeps its PostgreSQL, and heals.

``pg-1`` (the primary) runs, daemon and PostgreSQL, inside a network namespace joined to
the root namespace by a veth pair (tests/netns_kit.py); ``pg-2`` and ``pg-3`` run in the
root namespace on the outside end's address. The API server listens on 127.0.0.1 only, so
a relay on the outside address (tests/tcp_relay.py) puts it within ``pg-1``'s reach; its
kubeconfig names the server certificate's DNS name ``kubernetes``. Taking the outside end
down cuts ``pg-1`` off from the API server and both peers at once. ``/healthz`` is asked
from inside the namespace, the only place that still reaches it.

The primary Lease is configured to outlast the test: with its defaults a primary that
cannot renew it stops PostgreSQL after ``renewDeadlineSeconds`` (10 s), by design; what is
tested here is that the isolation check itself never stops it in Kubernetes mode.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon import PG_BIN, TEST_HBA, Daemon, Instance, pid_alive, postmaster_pid, wait_for
from tests.kube_cluster_kit import CLUSTER, NAMES, KubeTrio, kube_apiserver, kube_trio
from tests.kube_kit import ApiServer
from tests.netns_kit import PodNet, pod_net
from tests.tcp_relay import Relay

pytestmark = [pytest.mark.slow, pytest.mark.kube]
__all__ = ["kube_apiserver", "kube_trio", "pod_net"]

LIVENESS_TIMEOUT = 10  # spec.livenessProbeTimeout, seconds: the kubelet's window
CHECK = {"requestTimeout": 300, "connectionTimeout": 300}  # milliseconds
HEAL_TIMEOUT = 30.0
# The primary Lease (kube/lease.py) held well past the test: a primary that cannot renew it
# stops acting as primary after renewDeadlineSeconds, which is not what is tested here.
LEASE = {"leaseDurationSeconds": 600, "renewDeadlineSeconds": 500, "retryPeriodSeconds": 2}
TLS_NAME = "kubernetes"  # a DNS name of the test API server's certificate
STANDBYS = ("pg-2", "pg-3")


def hosted(inst: Instance, host: str) -> Instance:
    return dataclasses.replace(inst, host=host)


@pytest.fixture
def api_relay(pod_net: PodNet, kube_apiserver: ApiServer) -> Iterator[Relay]:
    """The API server's port, relayed on the veth pair's outside address."""
    relay = Relay(pod_net.host_address, kube_apiserver.port, "127.0.0.1", kube_apiserver.port)
    try:
        yield relay
    finally:
        relay.stop()


def write_kubeconfig(trio: KubeTrio, relay: Relay, dest: Path) -> Path:
    api = trio.api
    server = {
        "server": f"https://{relay.host}:{relay.port}",
        "certificate-authority": api.ca_file,
        "tls-server-name": TLS_NAME,
    }
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": "test", "user": {"tokenFile": api.token_file}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }
    dest.write_text(yaml.safe_dump(doc))
    os.chmod(dest, 0o644)
    return dest


def start_member(
    trio: KubeTrio, name: str, host: str, instance: dict[str, str], **options: Any
) -> Daemon:
    """Start ``name`` listening on ``host`` only, with these instance options in its
    configuration file (``options``: Daemon's ``prefix`` and ``env``)."""
    inst = trio.members[name] = hosted(trio.members[name], host)
    doc = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "instance": instance}
    inst.config_file.write_text(yaml.safe_dump(doc))  # the Cluster comes from the API
    daemon = Daemon(
        inst,
        "--pod-name", name,
        "--cluster-name", CLUSTER,
        "--namespace", trio.namespace,
        "--plugin-socket-dir", str(trio.plugin.socket_dir),
        "--listen-addresses", host,
        "--status-host", host,
        **options,
    )  # fmt: skip
    trio.daemons[name] = daemon
    return daemon


def start_all(trio: KubeTrio, net: PodNet, relay: Relay) -> None:
    """pg-1 inside the namespace, reaching the API server through the relay; the standbys
    outside, on the outside address, reaching it directly."""
    kubeconfig = write_kubeconfig(trio, relay, trio.members["pg-1"].root / "kubeconfig")
    env = {"POD_IP": net.address}
    instance = {"kubeconfig": str(kubeconfig)}
    start_member(trio, "pg-1", net.address, instance, prefix=net.prefix(), env=env)
    env = {**trio.api.env(), "POD_IP": net.host_address}
    for name in STANDBYS:
        start_member(trio, name, net.host_address, {}, env=env)


def healthz_inside(trio: KubeTrio, net: PodNet) -> tuple[int, str]:
    """pg-1's /healthz, asked from inside the namespace: (status or 0, body)."""
    url = trio.members["pg-1"].url("/healthz")
    done = net.run("curl", "-sS", "-m", "3", "-w", "\n%{http_code}", url)
    body, _, code = done.stdout.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body or done.stderr


def accepts_inside(trio: KubeTrio, net: PodNet) -> bool:
    """pg-1's PostgreSQL accepts connections, asked from inside the namespace."""
    inst = trio.members["pg-1"]
    argv = (str(PG_BIN / "pg_isready"), "-q", "-h", net.address, "-p", str(inst.pg_port))
    return net.run(*argv).returncode == 0


def configure(trio: KubeTrio, net: PodNet) -> None:
    """The isolation check with short timeouts, and pg_hba rules for the pair's subnet."""
    subnet = net.host_address.rsplit(".", 1)[0] + ".0/24"
    hba = [*TEST_HBA, f"host all all {subnet} trust", f"host replication all {subnet} trust"]
    trio.patch_spec(
        {
            "livenessProbeTimeout": LIVENESS_TIMEOUT,
            "primaryLease": LEASE,
            "probes": {"liveness": {"isolationCheck": CHECK}},
            "postgresql": {"pg_hba": hba},
        }
    )


def started(trio: KubeTrio, net: PodNet, relay: Relay) -> None:
    configure(trio, net)
    start_all(trio, net, relay)
    try:
        for name in NAMES:
            trio.daemons[name].wait_ready(180)
        trio.wait_streaming("pg-1", set(STANDBYS))
        wait_for(lambda: trio.current_primary() == "pg-1", 30, "status.currentPrimary pg-1")
        wait_for(lambda: healthz_inside(trio, net) == (200, "OK"), 30, "pg-1's liveness")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{trio.tails()}") from None
    assert trio.report("pg-2")["ip"] == net.host_address
    assert trio.report("pg-1")["ip"] == net.address


def test_a_primary_cut_off_fails_liveness_in_time_keeps_postgres_and_heals(
    pod_net: PodNet, api_relay: Relay, kube_trio: KubeTrio
) -> None:
    trio, net = kube_trio, pod_net
    started(trio, net, api_relay)
    pg1 = trio.daemons["pg-1"]
    postmaster = postmaster_pid(pg1.inst.pgdata)
    assert pid_alive(postmaster)

    cut = time.monotonic()
    net.cut()
    assert not net.carrier()
    try:
        _, text = wait_for(
            lambda: (found := healthz_inside(trio, net))[0] == 500 and found,
            LIVENESS_TIMEOUT,
            "pg-1's liveness to fail within livenessProbeTimeout of the cut",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{trio.tails()}") from None
    failed_after = time.monotonic() - cut
    assert "instance connectivity error" in text and "[pg-2]" in text and "[pg-3]" in text, text
    assert net.host_address in text, text

    # Past the window in which the kubelet restarts the pod, the daemon still has not
    # fenced itself: PostgreSQL runs and accepts connections; liveness still fails.
    def window_over() -> bool:
        assert pid_alive(postmaster) and pg1.proc.poll() is None, pg1.tail(60)
        return time.monotonic() - cut > LIVENESS_TIMEOUT + 5

    wait_for(window_over, LIVENESS_TIMEOUT + 30, "the liveness window to pass")
    assert healthz_inside(trio, net)[0] == 500
    assert accepts_inside(trio, net)
    assert pg1.find("the primary is isolated: liveness fails"), pg1.tail(60)
    assert not pg1.find("isolated for longer than livenessProbeTimeout: fencing this primary")
    assert not pg1.find("fenced: PostgreSQL stopped"), pg1.tail(60)

    heal = time.monotonic()
    net.heal()
    try:
        wait_for(lambda: healthz_inside(trio, net) == (200, "OK"), HEAL_TIMEOUT, "liveness back")
        healed_after = time.monotonic() - heal
        pg1.wait_log("the primary reaches its cluster again")
        trio.wait_streaming("pg-1", set(STANDBYS))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{trio.tails()}") from None
    assert postmaster_pid(pg1.inst.pgdata) == postmaster and pid_alive(postmaster)
    assert trio.sql("pg-1", "SELECT pg_is_in_recovery()") == [(False,)]
    assert trio.current_primary() == "pg-1"
    for name in NAMES:
        daemon = trio.daemons[name]
        assert daemon.proc.poll() is None, f"{name} exited:\n{daemon.tail(60)}"
        assert daemon.find("instance manager failed") == [], daemon.tail(60)
    print(f"liveness failed {failed_after:.1f} s after the cut, back {healed_after:.1f} s after")
