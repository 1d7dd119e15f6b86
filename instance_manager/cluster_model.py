"""Typed model of the part of CloudNativePG's ``Cluster`` resource the instance uses.

Field names are the resource's camelCase names (``smartShutdownTimeout``), so a user
hands us the same YAML they give the operator. Unknown fields are refused; a set of
Cluster fields that only matter to the operator (storage, affinity...) are accepted
and ignored so that a real Cluster manifest loads unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field
from msgspec.structs import force_setattr

# Default timings, seconds, as CloudNativePG defines them (api/v1 cluster types).
DEFAULT_SMART_SHUTDOWN_TIMEOUT = 180  # smart stop gets this long before a fast stop
DEFAULT_STOP_DELAY = 1800  # whole shutdown budget (kubelet terminationGracePeriod)
DEFAULT_SWITCHOVER_DELAY = 3600  # fast stop of a demoted primary before immediate
DEFAULT_START_DELAY = 3600  # how long PostgreSQL may take to accept connections

_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]i?|k)?\s*$")
_QUANTITY_FACTORS = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}


def parse_quantity(value: str | int) -> int:
    """A Kubernetes quantity ("16Mi", "1G", 1024) in bytes."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a quantity such as 16Mi or 1048576")
    return int(float(match.group(1)) * _QUANTITY_FACTORS[match.group(2)])


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every settings struct: unknown fields are errors, values are immutable."""


# A line break would end a postgresql.conf, pg_hba.conf or pg_ident.conf line early (the
# rest becomes a line of its own); PostgreSQL reads a NUL as the end of the text.
LINE_BREAKS = frozenset("\n\r\0")


def check_single_line(where: str, text: str) -> None:
    """Refuse text that PostgreSQL will read from a configuration file if it breaks lines."""
    if not LINE_BREAKS.isdisjoint(text):
        raise ValueError(f"{where}: must not contain a line break (\\n, \\r) or NUL")


NonNegative = Annotated[int, Meta(ge=0)]
Positive = Annotated[int, Meta(ge=1)]
Name = Annotated[str, Meta(min_length=1, max_length=63)]


class Metadata(Strict, frozen=True):
    name: Name = "cluster-example"
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None

    def __post_init__(self) -> None:
        check_single_line("name", self.name)  # PostgreSQL's cluster_name


class InitDB(Strict, frozen=True):
    database: Name = "app"
    owner: Annotated[str, Meta(max_length=63)] = ""  # empty: same as database
    encoding: str = "UTF8"
    locale: str | None = None
    localeCollate: str = "C"
    localeCType: str = "C"
    dataChecksums: bool = False
    walSegmentSize: Annotated[int, Meta(ge=1, le=1024)] | None = None
    options: list[str] = field(default_factory=list)
    postInitSQL: list[str] = field(default_factory=list)
    postInitApplicationSQL: list[str] = field(default_factory=list)
    secret: dict[str, str] | None = None

    def __post_init__(self) -> None:
        # initdb writes the locales into postgresql.conf.
        for name in ("locale", "localeCollate", "localeCType", "encoding"):
            check_single_line(name, getattr(self, name) or "")
        for index, option in enumerate(self.options):
            check_single_line(f"options[{index}]", option)
        size = self.walSegmentSize
        if size is not None and size & (size - 1):
            raise ValueError("walSegmentSize: must be a power of two (MB)")

    @property
    def owner_name(self) -> str:
        return self.owner or self.database


class Bootstrap(Strict, frozen=True):
    initdb: InitDB = field(default_factory=InitDB)
    recovery: dict[str, Any] | None = None
    pg_basebackup: dict[str, Any] | None = None


# PostgreSQL's configuration-file lexer: a name, optionally with one dotted prefix.
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")


def _parameter_text(name: str, value: Any) -> str:
    """A parameter as PostgreSQL text; refuses what could break postgresql.conf."""
    if not _PARAMETER_NAME.fullmatch(name):  # "$" would let a final "\n" through
        raise ValueError(f"parameters: {name!r} is not a valid parameter name")
    if isinstance(value, bool):
        return "on" if value else "off"
    if not isinstance(value, str | int | float):
        raise ValueError(f"parameters: {name}: expected text, a number or a boolean, got {value!r}")
    text = str(value)
    check_single_line(f"parameters: {name}", text)
    return text


class SynchronousReplicas(Strict, frozen=True):
    """spec.postgresql.synchronous: how ``synchronous_standby_names`` is built."""

    method: Literal["any", "first"]
    number: Positive
    maxStandbyNamesFromCluster: NonNegative | None = None
    standbyNamesPre: list[str] = field(default_factory=list)
    standbyNamesPost: list[str] = field(default_factory=list)
    dataDurability: Literal["required", "preferred"] = "required"
    failoverQuorum: bool = False
    # Failure domains need a topology (Kubernetes labels): accepted, not used here.
    podFailureDomainKeys: list[str] = field(default_factory=list)
    nodeFailureDomainKeys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for kind, names in (
            ("standbyNamesPre", self.standbyNamesPre),
            ("standbyNamesPost", self.standbyNamesPost),
        ):
            for index, name in enumerate(names):
                check_single_line(f"{kind}[{index}]", name)
        if self.dataDurability == "preferred" and (self.standbyNamesPre or self.standbyNamesPost):
            raise ValueError(
                "dataDurability: 'preferred' requires empty standbyNamesPre and standbyNamesPost"
            )
        if self.podFailureDomainKeys and self.nodeFailureDomainKeys:
            raise ValueError(
                "podFailureDomainKeys: podFailureDomainKeys and nodeFailureDomainKeys are "
                "mutually exclusive"
            )


class PostgresConfiguration(Strict, frozen=True):
    parameters: dict[str, Any] = field(default_factory=dict)
    pg_hba: list[str] = field(default_factory=list)
    pg_ident: list[str] = field(default_factory=list)
    shared_preload_libraries: list[str] = field(default_factory=list)
    enableAlterSystem: bool = False
    synchronous: SynchronousReplicas | None = None

    def __post_init__(self) -> None:
        # YAML turns `max_connections: 100` into an int; PostgreSQL wants text.
        text = {name: _parameter_text(name, value) for name, value in self.parameters.items()}
        force_setattr(self, "parameters", text)
        for kind, lines in (
            ("pg_hba", self.pg_hba),
            ("pg_ident", self.pg_ident),
            ("shared_preload_libraries", self.shared_preload_libraries),
        ):
            for index, line in enumerate(lines):
                check_single_line(f"{kind}[{index}]", line)

    @property
    def text_parameters(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.parameters.items()}


class ProbeBase(Strict, frozen=True):
    initialDelaySeconds: NonNegative = 0
    timeoutSeconds: Positive = 5
    periodSeconds: Positive = 10
    successThreshold: Positive = 1
    failureThreshold: Positive = 3
    terminationGracePeriodSeconds: NonNegative | None = None


class ProbeWithStrategy(ProbeBase, frozen=True):
    type: Literal["pg_isready", "query", "streaming"] = "pg_isready"
    maximumLag: str | int | None = None

    def __post_init__(self) -> None:
        if self.maximumLag is not None:
            try:
                parse_quantity(self.maximumLag)
            except ValueError as exc:
                raise ValueError(f"maximumLag: {exc}") from None

    @property
    def maximum_lag_bytes(self) -> int | None:
        return None if self.maximumLag is None else parse_quantity(self.maximumLag)


class IsolationCheck(Strict, frozen=True):
    enabled: bool = True
    requestTimeout: Positive = 1000  # milliseconds
    connectionTimeout: Positive = 1000  # milliseconds
    # Standalone cluster mode: "any" fails liveness only when no peer answers (CNPG's
    # documentation), "all" as soon as one peer does not (CNPG's code).
    peersRequired: Literal["any", "all"] = "any"


class LivenessProbe(ProbeBase, frozen=True):
    isolationCheck: IsolationCheck = field(default_factory=IsolationCheck)


class Probes(Strict, frozen=True):
    startup: ProbeWithStrategy = field(default_factory=ProbeWithStrategy)
    readiness: ProbeWithStrategy = field(default_factory=ProbeWithStrategy)
    liveness: LivenessProbe = field(default_factory=LivenessProbe)


class PluginConfiguration(Strict, frozen=True):
    name: Annotated[str, Meta(min_length=1)]
    enabled: bool = True
    isWALArchiver: bool = False
    parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Named in the recovery block a restore writes into postgresql.auto.conf.
        check_single_line("name", self.name)


class WalSettings(Strict, frozen=True):
    maxParallel: Annotated[int, Meta(ge=1, le=64)] = 1


class ConfigMapKeySelector(Strict, frozen=True):
    name: str
    key: str


class Monitoring(Strict, frozen=True):
    """spec.monitoring: custom queries come from ConfigMaps/Secrets (mounted as files)."""

    disableDefaultQueries: bool = False
    customQueriesConfigMap: list[ConfigMapKeySelector] = field(default_factory=list)
    customQueriesSecret: list[ConfigMapKeySelector] = field(default_factory=list)
    metricsQueriesTTL: str | None = None  # a Go duration such as "30s"; "0" = no cache
    enablePodMonitor: bool | None = None
    podMonitorMetricRelabelings: list[dict[str, Any]] | None = None
    podMonitorRelabelings: list[dict[str, Any]] | None = None
    tls: dict[str, Any] | None = None


# Replication slots (CloudNativePG's api/v1 defaults).
DEFAULT_SLOT_PREFIX = "_cnpg_"
DEFAULT_SLOTS_UPDATE_INTERVAL = 30  # seconds between two passes of a standby's slot mirror
_SLOT_PREFIX = re.compile(r"[0-9a-z_]*")


class HighAvailabilitySlots(Strict, frozen=True):
    """spec.replicationSlots.highAvailability: one physical slot per standby on the primary."""

    enabled: bool = True
    slotPrefix: str = DEFAULT_SLOT_PREFIX  # "" = the default
    synchronizeLogicalDecoding: bool = False

    def __post_init__(self) -> None:
        if not _SLOT_PREFIX.fullmatch(self.slotPrefix):
            raise ValueError(
                f"slotPrefix: {self.slotPrefix!r} may only hold lower-case letters, digits and _"
            )
        if not self.slotPrefix:
            force_setattr(self, "slotPrefix", DEFAULT_SLOT_PREFIX)


class SynchronizeReplicas(Strict, frozen=True):
    """spec.replicationSlots.synchronizeReplicas: user slots copied onto the standbys."""

    enabled: bool = True
    excludePatterns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index, pattern in enumerate(self.excludePatterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"excludePatterns[{index}]: {pattern!r}: {exc}") from None


class ReplicationSlots(Strict, frozen=True):
    highAvailability: HighAvailabilitySlots = field(default_factory=HighAvailabilitySlots)
    updateInterval: Positive = DEFAULT_SLOTS_UPDATE_INTERVAL
    synchronizeReplicas: SynchronizeReplicas = field(default_factory=SynchronizeReplicas)


class PrimaryLease(Strict, frozen=True):
    """Timings of the primary Lease of Kubernetes mode (kube/lease.py), in seconds:
    CloudNativePG 1.30's ``.spec.primaryLease`` and its defaults."""

    leaseDurationSeconds: Positive = 15  # a held lease unchanged this long may be taken
    renewDeadlineSeconds: Positive = 10  # the holder gives up after failing this long
    retryPeriodSeconds: Positive = 2  # between renewals and acquisition attempts
    releasedLeaseDurationSeconds: Positive = 1  # written when released on a clean exit

    def __post_init__(self) -> None:
        if not (self.leaseDurationSeconds > self.renewDeadlineSeconds > self.retryPeriodSeconds):
            raise ValueError(
                "leaseDurationSeconds must be greater than renewDeadlineSeconds, "
                "and that greater than retryPeriodSeconds"
            )
        if self.releasedLeaseDurationSeconds >= self.leaseDurationSeconds:
            raise ValueError("releasedLeaseDurationSeconds must be lower than leaseDurationSeconds")


