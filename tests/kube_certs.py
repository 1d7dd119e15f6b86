"""TLS material the way CloudNativePG's operator keeps it: a CA and leaves in Secrets.

The test plays the operator: it signs a server certificate and the ``streaming_replica``
client certificate with one CA (made here with ``cryptography``, independently of the
daemon's own cluster/certs.py), stores them in ``kubernetes.io/tls`` Secrets and names the
Secrets in ``status.certificates``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kube_api import ApiServer

CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass
class Pair:
    certificate: bytes  # PEM
    key: bytes  # PEM


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    def __init__(self, common_name: str = "test-operator-ca") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(CA_USAGE, critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(name: str, pair: Pair) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(pair.certificate), "tls.key": b64(pair.key)},
    }


def ca_secret(name: str, authority: Authority) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {"ca.crt": b64(authority.pem)},
    }


def secrets_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return base if name is None else f"{base}/{name}"


def server_pair(authority: Authority, cluster: str) -> Pair:
    return authority.issue(f"{cluster}-rw", ips=("127.0.0.1",), dns=(f"{cluster}-rw",))


def publish(api: ApiServer, namespace: str, cluster: str, authority: Authority) -> dict[str, str]:
    """The operator's Secrets for ``cluster``; returns ``status.certificates``."""
    names = {
        "serverTLSSecret": f"{cluster}-server",
        "replicationTLSSecret": f"{cluster}-replication",
        "serverCASecret": f"{cluster}-ca",
        "clientCASecret": f"{cluster}-ca",
    }
    path = secrets_path(namespace)
    api.create(path, tls_secret(names["serverTLSSecret"], server_pair(authority, cluster)))
    replication = authority.issue("streaming_replica")
    api.create(path, tls_secret(names["replicationTLSSecret"], replication))
    api.create(path, ca_secret(names["serverCASecret"], authority))
    return names


def rotate_server(
    api: ApiServer, namespace: str, secret: str, authority: Authority, cluster: str
) -> Pair:
    """A new server certificate and key in the same Secret (what cert-manager does)."""
    pair = server_pair(authority, cluster)
    data = {"tls.crt": b64(pair.certificate), "tls.key": b64(pair.key)}
    api.merge_patch(secrets_path(namespace, secret), {"data": data})
    return pair
