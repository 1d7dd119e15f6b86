"""Settings: the Cluster resource, environment and flags, validated once (no PostgreSQL run)."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from instance_manager import settings
from instance_manager.errors import SettingsError
from instance_manager.settings import Settings
from tests.daemon import PG_BIN, VENV_BIN

# A Cluster manifest as a user hands it to the operator, operator-only fields included.
FULL_CLUSTER = textwrap.dedent(
    """\
    apiVersion: postgresql.cnpg.io/v1
    kind: Cluster
    metadata:
      name: shop-db
      namespace: prod
      labels:
        team: payments
    spec:
      instances: 3
      imageName: ghcr.io/cloudnative-pg/postgresql:16.4
      primaryUpdateStrategy: unsupervised
      smartShutdownTimeout: 60
      stopDelay: 900
      switchoverDelay: 120
      startDelay: 600
      postgresql:
        parameters:
          max_connections: 200
          shared_buffers: 256MB
          log_checkpoints: true
          jit: false
          random_page_cost: 1.1
        pg_hba:
          - host app app 10.0.0.0/8 scram-sha-256
        pg_ident:
          - mymap alice app
        shared_preload_libraries:
          - pg_stat_statements
      bootstrap:
        initdb:
          database: shop
          owner: clerk
          dataChecksums: true
          walSegmentSize: 32
          postInitSQL:
            - CREATE EXTENSION pg_stat_statements
      probes:
        startup:
          type: query
        readiness:
          type: streaming
          maximumLag: 16Mi
        liveness:
          isolationCheck:
            enabled: false
            requestTimeout: 2000
            connectionTimeout: 500
      plugins:
        - name: barman-cloud.cloudnative-pg.io
          isWALArchiver: true
          parameters:
            barmanObjectName: minio-store
      storage:
        size: 10Gi
        storageClass: standard
      walStorage:
        size: 2Gi
      resources:
        requests:
          memory: 512Mi
      affinity:
        enablePodAntiAffinity: true
        topologyKey: kubernetes.io/hostname
      monitoring:
        enablePodMonitor: true
      backup:
        retentionPolicy: 30d
    """
)

# Variables the test process might carry that would leak into the settings under test.
CNPG_ENV = (
    "PGDATA",
    "POD_NAME",
    "CLUSTER_NAME",
    "NAMESPACE",
    "PGPORT",
    "PLUGIN_SOCKET_DIR",
    "KUBERNETES_SERVICE_HOST",
)


def write_config(root: Path, content: str | dict[str, Any]) -> Path:
    path = root / "cluster.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def load(
    root: Path,
    content: str | dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """settings.load with ``content`` written to a file (None: no --config)."""
    config = None if content is None else write_config(root, content)
    return settings.load(config, env or {}, {"pgBin": str(PG_BIN), **flags})


def load_error(root: Path, content: str | dict[str, Any] | None = None, **flags: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load(root, content, **flags)
    return str(info.value)


@pytest.fixture
def pgdata(tmp_root: Path) -> str:
    return str(tmp_root / "pgdata")


# --- loading a real manifest ---------------------------------------------------------------


def test_full_cluster_manifest_loads(tmp_root: Path, pgdata: str) -> None:
    s = load(tmp_root, FULL_CLUSTER, pgData=pgdata)
    spec = s.cluster.spec
    assert s.cluster.metadata.name == "shop-db"
    assert s.cluster.metadata.namespace == "prod"
    assert s.cluster.metadata.labels == {"team": "payments"}
    assert spec.instances == 3
    assert (spec.smartShutdownTimeout, spec.stopDelay) == (60, 900)
    assert (spec.switchoverDelay, spec.startDelay) == (120, 600)
    assert spec.postgresql.pg_hba == ["host app app 10.0.0.0/8 scram-sha-256"]
    assert spec.postgresql.pg_ident == ["mymap alice app"]
    assert spec.postgresql.shared_preload_libraries == ["pg_stat_statements"]
    initdb = spec.bootstrap.initdb
    assert (initdb.database, initdb.owner_name, initdb.dataChecksums) == ("shop", "clerk", True)
    assert initdb.walSegmentSize == 32
    assert initdb.postInitSQL == ["CREATE EXTENSION pg_stat_statements"]
    assert spec.probes.startup.type == "query"
    assert spec.probes.readiness.type == "streaming"
    assert spec.probes.readiness.maximumLag == "16Mi"
    assert spec.probes.readiness.maximum_lag_bytes == 16 * 1024 * 1024
    isolation = spec.probes.liveness.isolationCheck
    assert (isolation.enabled, isolation.requestTimeout, isolation.connectionTimeout) == (
        False,
        2000,
        500,
    )
    [plugin] = spec.plugins
    assert (plugin.name, plugin.enabled, plugin.isWALArchiver) == (
        "barman-cloud.cloudnative-pg.io",
        True,
        True,
    )
    assert plugin.parameters == {"barmanObjectName": "minio-store"}
    assert spec.storage == {"size": "10Gi", "storageClass": "standard"}
    assert spec.affinity == {"enablePodAntiAffinity": True, "topologyKey": "kubernetes.io/hostname"}
    assert spec.monitoring.enablePodMonitor is True
    assert spec.monitoring.disableDefaultQueries is False
    assert s.pgdata == Path(pgdata)


def test_yaml_scalars_in_parameters_become_postgresql_text(tmp_root: Path, pgdata: str) -> None:
    params = load(tmp_root, FULL_CLUSTER, pgData=pgdata).cluster.spec.postgresql.parameters
    assert params == {
        "max_connections": "200",
        "shared_buffers": "256MB",
        "log_checkpoints": "on",
        "jit": "off",
        "random_page_cost": "1.1",
    }


def test_defaults_when_absent(tmp_root: Path, pgdata: str) -> None:
    s = load(tmp_root, {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster"}, pgData=pgdata)
    spec = s.cluster.spec
    assert spec.smartShutdownTimeout == 180
    assert spec.stopDelay == 1800
    assert spec.switchoverDelay == 3600
    assert spec.startDelay == 3600
    assert spec.instances == 1
    assert spec.postgresql.parameters == {}
    assert spec.probes.readiness.type == "pg_isready"
    assert spec.probes.readiness.maximum_lag_bytes is None
    assert spec.probes.liveness.isolationCheck.enabled is True
    assert s.cluster.metadata.name == "cluster-example"
    assert s.instance.port == 5432
    assert s.instance.statusPort == 8000
    assert s.instance.scratchDir == Path("/controller")


def test_no_config_file_is_all_defaults(tmp_root: Path, pgdata: str) -> None:
    s = load(tmp_root, None, pgData=pgdata)
    assert s.cluster.spec.stopDelay == 1800
    assert s.cluster.metadata.namespace == "default"


def test_empty_config_file_is_all_defaults(tmp_root: Path, pgdata: str) -> None:
    s = load(tmp_root, "", pgData=pgdata)
    assert s.cluster.spec.smartShutdownTimeout == 180


def test_relative_paths_become_absolute(tmp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_root)
    s = load(tmp_root, None, pgData="data", scratchDir="c")
    assert s.pgdata == tmp_root / "data"
    assert s.run_dir == tmp_root / "c" / "run"


@pytest.mark.parametrize(
    ("env", "kubernetes", "policy"),
    [({}, False, "restart"), ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, True, "exit")],
    ids=["standalone", "kubernetes"],
)
def test_postmaster_exit_policy_follows_kubernetes(
    tmp_root: Path, pgdata: str, env: dict[str, str], kubernetes: bool, policy: str
) -> None:
    s = load(tmp_root, None, env, pgData=pgdata)
    assert s.kubernetes is kubernetes
    assert s.on_postmaster_exit == policy


# --- precedence: file `instance:` section < environment < flags ----------------------------

FILE_LAYER: dict[str, Any] = {
    "metadata": {"name": "from-file", "namespace": "file-ns"},
    "instance": {
        "pgData": "/file/pgdata",
        "podName": "file-pod",
        "port": 5001,
        "pluginSocketDir": "/file/plugins",
    },
}
ENV_LAYER = {
    "PGDATA": "/env/pgdata",
    "POD_NAME": "env-pod",
    "CLUSTER_NAME": "from-env",
    "NAMESPACE": "env-ns",
    "PGPORT": "5002",
    "PLUGIN_SOCKET_DIR": "/env/plugins",
}
FLAG_LAYER: dict[str, Any] = {
    "pgData": "/flag/pgdata",
    "podName": "flag-pod",
    "clusterName": "from-flag",
    "namespace": "flag-ns",
    "port": 5003,
    "pluginSocketDir": "/flag/plugins",
}


def effective(s: Settings) -> tuple[str, str, str, str, int, str]:
    return (
        str(s.pgdata),
        s.instance.podName,
        s.cluster.metadata.name,
        s.cluster.metadata.namespace,
        s.instance.port,
        str(s.instance.pluginSocketDir),
    )


@pytest.mark.parametrize(
    ("env", "flags", "source"),
    [({}, {}, "file"), (ENV_LAYER, {}, "env"), (ENV_LAYER, FLAG_LAYER, "flag")],
    ids=["file-only", "env-over-file", "flags-over-env"],
)
def test_precedence(
    tmp_root: Path, env: dict[str, str], flags: dict[str, Any], source: str
) -> None:
    s = load(tmp_root, FILE_LAYER, env, **flags)
    port = {"file": 5001, "env": 5002, "flag": 5003}[source]
    assert effective(s) == (
        f"/{source}/pgdata",
        f"{source}-pod",
        f"from-{source}",
        f"{source}-ns",
        port,
        f"/{source}/plugins",
    )


def test_unset_flags_and_empty_env_do_not_override(tmp_root: Path) -> None:
    env = dict.fromkeys(ENV_LAYER, "")
    flags = dict.fromkeys(FLAG_LAYER)
    s = load(tmp_root, FILE_LAYER, env, **flags)
    assert effective(s) == (
        "/file/pgdata",
        "file-pod",
        "from-file",
        "file-ns",
        5001,
        "/file/plugins",
    )


def test_file_metadata_fields_survive_env_override(tmp_root: Path, pgdata: str) -> None:
    s = load(tmp_root, FULL_CLUSTER, {"CLUSTER_NAME": "renamed"}, pgData=pgdata)
    assert s.cluster.metadata.name == "renamed"
    assert s.cluster.metadata.namespace == "prod"
    assert s.cluster.metadata.labels == {"team": "payments"}


# --- invalid input names the field ---------------------------------------------------------

LONG_SCRATCH = "/tmp/" + "x" * 90


def invalid(
    content: dict[str, Any], field: str, detail: str, case: str, marks: Any = (), **flags: Any
) -> Any:
    """One bad input: the message must start with ``field:`` and mention ``detail``."""
    return pytest.param(content, flags, field, detail, id=case, marks=marks)


@pytest.mark.parametrize(
    ("content", "flags", "field", "detail"),
    [
        invalid({"spec": {"foo": 1}}, "spec.foo", "unknown field", "unknown-spec-field"),
        invalid({"bar": 1}, "bar", "unknown field", "unknown-top-level-field"),
        invalid({"instance": {"bogus": 1}}, "instance.bogus", "unknown field", "unknown-option"),
        invalid(
            {"spec": {"plugins": [{"name": "p", "x": 1}]}},
            "spec.plugins[0].x",
            "unknown field",
            "unknown-plugin-field",
        ),
        invalid({"spec": {"stopDelay": "abc"}}, "spec.stopDelay", "int", "wrong-type"),
        invalid({"spec": {"stopDelay": True}}, "spec.stopDelay", "int", "bool-for-int"),
        invalid(
            {"spec": {"smartShutdownTimeout": -1}}, "spec.smartShutdownTimeout", "0", "negative"
        ),
        invalid({"spec": {"startDelay": 0}}, "spec.startDelay", "1", "zero-start-delay"),
        invalid(
            {"spec": {"probes": {"readiness": {"type": "tcp"}}}},
            "spec.probes.readiness.type",
            "tcp",
            "bad-probe-type",
        ),
        invalid(
            {"spec": {"primaryUpdateStrategy": "Supervised"}},
            "spec.primaryUpdateStrategy",
            "Supervised",
            "bad-update-strategy",
        ),
        invalid(
            {"spec": {"primaryUpdateMethod": "failover"}},
            "spec.primaryUpdateMethod",
            "failover",
            "bad-update-method",
        ),
        invalid(
            {"spec": {"probes": {"startup": {"maximumLag": "16Xi"}}}},
            "spec.probes.startup.maximumLag",
            "16Xi",
            "bad-maximum-lag",
        ),
        invalid(
            {"spec": {"probes": {"readiness": {"maximumLag": -5}}}},
            "spec.probes.readiness.maximumLag",
            "negative",
            "negative-maximum-lag",
        ),
        invalid(
            {"spec": {"bootstrap": {"initdb": {"walSegmentSize": 3}}}},
            "spec.bootstrap.initdb.walSegmentSize",
            "power of two",
            "wal-segment-not-power-of-two",
        ),
        invalid(
            {"spec": {"postgresql": {"parameters": {"work_mem": None}}}},
            "spec.postgresql.parameters.work_mem",
            "expected text",
            "null-parameter",
        ),
        invalid({"kind": "Pod"}, "kind", "Pod", "wrong-kind"),
        invalid({"metadata": {"name": ""}}, "metadata.name", "1", "empty-name"),
        invalid({"instance": ["x"]}, "instance", "must be a mapping", "instance-not-mapping"),
        invalid({}, "instance.port", "65535", "port-out-of-range", port=70000),
        invalid({}, "instance.pgData", "required", "missing-pgdata", pgData=None),
        invalid({}, "instance.scratchDir", "too long", "long-socket-path", scratchDir=LONG_SCRATCH),
        invalid(
            {},
            "instance.pgData",
            "",
            "empty-pgdata",
            pgData="",
        ),
    ],
)
def test_invalid_settings_name_the_field(
    tmp_root: Path,
    pgdata: str,
    content: dict[str, Any],
    flags: dict[str, Any],
    field: str,
    detail: str,
) -> None:
    message = load_error(tmp_root, content, **{"pgData": pgdata, **flags})
    assert message.startswith(f"invalid settings: {field}: "), message
    assert detail in message


def test_socket_path_limit_is_100_bytes(tmp_root: Path, pgdata: str) -> None:
    # "<scratch>/run/.s.PGSQL.5432" is len(scratch) + 18 bytes: 99 is accepted, 100 is not.
    fits = "/tmp/" + "y" * 76
    assert len(fits + "/run/.s.PGSQL.5432") == 99
    assert load(tmp_root, None, pgData=pgdata, scratchDir=fits).run_dir == Path(fits) / "run"
    message = load_error(tmp_root, None, pgData=pgdata, scratchDir=fits + "y")
    assert f"{fits}y/run/.s.PGSQL.5432 is too long" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [("- a\n- b\n", "must hold a mapping"), ("spec: [\n", "is not valid YAML/JSON")],
    ids=["not-a-mapping", "invalid-yaml"],
)
def test_bad_config_file(tmp_root: Path, pgdata: str, content: str, expected: str) -> None:
    message = load_error(tmp_root, content, pgData=pgdata)
    assert message.startswith(f"--config: {tmp_root / 'cluster.yaml'} ")
    assert expected in message


def test_missing_config_file(tmp_root: Path, pgdata: str) -> None:
    missing = tmp_root / "absent.yaml"
    with pytest.raises(SettingsError) as info:
        settings.load(missing, {}, {"pgData": pgdata})
    assert str(info.value) == f"--config: cannot read {missing}: No such file or directory"
    assert info.value.exit_code == 2


# --- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "field"),
    [
        pytest.param("spec:\n  stopDelay: abc\n", "spec.stopDelay", id="wrong-type"),
        pytest.param("spec:\n  foo: 1\n", "spec.foo", id="unknown-field"),
        pytest.param(
            "spec:\n  smartShutdownTimeout: -1\n", "spec.smartShutdownTimeout", id="negative"
        ),
        pytest.param(
            "spec: [\n",
            "--config",
            id="invalid-yaml",
        ),
    ],
)
def test_cli_rejects_bad_config_without_side_effects(
    tmp_root: Path, content: str, field: str
) -> None:
    config = write_config(tmp_root, content)
    env = {k: v for k, v in os.environ.items() if k not in CNPG_ENV}
    result = subprocess.run(
        [
            str(VENV_BIN / "instance-manager"),
            "run",
            "--config",
            str(config),
            "--pg-data",
            str(tmp_root / "pgdata"),
            "--scratch-dir",
            str(tmp_root / "c"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_root,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("instance-manager: ")
    assert field in lines[0]
    assert sorted(p.name for p in tmp_root.iterdir()) == ["cluster.yaml"]
