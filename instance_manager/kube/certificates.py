"""TLS material from the Secrets the Cluster status names, laid out as in standalone mode.

CloudNativePG's operator keeps the certificates in Secrets and names them in
``status.certificates``: ``serverTLSSecret`` and ``replicationTLSSecret`` (``tls.crt``,
``tls.key``), ``serverCASecret`` and ``clientCASecret`` (``ca.crt``). Their contents are
written under ``SCRATCH/certificates`` with the file names standalone mode uses
(cluster/certs.py), atomically and 0600, only when they changed; PostgreSQL's
configuration then turns TLS and the certificate rules on as it does there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from typing import Any

from instance_manager.cluster import certs
from instance_manager.kube.client import Kube
from instance_manager.process.privileges import private_directory
from instance_manager.settings import Settings

# status.certificates field -> (key in the Secret's data, file under SCRATCH/certificates)
SECRET_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "serverTLSSecret": (("tls.crt", certs.SERVER_CRT), ("tls.key", certs.SERVER_KEY)),
    "replicationTLSSecret": (
        ("tls.crt", certs.REPLICATION_CRT),
        ("tls.key", certs.REPLICATION_KEY),
    ),
    "serverCASecret": (("ca.crt", certs.SERVER_CA),),
    "clientCASecret": (("ca.crt", certs.CLIENT_CA),),
}


class MissingMaterial(Exception):
    pass


def names(status: Mapping[str, Any]) -> dict[str, str]:
    """The Secrets named in ``status.certificates``, by field."""
    found = status.get("certificates") or {}
    if not isinstance(found, dict):
        return {}
    return {f: str(found[f]) for f in SECRET_FILES if isinstance(found.get(f), str) and found[f]}


def files_of(field: str, secret: Mapping[str, Any]) -> dict[str, bytes]:
    """The files one Secret provides; MissingMaterial when a key is absent or not base64."""
    data = secret.get("data") or {}
    out = {}
    for key, file_name in SECRET_FILES[field]:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise MissingMaterial(f"Secret {secret.get('metadata', {}).get('name')}: no {key}")
        try:
            out[file_name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MissingMaterial(f"Secret {field}: {key} is not base64") from None
    return out


async def fetch(kube: Kube, status: Mapping[str, Any]) -> dict[str, bytes]:
    """Every file the named Secrets hold (KubeError when one cannot be read)."""
    wanted = names(status)
    secrets = await asyncio.gather(*(kube.get_secret(n) for n in wanted.values()))
    out: dict[str, bytes] = {}
    for field, secret in zip(wanted, secrets, strict=True):
        out.update(files_of(field, secret))
    return out


def write(settings: Settings, files: Mapping[str, bytes]) -> list[str]:
    """Write what changed (blocking); the names of the files written."""
    directory = settings.certificates_dir
    private_directory(directory)
    return [
        name for name, data in files.items() if certs.write_private(directory / name, data, True)
    ]