class Spec(Strict, frozen=True):
    instances: Positive = 1
    postgresql: PostgresConfiguration = field(default_factory=PostgresConfiguration)
    bootstrap: Bootstrap = field(default_factory=Bootstrap)
    probes: Probes = field(default_factory=Probes)
    smartShutdownTimeout: NonNegative = DEFAULT_SMART_SHUTDOWN_TIMEOUT
    stopDelay: NonNegative = DEFAULT_STOP_DELAY
    switchoverDelay: NonNegative = DEFAULT_SWITCHOVER_DELAY
    startDelay: Positive = DEFAULT_START_DELAY
    livenessProbeTimeout: NonNegative | None = None
    plugins: list[PluginConfiguration] = field(default_factory=list)
    wal: WalSettings | None = None
    # Set: pg_wal lives on its own volume (Settings.wal_dir); its size feeds the metrics.
    walStorage: dict[str, Any] | None = None
    # Operator-side fields: accepted so a real manifest loads, not used by the instance.
    description: str | None = None
    imageName: str | None = None
    imageCatalogRef: dict[str, Any] | None = None
    imagePullPolicy: str | None = None
    storage: dict[str, Any] | None = None
    tablespaces: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    affinity: dict[str, Any] | None = None
    monitoring: Monitoring = field(default_factory=Monitoring)
    backup: dict[str, Any] | None = None
    externalClusters: list[dict[str, Any]] | None = None
    managed: dict[str, Any] | None = None
    # Rolling restarts (cluster/rolling.py): unset means unsupervised / restart.
    primaryUpdateStrategy: Literal["unsupervised", "supervised"] | None = None
    primaryUpdateMethod: Literal["restart", "switchover"] | None = None
    enableSuperuserAccess: bool | None = None
    superuserSecret: dict[str, Any] | None = None
    minSyncReplicas: NonNegative | None = None  # legacy synchronous replication
    maxSyncReplicas: NonNegative | None = None
    replicationSlots: ReplicationSlots = field(default_factory=ReplicationSlots)
    certificates: dict[str, Any] | None = None
    env: list[dict[str, Any]] | None = None
    logLevel: str | None = None
    postgresUID: int | None = None
    postgresGID: int | None = None
    enablePDB: bool | None = None
    primaryLease: PrimaryLease | None = None  # Kubernetes mode: None = the defaults

    def __post_init__(self) -> None:
        # A recovery source's plugin is named in the block a restore writes into
        # postgresql.auto.conf.
        for index, source in enumerate(self.externalClusters or []):
            plugin = source.get("plugin")
            if isinstance(plugin, dict) and isinstance(plugin.get("name"), str):
                check_single_line(f"externalClusters[{index}]: plugin: name", plugin["name"])
        self._check_synchronous()

    def _check_synchronous(self) -> None:
        # CloudNativePG's admission rules for synchronous replication.
        if (self.maxSyncReplicas or 0) >= self.instances:
            raise ValueError("maxSyncReplicas: must be lower than the number of instances")
        if (self.minSyncReplicas or 0) > (self.maxSyncReplicas or 0):
            raise ValueError("minSyncReplicas: cannot be greater than maxSyncReplicas")
        sync = self.postgresql.synchronous
        if sync and sync.number >= (
            self.instances + len(sync.standbyNamesPre) + len(sync.standbyNamesPost)
        ):
            raise ValueError(
                "postgresql: synchronous: number: must be less than the number of instances "
                "plus the standby names given"
            )

    @property
    def wal_max_parallel(self) -> int:
        return self.wal.maxParallel if self.wal else 1


class Cluster(Strict, frozen=True):
    apiVersion: Literal["postgresql.cnpg.io/v1"] = "postgresql.cnpg.io/v1"
    kind: Literal["Cluster"] = "Cluster"
    metadata: Metadata = field(default_factory=Metadata)
    spec: Spec = field(default_factory=Spec)
    # Written by the operator: kept as given (currentPrimary, instancesReportedState...).
    status: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The resource as the operator would serialise it (no null fields)."""
        document: dict[str, Any] = _drop_none(msgspec.to_builtins(self))
        return document


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
