"""Standalone cluster TLS: one CA beside the document, each instance's certificates under
SCRATCH/certificates, and streaming_replica authenticating with its client certificate.

Certificates are made as the daemon makes them: by ``certs.ensure`` in a process running as
the ``postgres`` account. The primary is a real daemon started on pre-made certificates.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from instance_manager import settings as settings_mod
from instance_manager.cluster import certs
from instance_manager.settings import Peer
from tests.daemon import PG_BIN, PYTHON, Daemon, Instance, base_spec, chown_tree, pg_user

AS_POSTGRES: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []}

# Imports first, then waits for a line on stdin: several children started together race
# on creating the CA, not on importing.
CHILD = """
import json, sys
from pathlib import Path
from cryptography import x509
from instance_manager import settings
from instance_manager.cluster import certs
doc, scratch, pod, host = sys.argv[1:5]
peers = {pod: {"host": host, "port": 5432}}
flags = {"pgData": scratch + "/pg", "scratchDir": scratch, "podName": pod, "peers": peers}
loaded = settings.load(None, {}, flags)
sys.stdin.readline()
print(json.dumps(certs.ensure(loaded, Path(doc))))
"""


def start_child(document: Path, scratch: Path, pod: str, host: str) -> subprocess.Popen[str]:
    if not scratch.exists():
        scratch.mkdir()
        chown_tree(scratch)
    argv = [PYTHON, "-c", CHILD, str(document), str(scratch), pod, host]
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=document.parent,
        **AS_POSTGRES,
    )


def finish_child(child: subprocess.Popen[str]) -> bool:
    out, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 0, err
    changed: bool = json.loads(out.splitlines()[-1])
    return changed


def ensure_as_postgres(document: Path, scratch: Path, pod: str, host: str = "10.1.2.3") -> bool:
    return finish_child(start_child(document, scratch, pod, host))


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def alternative_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


def snapshot(*directories: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in directories for p in sorted(d.iterdir())}


LEAVES = ("server.crt", "server.key", "streaming_replica.crt", "streaming_replica.key")
CA_COPIES = ("server-ca.crt", "client-ca.crt")


def test_certificates_are_private_to_the_account_and_signed_by_the_cluster_ca(
    tmp_root: Path,
) -> None:
    document = tmp_root / "cluster.yaml"
    scratch = tmp_root / "c"
    assert ensure_as_postgres(document, scratch, "pod-1", "10.1.2.3")
    ca_dir, cert_dir = tmp_root / "cluster.yaml.certs", scratch / "certificates"
    assert certs.ca_dir(document) == ca_dir
    uid = pg_user().pw_uid
    for directory in (ca_dir, cert_dir):
        info = directory.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, uid), directory
    files = [ca_dir / "ca.crt", ca_dir / "ca.key"] + [cert_dir / n for n in LEAVES + CA_COPIES]
    for path in files:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, uid), path
    assert sorted(p.name for p in cert_dir.iterdir()) == sorted(LEAVES + CA_COPIES)
    ca_pem = (ca_dir / "ca.crt").read_bytes()
    assert all((cert_dir / n).read_bytes() == ca_pem for n in CA_COPIES)
    ca = load_cert(ca_dir / "ca.crt")
    server, client = (
        load_cert(cert_dir / "server.crt"),
        load_cert(cert_dir / "streaming_replica.crt"),
    )
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime == certs.LEAF_VALIDITY
    assert common_name(server) == "pod-1"
    assert alternative_names(server) == ["pod-1", "10.1.2.3", "localhost", "127.0.0.1"]
    assert common_name(client) == "streaming_replica"
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_restart_reuses_everything(tmp_root: Path) -> None:
    document, scratch = tmp_root / "cluster.yaml", tmp_root / "c"
    assert ensure_as_postgres(document, scratch, "pod-1")
    before = snapshot(tmp_root / "cluster.yaml.certs", scratch / "certificates")
    assert not ensure_as_postgres(document, scratch, "pod-1")
    assert snapshot(tmp_root / "cluster.yaml.certs", scratch / "certificates") == before


@pytest.mark.slow
def test_daemons_starting_together_agree_on_one_ca(tmp_root: Path) -> None:
    for round_ in range(3):
        document = tmp_root / f"cluster{round_}.yaml"
        children = [
            start_child(document, tmp_root / f"s{round_}-{i}", f"pod-{i}", "127.0.0.1")
            for i in range(4)
        ]
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        assert all(finish_child(child) for child in children)
        ca_pem = (tmp_root / f"cluster{round_}.yaml.certs" / "ca.crt").read_bytes()
        ca = x509.load_pem_x509_certificate(ca_pem)
        for i in range(4):
            cert_dir = tmp_root / f"s{round_}-{i}" / "certificates"
            assert (cert_dir / "server-ca.crt").read_bytes() == ca_pem
            load_cert(cert_dir / "server.crt").verify_directly_issued_by(ca)
    leftovers = [p.name for p in tmp_root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def in_process_settings(root: Path, pod: str = "pod-1") -> settings_mod.Settings:
    flags = {"pgData": str(root / "pg"), "scratchDir": str(root / "c"), "podName": pod}
    (root / "c").mkdir(exist_ok=True)
    return settings_mod.load(None, {}, flags)


def sign_expiring(ca_dir: Path, out: Path, days: float) -> None:
    """A streaming_replica certificate from the cluster CA that ends in ``days``."""
    ca = load_cert(ca_dir / "ca.crt")
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streaming_replica")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    (out / "streaming_replica.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "streaming_replica.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def test_leaves_are_issued_again_when_expiring_missing_renamed_or_from_another_ca(
    tmp_path: Path,
) -> None:
    settings = in_process_settings(tmp_path)
    document = tmp_path / "cluster.yaml"
    cert_dir, ca_dir = settings.certificates_dir, certs.ca_dir(document)
    peers = {"pod-1": Peer(host="10.0.0.1", port=5432)}
    assert certs.ensure(settings, document, peers)
    assert not certs.ensure(settings, document, peers)

    sign_expiring(ca_dir, cert_dir, days=30)  # beyond the renewal threshold: kept
    kept = (cert_dir / "streaming_replica.crt").read_bytes()
    assert not certs.ensure(settings, document, peers)
    assert (cert_dir / "streaming_replica.crt").read_bytes() == kept
    sign_expiring(ca_dir, cert_dir, days=3)  # within 7 days: issued again
    assert certs.ensure(settings, document, peers)
    renewed = load_cert(cert_dir / "streaming_replica.crt")
    assert renewed.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=80)

    (cert_dir / "server.key").unlink()
    assert certs.ensure(settings, document, peers)
    assert (cert_dir / "server.key").exists()

    assert certs.ensure(settings, document, {"pod-1": Peer(host="db1.example", port=5432)})
    assert "db1.example" in alternative_names(load_cert(cert_dir / "server.crt"))

    old_ca = (ca_dir / "ca.crt").read_bytes()
    for path in ca_dir.iterdir():
        path.unlink()
    assert certs.ensure(settings, document, peers)  # a new CA: every leaf is reissued
    new_ca = load_cert(ca_dir / "ca.crt")
    assert (ca_dir / "ca.crt").read_bytes() != old_ca
    assert (cert_dir / "client-ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    for leaf in ("server.crt", "streaming_replica.crt"):
        load_cert(cert_dir / leaf).verify_directly_issued_by(new_ca)


def test_an_expiring_ca_is_signed_again_with_its_key(tmp_path: Path) -> None:
    settings = in_process_settings(tmp_path)
    document = tmp_path / "cluster.yaml"
    ca_dir = certs.ca_dir(document)
    ca_dir.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=100))
        .not_valid_after(now + dt.timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (ca_dir / "ca.crt").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (ca_dir / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert certs.ensure(settings, document, {})
    renewed = load_cert(ca_dir / "ca.crt")
    assert renewed.subject == name and renewed.public_key() == key.public_key()
    assert renewed.not_valid_after_utc > now + dt.timedelta(days=3000)
    server = load_cert(settings.certificates_dir / "server.crt")
    server.verify_directly_issued_by(renewed)
    server.verify_directly_issued_by(old)  # peers still holding the old copy trust it too


def test_an_incomplete_ca_is_an_error_naming_it(tmp_path: Path) -> None:
    settings = in_process_settings(tmp_path)
    document = tmp_path / "cluster.yaml"
    certs.ensure(settings, document, {})
    (certs.ca_dir(document) / "ca.key").unlink()
    with pytest.raises(certs.CertificateError, match=r"cluster\.yaml\.certs"):
        certs.ensure(settings, document, {})


def test_a_document_directory_the_account_cannot_write_is_named(tmp_root: Path) -> None:
    shut = tmp_root / "shut"
    shut.mkdir(mode=0o755)  # root's: the postgres account cannot create the CA there
    child = start_child(shut / "cluster.yaml", tmp_root / "c", "pod-1", "127.0.0.1")
    _, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 1
    assert f"cannot create the cluster CA in {shut}/cluster.yaml.certs" in err


def test_replication_conninfo_params(tmp_path: Path) -> None:
    settings = in_process_settings(tmp_path)
    cert_dir = settings.certificates_dir
    assert certs.replication_conninfo_params(settings) == {
        "user": "streaming_replica",
        "dbname": "postgres",
        "sslmode": "verify-ca",
        "sslcert": str(cert_dir / "streaming_replica.crt"),
        "sslkey": str(cert_dir / "streaming_replica.key"),
        "sslrootcert": str(cert_dir / "server-ca.crt"),
    }


# --- a real primary with ssl on ---------------------------------------------------------


def conninfo(params: dict[str, str]) -> str:
    assert not any(" " in value or "'" in value for value in params.values()), params
    return " ".join(f"{key}={value}" for key, value in params.items())


def libpq(inst: Instance, argv: list[str], conninfo: str) -> subprocess.CompletedProcess[str]:
    """A libpq client as the postgres account, HOME in the test's directory (no
    ~/.postgresql defaults), connecting with ``conninfo``."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(inst.root), "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        [str(PG_BIN / argv[0]), *argv[1:], "-d", conninfo],
        capture_output=True,
        text=True,
        env=env,
        cwd=inst.root,
        timeout=60,
        **AS_POSTGRES,
    )


