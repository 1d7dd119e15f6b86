"""Settings: the Cluster resource plus this instance's own options, validated once.

Sources, later ones winning: a YAML/JSON file (``--config``), CloudNativePG's environment
variables, command-line flags. The file is a ``Cluster`` manifest; it may carry one extra
top-level ``instance`` section with the options below (camelCase, like the resource).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

from instance_manager.cluster_model import Cluster, Strict, check_single_line
from instance_manager.errors import SettingsError

# Environment variable -> instance option, as CloudNativePG's pods set them.
ENV_OPTIONS = {
    "PGDATA": "pgData",
    "POD_NAME": "podName",
    "PGPORT": "port",
    "PLUGIN_SOCKET_DIR": "pluginSocketDir",
    "POD_IP": "podIP",
}
ENV_METADATA = {"CLUSTER_NAME": "name", "NAMESPACE": "namespace"}
# Where CloudNativePG mounts the WAL volume of spec.walStorage, and puts pg_wal in it.
CNPG_WAL_DIR = Path("/var/lib/postgresql/wal/pg_wal")


Port = Annotated[int, Meta(ge=0, le=65535)]


# Deadline of one call to one CNPG-I plugin (archive, restore, handshake), in seconds: a
# stopped or wedged plugin fails the call and PostgreSQL retries, instead of waiting for ever.
DEFAULT_PLUGIN_TIMEOUT = 60.0


# A pod name (Kubernetes DNS label): the peers' names become application_name and slot names.
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class Peer(Strict, frozen=True):
    """One instance of a standalone cluster: where its PostgreSQL and status server listen."""

    host: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)]
    statusPort: Annotated[int, Meta(ge=1, le=65535)] = 8000

    def __post_init__(self) -> None:
        check_single_line("host", self.host)  # reaches primary_conninfo


def check_peers(peers: Mapping[str, Peer]) -> None:
    for name in peers:
        if len(name) > 63 or not _POD_NAME.fullmatch(name):
            raise ValueError(f"peers: {name!r} is not a pod name (a-z, 0-9, '-', at most 63)")


class InstanceOptions(Strict, frozen=True):
    """Options of this pod's manager (not part of the Cluster resource)."""

    pgData: Path
    # pg_wal outside PGDATA (PGDATA/pg_wal becomes a symlink to it); defaults to
    # CNPG_WAL_DIR when spec.walStorage is set.
    walDir: Path | None = None
    podName: Annotated[str, Meta(min_length=1)] = field(default_factory=socket.gethostname)
    pgBin: Path | None = None
    port: Annotated[int, Meta(ge=1, le=65535)] = 5432
    listenAddresses: str = "*"
    statusHost: str = ""  # "" = every address, as in a pod
    statusPort: Port = 8000
    metricsPort: Port = 9187
    localPort: Port = 8010
    scratchDir: Path = Path("/controller")
    pluginSocketDir: Path = Path("/plugins")
    onPostmasterExit: Literal["exit", "restart"] | None = None
    user: str | None = None  # when started as root: the account to run as
    restartBackoffMax: Annotated[float, Meta(gt=0)] = 30.0
    # TLS on the status (8000) and metrics (9187) ports, with the server certificate in
    # SCRATCH/certificates (server.crt, server.key), as CNPG's --status-port-tls.
    statusPortTLS: bool = False
    metricsPortTLS: bool = False
    # Custom-query YAML files (the mounted ConfigMaps/Secrets of spec.monitoring).
    pluginTimeout: Annotated[float, Meta(gt=0)] = DEFAULT_PLUGIN_TIMEOUT
    metricsQueriesFiles: list[Path] = field(default_factory=list)
    # Standalone cluster mode: every instance of the cluster by pod name (this one included).
    # None: a single instance, no cluster machinery.
    peers: dict[str, Peer] | None = None
    # Kubernetes mode: the address the other instances reach this one at (default: the
    # address the host name resolves to, a pod's IP), and a kubeconfig to use instead of
    # the pod's service account.
    podIP: str | None = None
    kubeconfig: Path | None = None

    def __post_init__(self) -> None:
        if self.peers is not None:
            check_peers(self.peers)
            if self.podName not in self.peers:
                raise ValueError(f"peers: this instance ({self.podName}) is not among them")
        # Paths and addresses reach postgresql.conf, pg_ident.conf and postmaster.pid.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str | Path):
                    check_single_line(name, str(item))


@dataclass(frozen=True)
class Settings:
    cluster: Cluster
    instance: InstanceOptions
    kubernetes: bool
    pg_bin: Path

    @property
    def pgdata(self) -> Path:
        return self.instance.pgData

    @property
    def run_dir(self) -> Path:
        """Unix socket directory (CNPG's /controller/run)."""
        return self.instance.scratchDir / "run"

    @property
    def log_dir(self) -> Path:
        return self.instance.scratchDir / "log"

    @property
    def tmp_dir(self) -> Path:
        return self.instance.scratchDir / "tmp"

    @property
    def certificates_dir(self) -> Path:
        """server.crt/.key, client-ca.crt, server-ca.crt (CNPG's /controller/certificates)."""
        return self.instance.scratchDir / "certificates"

    @property
    def archive_spool(self) -> Path:
        """Markers of segments archived ahead (CNPG's /controller/wal-archive-spool)."""
        return self.instance.scratchDir / "wal-archive-spool"

    @property
    def archive_inflight(self) -> Path:
        """Locked files of segments being archived ahead, for the shell to wait on."""
        return self.instance.scratchDir / "wal-archive-inflight"

    @property
    def wal_dir(self) -> Path | None:
        """pg_wal's own directory, or None when pg_wal lives inside PGDATA."""
        if self.instance.walDir is not None:
            return self.instance.walDir
        return CNPG_WAL_DIR if self.cluster.spec.walStorage is not None else None

    @property
    def restore_spool(self) -> Path:
        """Prefetched WAL, beside pg_wal's directory (the WAL volume) or beside PGDATA:
        on pg_wal's filesystem, so handing a file over is a rename."""
        return (self.wal_dir or self.pgdata).parent / "wal-restore-spool"

    @property
    def on_postmaster_exit(self) -> Literal["exit", "restart"]:
        if self.instance.onPostmasterExit is not None:
            return self.instance.onPostmasterExit
        return "exit" if self.kubernetes else "restart"

    def bin(self, name: str) -> str:
        return str(self.pg_bin / name)


