"""Kubernetes mode's reading of the API objects: the Cluster model (unknown fields
dropped, used ones validated), the peers and reports in ``status.instancesReportedState``,
and the TLS files from the Secrets ``status.certificates`` names (fake API server)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from instance_manager.errors import SettingsError
from instance_manager.kube import model
from instance_manager.kube.client import Kube, Target
from instance_manager.kube.source import KubeSource
from instance_manager.settings import Peer, Settings
from tests.fake_apiserver import FakeApiServer
from tests.kube_fast_kit import ME, NAME, NS, OTHER, cluster_object, logged, source_of
from tests.kube_fast_kit import config as config
from tests.kube_fast_kit import kube as kube
from tests.kube_fast_kit import root as root
from tests.kube_fast_kit import server as server

# -- the model -----------------------------------------------------------------------------


def test_cluster_from_drops_fields_the_model_does_not_know() -> None:
    obj = cluster_object(somethingNew={"a": 1})
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
    obj["metadata"]["resourceVersion"] = "123"
    obj["spec"]["affinity"] = {"enablePodAntiAffinity": True, "topologyKey": "zone"}
    obj["spec"]["monitoring"] = {"enablePodMonitor": True}
    cluster = model.cluster_from(obj)
    assert cluster.spec.instances == 3
    assert cluster.metadata.name == NAME and cluster.metadata.namespace == NS
    assert cluster.status["somethingNew"] == {"a": 1}  # the status is kept as given


def test_cluster_from_still_rejects_a_bad_value_of_a_field_it_uses() -> None:
    obj = cluster_object()
    obj["spec"]["instances"] = "three"
    obj["spec"]["affinity"] = {"enablePodAntiAffinity": True}
    with pytest.raises(SettingsError, match=r"spec\.instances"):
        model.cluster_from(obj)


# -- reports and peers ---------------------------------------------------------------------


def test_reported_instances_with_an_address_are_the_peers(config: Settings) -> None:
    entries = {
        OTHER: {"role": "primary", "ip": "10.0.0.2", "port": 5433, "statusPort": 8001},
        "c1-3": {"role": "replica", "timeLineID": 1},  # no ip yet
    }
    obj = cluster_object(instancesReportedState=entries)
    source = KubeSource(Kube(client_configuration(), Target(NS, NAME)), obj, config)
    peers = source.peers(config)
    assert peers == {
        ME: Peer(host="10.0.0.1", port=5432, statusPort=8000),
        OTHER: Peer(host="10.0.0.2", port=5433, statusPort=8001),
    }
    found = source.reports([OTHER, "c1-3", "c1-4"])
    assert sorted(found) == [OTHER, "c1-3"]
    assert found[OTHER].role == "primary" and found[OTHER].name == OTHER


def client_configuration() -> Any:
    from kubernetes_asyncio import client

    return client.Configuration()


# -- certificates --------------------------------------------------------------------------

SECRETS = {
    "serverTLSSecret": ("c1-server", {"tls.crt": b"SERVER CRT", "tls.key": b"SERVER KEY"}),
    "replicationTLSSecret": (
        "c1-replication",
        {"tls.crt": b"REPLICATION CRT", "tls.key": b"REPLICATION KEY"},
    ),
    "serverCASecret": ("c1-ca", {"ca.crt": b"SERVER CA"}),
    "clientCASecret": ("c1-client-ca", {"ca.crt": b"CLIENT CA"}),
}
FILES = {
    "server.crt": b"SERVER CRT",
    "server.key": b"SERVER KEY",
    "streaming_replica.crt": b"REPLICATION CRT",
    "streaming_replica.key": b"REPLICATION KEY",
    "server-ca.crt": b"SERVER CA",
    "client-ca.crt": b"CLIENT CA",
}


async def test_certificates_are_written_from_the_secrets_once(
    server: FakeApiServer, kube: Kube, config: Settings
) -> None:
    for name, data in SECRETS.values():
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        server.put_secret(name, encoded, NS)
    names = {field: name for field, (name, _) in SECRETS.items()}
    server.create_cluster(cluster_object(certificates=names))
    source = source_of(kube, server, config)
    assert await source.ensure_certificates(config) is True
    directory = config.certificates_dir
    for file_name, content in FILES.items():
        assert (directory / file_name).read_bytes() == content, file_name
        assert os.stat(directory / file_name).st_mode & 0o777 == 0o600, file_name
    assert await source.ensure_certificates(config) is False


async def test_a_missing_secret_is_logged_and_changes_nothing(
    server: FakeApiServer, kube: Kube, config: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    server.create_cluster(cluster_object(certificates={"serverTLSSecret": "absent"}))
    source = source_of(kube, server, config)
    assert await source.ensure_certificates(config) is False
    errors = [str(f.get("error")) for f in logged(caplog, "cannot read the certificates")]
    assert errors and "404" in errors[0] and "absent" in errors[0], errors
    assert not (config.certificates_dir / "server.crt").exists()
