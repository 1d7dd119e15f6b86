"""TLS material of standalone cluster mode, laid out as CloudNativePG's pods have it.

One certificate authority serves the whole cluster. It lives beside the Cluster document,
in ``<document name>.certs/`` (``ca.crt``, ``ca.key``, both 0600, in a 0700 directory),
and is created once by whichever daemon comes first: the pair is written into a private
temporary directory that is then renamed onto the final name, which fails when another
daemon got there first, so every daemon ends up using the same CA.

Each instance gets, under ``SCRATCH/certificates`` (0700), CloudNativePG's file names:
``server.crt``/``server.key`` (CN = pod name), ``streaming_replica.crt``/``.key`` (the
client certificate the replication role authenticates with) and the CA as both
``server-ca.crt`` and ``client-ca.crt``. ``postgres/config.py`` turns ``ssl`` on and adds
the ``hostssl ... streaming_replica ... cert`` rules once those files exist.

Keys are ECDSA P-256 and leaves last 90 days, as CloudNativePG's; a leaf is issued again
when it is missing, unreadable, does not match its key, names other hosts, expires within
seven days or was not signed by the current CA. ``cryptography`` is imported only here, so
a single-instance start never loads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import ipaddress
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from instance_manager import log
from instance_manager.durable import fsync_dir
from instance_manager.errors import InstanceManagerError
from instance_manager.process.privileges import UnsafeDirectory, private_directory
from instance_manager.settings import Peer, Settings

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_CRT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CRT = "server.crt"
SERVER_KEY = "server.key"
SERVER_CA = "server-ca.crt"
CLIENT_CA = "client-ca.crt"
REPLICATION_USER = "streaming_replica"
REPLICATION_CRT = f"{REPLICATION_USER}.crt"
REPLICATION_KEY = f"{REPLICATION_USER}.key"

# CloudNativePG's defaults: leaves last 90 days and are renewed 7 days before they expire.
LEAF_VALIDITY = dt.timedelta(days=90)
RENEW_BEFORE = dt.timedelta(days=7)
# Nobody rotates the standalone CA by hand: it lasts ten years, and is re-signed with the
# same key (so every leaf stays valid) when it comes within RENEW_BEFORE of its end.
CA_VALIDITY = dt.timedelta(days=3650)
# Clocks of the machines involved may differ a little: certificates start 5 minutes back.
BACKDATE = dt.timedelta(minutes=5)

_logger = log.get()


class CertificateError(InstanceManagerError):
    """The cluster CA is unusable (incomplete, unreadable, key and certificate differ)."""


@dataclass(frozen=True)
class Authority:
    """The cluster CA: its certificate (also as PEM, what peers trust) and private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: bytes


def ca_dir(document: Path) -> Path:
    """``/dir/cluster.yaml`` -> ``/dir/cluster.yaml.certs``: that document's cluster CA
    (beside its ``.status`` directory of reports)."""
    return document.absolute().parent / f"{document.name}.certs"


def server_names(pod_name: str, peer_host: str | None) -> list[str]:
    """Subject alternative names of an instance's server certificate."""
    names = [pod_name, *([peer_host] if peer_host else []), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(names))


def replication_conninfo_params(settings: Settings) -> dict[str, str]:
    """The libpq keywords with which an instance connects to another as streaming_replica
    (primary_conninfo, pg_basebackup, pg_rewind), as CloudNativePG's GetPrimaryConnInfo:
    the client certificate, and the server's certificate checked against the cluster CA."""
    certs = settings.certificates_dir
    return {
        "user": REPLICATION_USER,
        "dbname": "postgres",
        "sslmode": "verify-ca",
        "sslcert": str(certs / REPLICATION_CRT),
        "sslkey": str(certs / REPLICATION_KEY),
        "sslrootcert": str(certs / SERVER_CA),
    }


def ensure(settings: Settings, document: Path, peers: Mapping[str, Peer] | None = None) -> bool:
    """Make this instance's certificates exist and be valid; True when a file changed.

    Call it in cluster mode only (``instance.peers`` present), as the account PostgreSQL
    runs as (after ``privileges.prepare``), through ``asyncio.to_thread`` (it blocks: key
    generation, fsync). Where: first thing in ``cluster/prepare.py``'s ``Preparer.run``,
    which the lifecycle awaits before each start: before a join's pg_basebackup (which
    authenticates with these files) and before the configuration files are written
    (``postgres/config.py`` turns ``ssl`` and pg_hba.conf's certificate rules on when the
    files exist). A running instance renews by calling it again (e.g. once a day from the
    reconciler) and requesting a reload when it returns True. ``document``: the Cluster
    document (``--config``); ``peers``: by default ``settings.instance.peers``, whose entry
    for this pod gives the host named in server.crt.
    """
    meta = settings.cluster.metadata
    authority = ensure_authority(ca_dir(document), meta.name, meta.namespace)
    directory = settings.certificates_dir
    try:
        private_directory(directory)
    except UnsafeDirectory as exc:
        raise CertificateError(str(exc)) from None
    pod = settings.instance.podName
    changed = [
        name
        for name in (SERVER_CA, CLIENT_CA)
        if write_private(directory / name, authority.pem, only_if_changed=True)
    ]
    known = peers if peers is not None else settings.instance.peers or {}
    peer = known.get(pod)
    names = server_names(pod, peer.host if peer else None)
    if _ensure_leaf(authority, directory, SERVER_CRT, SERVER_KEY, pod, names):
        changed.append(SERVER_CRT)
    if _ensure_leaf(authority, directory, REPLICATION_CRT, REPLICATION_KEY, REPLICATION_USER):
        changed.append(REPLICATION_CRT)
    if changed:
        log.event(_logger, "certificates written", directory=str(directory), files=changed)
    return bool(changed)