def find_pg_bin(explicit: Path | None) -> Path:
    """The directory holding ``postgres``: the given one, PATH, or the newest Debian layout."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates = [explicit]
    else:
        found = shutil.which("postgres")
        if found:
            candidates.append(Path(found).resolve().parent)
        versions = glob.glob("/usr/lib/postgresql/*/bin")
        versions.sort(
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0
        )
        candidates.extend(Path(p) for p in reversed(versions))
    for candidate in candidates:
        if os.access(candidate / "postgres", os.X_OK):
            return candidate
    where = str(explicit) if explicit else "PATH or /usr/lib/postgresql/*/bin"
    raise SettingsError(f"instance.pgBin: no executable 'postgres' found in {where}")


def read_config_file(path: Path) -> dict[str, Any]:
    import yaml  # only when there is a file: ~15 ms of start-up otherwise saved

    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"--config: cannot read {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())  # one line: PyYAML's message spans several
        raise SettingsError(f"--config: {path} is not valid YAML/JSON: {detail}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"--config: {path} must hold a mapping (a Cluster resource)")
    return data


_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`$")
_NAMED = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])?): (.+)$", re.DOTALL)


def _decode_hook(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str) and value:
        return Path(value)
    raise ValueError(f"expected a path, got {value!r}")


def _convert(data: Any, kind: type[Strict], prefix: str) -> Any:
    """Validate with msgspec; its ``$.spec.x`` locations become ``spec.x`` in our message."""
    try:
        return msgspec.convert(data, kind, strict=False, dec_hook=_decode_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        what, sep, where = text.rpartition(" - at `$")
        if not sep:
            what, where = text, ""
        field_path = (prefix + where.rstrip("`").lstrip(".")).rstrip(".")
        unknown = _UNKNOWN.match(what)
        if unknown:
            field_path = f"{field_path}.{unknown.group(1)}".lstrip(".")
            what = "unknown field"
        # Our own checks say "field: problem", or "field: key: problem".
        while named := _NAMED.match(what):
            field_path = f"{field_path}.{named.group(1)}".lstrip(".")
            what = named.group(2)
        return _fail(f"{field_path or '(top level)'}: {what}")


def _fail(message: str) -> Any:
    raise SettingsError(f"invalid settings: {message}")


def cluster_from(data: Any) -> Cluster:
    """A Cluster from plain data (an API object); SettingsError naming a bad field."""
    cluster: Cluster = _convert(data, Cluster, "")
    return cluster


def _check_wal_dir(settings: Settings) -> Settings:
    wal, pgdata = settings.wal_dir, settings.pgdata
    if wal is not None and (wal.is_relative_to(pgdata) or pgdata.is_relative_to(wal)):
        raise SettingsError(
            f"invalid settings: instance.walDir: {wal} must be outside PGDATA ({pgdata})"
        )
    return settings


def load(
    config_file: Path | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
) -> Settings:
    """Build and validate the settings; raise SettingsError naming the bad field."""
    document = read_config_file(config_file) if config_file else {}
    raw_instance = document.pop("instance", None) or {}
    if not isinstance(raw_instance, dict):
        raise SettingsError("invalid settings: instance: must be a mapping")
    options: dict[str, Any] = dict(raw_instance)
    metadata = dict(document.get("metadata") or {})
    for var, key in ENV_OPTIONS.items():
        if env.get(var):
            options[key] = env[var]
    for var, key in ENV_METADATA.items():
        if env.get(var):
            metadata[key] = env[var]
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("clusterName", "namespace"):
            metadata["name" if key == "clusterName" else key] = value
        else:
            options[key] = value
    if metadata:
        document["metadata"] = metadata
    if "pgData" not in options:
        raise SettingsError("invalid settings: instance.pgData: required (--pg-data or PGDATA)")
    cluster: Cluster = _convert(document, Cluster, "")
    for key in ("pgData", "walDir", "scratchDir", "pluginSocketDir", "kubeconfig"):
        if isinstance(options.get(key), str | Path) and str(options[key]):
            options[key] = str(Path(options[key]).absolute())
    instance: InstanceOptions = _convert(options, InstanceOptions, "instance.")
    socket_path = instance.scratchDir / "run" / f".s.PGSQL.{instance.port}"
    if len(str(socket_path)) >= 100:
        raise SettingsError(
            f"invalid settings: instance.scratchDir: socket path {socket_path} is too long "
            "(Unix sockets need fewer than 100 bytes)"
        )
    settings = Settings(
        cluster=cluster,
        instance=instance,
        kubernetes=bool(env.get("KUBERNETES_SERVICE_HOST")) or instance.kubeconfig is not None,
        pg_bin=find_pg_bin(instance.pgBin),
    )
    return _check_wal_dir(settings)
