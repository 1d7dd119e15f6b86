"""Kubernetes mode: TLS material from the Secrets the Cluster status names, its rotation,
and the operator's pinned certificate read from the status."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.api_helpers import make_certs, openssl_fingerprint
from tests.kube_certs import Authority, publish, rotate_server, secrets_path
from tests.kube_cluster_kit import NAMES, KubeTrio, kube_apiserver, kube_trio, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kube]
__all__ = ["kube_apiserver", "kube_trio"]


def served_certificate(port: int) -> bytes:
    """The DER certificate a TLS port presents to a new connection."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def postgres_certificate(port: int) -> bytes:
    """The DER certificate PostgreSQL presents (openssl's STARTTLS for postgres)."""
    out = subprocess.run(
        ["openssl", "s_client", "-starttls", "postgres", "-connect", f"127.0.0.1:{port}"],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    ).stdout
    begin = out.find(b"-----BEGIN CERTIFICATE-----")
    end = out.find(b"-----END CERTIFICATE-----")
    assert begin >= 0 and end > begin, out[-2000:]
    pem = out[begin : end + len(b"-----END CERTIFICATE-----")].decode()
    return ssl.PEM_cert_to_DER_cert(pem)


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def post_partial(trio: KubeTrio, name: str, certs_dir: Path, who: str) -> int:
    """The operator's POST /pg/archive/partial over mTLS with ``who``'s certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(certs_dir / f"{who}.crt"), str(certs_dir / f"{who}.key"))
    port = trio.members[name].status_port
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request("POST", "/pg/archive/partial", body=b"")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_certificates_come_from_secrets_rotate_live_and_the_operator_is_pinned_by_status(
    kube_trio: KubeTrio, tmp_root: Path
) -> None:
    trio = kube_trio
    authority = Authority()
    names = publish(trio.api, trio.namespace, "trio", authority)
    operator = make_certs(tmp_root / "operator")
    trio.set_status(certificates=names, operatorCertificateFingerprint=operator.fingerprint)
    trio.instance_options.update(statusPortTLS=True, metricsPortTLS=True)
    trio.start_all()
    try:
        trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
    except AssertionError:
        raise AssertionError(trio.tails()) from None
    # Replication runs over TLS with the client certificate from the Secret.
    rows = trio.sql(
        "pg-1",
        "SELECT s.ssl, s.client_dn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
    )
    assert len(rows) >= 2 and set(rows) == {(True, "/CN=streaming_replica")}, rows
    inst = trio.members["pg-1"]
    secret = trio.api.get(secrets_path(trio.namespace, names["serverTLSSecret"]))
    old = der(base64.b64decode(secret["data"]["tls.crt"]))
    assert postgres_certificate(inst.pg_port) == old
    assert served_certificate(inst.status_port) == old
    assert served_certificate(inst.metrics_port) == old

    # The operator is recognised by the fingerprint in the status; another certificate
    # is not, until the status names it (no restart, no file).
    wait_for(lambda: post_partial(trio, "pg-1", operator.directory, "operator") == 400, 30, "api")
    assert post_partial(trio, "pg-1", operator.directory, "intruder") == 503
    trio.set_status(operatorCertificateFingerprint=openssl_fingerprint(operator.intruder))
    wait_for(
        lambda: post_partial(trio, "pg-1", operator.directory, "intruder") == 400,
        30,
        "the new fingerprint in force",
    )
    assert post_partial(trio, "pg-1", operator.directory, "operator") == 503

    # A connection opened before the rotation keeps working after it.
    keep = http.client.HTTPSConnection(
        "127.0.0.1", inst.status_port, context=ssl._create_unverified_context(), timeout=10
    )
    keep.request("GET", "/healthz")
    assert keep.getresponse().read() is not None
    pids = {n: trio.daemons[n].proc.pid for n in NAMES}

    pair = rotate_server(trio.api, trio.namespace, names["serverTLSSecret"], authority, "trio")
    new = der(pair.certificate)
    for name in NAMES:
        member = trio.members[name]
        wait_for(lambda m=member: postgres_certificate(m.pg_port) == new, 60, f"{name} PostgreSQL")
        wait_for(lambda m=member: served_certificate(m.status_port) == new, 30, f"{name} :8000")
        wait_for(lambda m=member: served_certificate(m.metrics_port) == new, 30, f"{name} :9187")
    keep.request("GET", "/healthz")
    response = keep.getresponse()
    assert response.status == 200, response.read()
    keep.close()
    assert {n: trio.daemons[n].proc.pid for n in NAMES} == pids
    trio.wait_streaming("pg-1", {"pg-2", "pg-3"})