@pytest.mark.slow
def test_streaming_replica_connects_with_its_certificate_only(
    instance: Instance, daemons: Any
) -> None:
    # Only postgres is trusted; streaming_replica has no password, so only `cert` lets it in.
    trusted = ["host all postgres 127.0.0.1/32 trust"]
    instance.write_config(base_spec(postgresql={"pg_hba": trusted}))
    document = yaml.safe_load(instance.config_file.read_text())
    peer = {"host": "127.0.0.1", "port": instance.pg_port, "statusPort": instance.status_port}
    document["instance"] = {"peers": {"test-1": peer}}
    instance.config_file.write_text(yaml.safe_dump(document))
    assert ensure_as_postgres(instance.config_file, instance.scratch, "test-1", "127.0.0.1")
    daemon: Daemon = daemons(instance)
    daemon.wait_ready(60)
    hba = (instance.pgdata / "pg_hba.conf").read_text()
    assert hba.index("hostssl replication streaming_replica all cert") < hba.index(trusted[0])

    settings = in_process_settings(instance.root, "test-1")
    params = {"host": "127.0.0.1", "port": str(instance.pg_port)}
    params |= certs.replication_conninfo_params(settings)
    with_cert = conninfo(params)
    query = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    done = libpq(instance, ["psql", "-XAtc", query], with_cert)
    assert (done.returncode, done.stdout.strip()) == (0, "t|TLSv1.3"), done.stderr
    done = libpq(instance, ["psql", "-XAtc", "IDENTIFY_SYSTEM"], with_cert + " replication=true")
    assert done.returncode == 0, done.stderr

    no_cert = {k: v for k, v in params.items() if k not in ("sslcert", "sslkey")}
    refusals = {
        "requires a valid client certificate": no_cert,
        "no password supplied": no_cert | {"sslmode": "disable"},
        "protocol version": params | {"ssl_max_protocol_version": "TLSv1.2"},
    }
    for why, refused in refusals.items():
        done = libpq(instance, ["psql", "-XAtc", "SELECT 1"], conninfo(refused))
        assert done.returncode != 0 and why in done.stderr, (refused, done.stderr)

    backup = instance.root / "backup"
    done = libpq(instance, ["pg_basebackup", "-D", str(backup), "-X", "stream", "-c", "fast"],
                 with_cert)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (backup / "PG_VERSION").is_file()
    assert daemon.stop() == 0, daemon.tail()


def test_importing_the_module_does_not_load_cryptography() -> None:
    probe = "import sys, instance_manager.cluster.certs; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