def ensure_authority(directory: Path, cluster_name: str, namespace: str) -> Authority:
    """The cluster CA in ``directory``, created when absent, re-signed when expiring."""
    if not (directory / CA_CRT).exists() and not (directory / CA_KEY).exists():
        try:
            _create_authority(directory, cluster_name, namespace)
        except OSError as exc:
            raise CertificateError(
                f"cannot create the cluster CA in {directory}: {exc.strerror}"
            ) from None
    authority = load_authority(directory)
    if _expiring(authority.certificate):
        authority = _renew_authority(directory, authority)
    return authority


def load_authority(directory: Path) -> Authority:
    """Read and check the CA pair; CertificateError naming the problem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pem = (directory / CA_CRT).read_bytes()
        key_pem = (directory / CA_KEY).read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"cluster CA in {directory}: {exc.strerror}: {exc.filename}"
        ) from None
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise CertificateError(f"cluster CA in {directory} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(certificate, key):
        raise CertificateError(f"cluster CA in {directory}: {CA_KEY} does not match {CA_CRT}")
    return Authority(certificate, key, pem)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.PEM)


def _same_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return bool(certificate.public_key() == key.public_key())


def _expiring(certificate: x509.Certificate) -> bool:
    """Not yet valid, or valid for less than RENEW_BEFORE."""
    now = _now()
    renew_at = certificate.not_valid_after_utc - RENEW_BEFORE
    return not certificate.not_valid_before_utc <= now < renew_at


def _sign_authority(key: ec.EllipticCurvePrivateKey, subject: x509.Name) -> x509.Certificate:
    """A self-signed CA certificate for ``key``: same key and subject, same CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    public = key.public_key()
    start = _now() - BACKDATE
    usage = dict.fromkeys(_KEY_USAGE_FLAGS, False) | {"key_cert_sign": True, "crl_sign": True}
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


# x509.KeyUsage takes every flag; the ones set are named where it is built.
_KEY_USAGE_FLAGS = (
    *("digital_signature", "content_commitment", "key_encipherment", "data_encipherment"),
    *("key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
)


def _create_authority(directory: Path, cluster_name: str, namespace: str) -> None:
    """Write a new CA pair in a private temporary directory and rename it to ``directory``;
    when another daemon renamed its own first, ours is discarded and theirs is used."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cluster_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, namespace),
        ]
    )
    key = _new_key()
    staging = directory.with_name(f".{directory.name}.{os.getpid()}.{secrets.token_hex(4)}")
    os.mkdir(staging, 0o700)
    try:
        write_private(staging / CA_KEY, _key_pem(key))
        write_private(staging / CA_CRT, _cert_pem(_sign_authority(key, subject)))
        try:
            os.rename(staging, directory)  # replaces nothing but an empty directory
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return
        fsync_dir(directory.parent)
        log.event(_logger, "cluster CA created", directory=str(directory))
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def _renew_authority(directory: Path, authority: Authority) -> Authority:
    """Re-sign the CA certificate with its own key: leaves it signed stay valid."""
    certificate = _sign_authority(authority.key, authority.certificate.subject)
    pem = _cert_pem(certificate)
    write_private(directory / CA_CRT, pem)
    log.event(_logger, "cluster CA renewed", directory=str(directory))
    return Authority(certificate, authority.key, pem)


def _leaf_is_valid(
    authority: Authority, cert_path: Path, key_path: Path, common_name: str, names: list[str]
) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate.verify_directly_issued_by(authority.certificate)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(certificate, key):
        return False
    cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cn] != [common_name] or _expiring(certificate):
        return False
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return not names
    return [str(name.value) for name in san.value] == names


def _ensure_leaf(
    authority: Authority,
    directory: Path,
    cert_name: str,
    key_name: str,
    common_name: str,
    names: list[str] | None = None,
) -> bool:
    """Issue the pair again unless the present one is valid; True when it was issued.
    ``names``: a server certificate with these alternative names; None: a client one."""
    cert_path, key_path = directory / cert_name, directory / key_name
    if _leaf_is_valid(authority, cert_path, key_path, common_name, names or []):
        for path in (cert_path, key_path):
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        return False
    key = _new_key()
    certificate = _issue(authority, key, common_name, names)
    write_private(key_path, _key_pem(key))
    write_private(cert_path, _cert_pem(certificate))
    return True


def _general_name(name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _issue(
    authority: Authority,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: list[str] | None,
) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    server = names is not None
    usage = dict.fromkeys(_KEY_USAGE_FLAGS, False) | {
        "digital_signature": True,
        "key_agreement": True,
        "key_encipherment": server,
    }
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    start = _now() - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if names:
        alternative = x509.SubjectAlternativeName([_general_name(n) for n in names])
        builder = builder.add_extension(alternative, critical=False)
    return builder.sign(authority.key, hashes.SHA256())


def write_private(path: Path, data: bytes, only_if_changed: bool = False) -> bool:
    """Replace ``path`` with ``data`` (0600) through a temporary file created exclusively
    beside it, fsync and rename. ``only_if_changed``: leave an equal file alone (its mode
    made 0600). Returns whether the file was written."""
    if only_if_changed:
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                if path.stat().st_mode & 0o077:
                    os.chmod(path, 0o600)
                return False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with open(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return True
