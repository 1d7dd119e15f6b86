"""Typed model of the part of CloudNativePG's ``Cluster`` resource the instance uses.

Field names are the resource's camelCase names (``smartShutdownTimeout``), so a user
hands us the same YAML they give the operator. Unknown fields are refused; a set of
Cluster fields that only matter to the operator (storage, affinity...) are accepted
and ignored so that a real Cluster manifest loads unchanged.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Metadata(Strict):
    name: str = Field(default="cluster-example", min_length=1, max_length=63)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None


class InitDB(Strict):
    database: str = Field(default="app", min_length=1, max_length=63)
    owner: str = Field(default="", max_length=63)  # empty: same as database
    encoding: str = "UTF8"
    locale: str | None = None
    localeCollate: str = "C"
    localeCType: str = "C"
    dataChecksums: bool = False
    walSegmentSize: int | None = Field(default=None, ge=1, le=1024)
    options: list[str] = Field(default_factory=list)
    postInitSQL: list[str] = Field(default_factory=list)
    postInitApplicationSQL: list[str] = Field(default_factory=list)
    secret: dict[str, str] | None = None

    @property
    def owner_name(self) -> str:
        return self.owner or self.database

    @field_validator("walSegmentSize")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError("must be a power of two (MB)")
        return value


class Bootstrap(Strict):
    initdb: InitDB = Field(default_factory=InitDB)
    recovery: dict[str, Any] | None = None
    pg_basebackup: dict[str, Any] | None = None


class PostgresConfiguration(Strict):
    parameters: dict[str, str] = Field(default_factory=dict)
    pg_hba: list[str] = Field(default_factory=list)
    pg_ident: list[str] = Field(default_factory=list)
    shared_preload_libraries: list[str] = Field(default_factory=list)
    enableAlterSystem: bool = False

    @field_validator("parameters", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # YAML turns `max_connections: 100` into an int; PostgreSQL wants text.
        if isinstance(value, dict):
            return {
                str(k): (("on" if v else "off") if isinstance(v, bool) else str(v))
                for k, v in value.items()
            }
        return value


class ProbeBase(Strict):
    initialDelaySeconds: int = Field(default=0, ge=0)
    timeoutSeconds: int = Field(default=5, ge=1)
    periodSeconds: int = Field(default=10, ge=1)
    successThreshold: int = Field(default=1, ge=1)
    failureThreshold: int = Field(default=3, ge=1)
    terminationGracePeriodSeconds: int | None = Field(default=None, ge=0)


class ProbeWithStrategy(ProbeBase):
    type: Literal["pg_isready", "query", "streaming"] = "pg_isready"
    maximumLag: str | int | None = None

    @field_validator("maximumLag")
    @classmethod
    def _lag(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_quantity(value)
        return value

    @property
    def maximum_lag_bytes(self) -> int | None:
        return None if self.maximumLag is None else parse_quantity(self.maximumLag)


class IsolationCheck(Strict):
    enabled: bool = True
    requestTimeout: int = Field(default=1000, ge=1)  # milliseconds
    connectionTimeout: int = Field(default=1000, ge=1)  # milliseconds


class LivenessProbe(ProbeBase):
    isolationCheck: IsolationCheck = Field(default_factory=IsolationCheck)


class Probes(Strict):
    startup: ProbeWithStrategy = Field(default_factory=ProbeWithStrategy)
    readiness: ProbeWithStrategy = Field(default_factory=ProbeWithStrategy)
    liveness: LivenessProbe = Field(default_factory=LivenessProbe)


class PluginConfiguration(Strict):
    name: str = Field(min_length=1)
    enabled: bool = True
    isWALArchiver: bool = False
    parameters: dict[str, str] = Field(default_factory=dict)


class WalSettings(Strict):
    maxParallel: int = Field(default=1, ge=1, le=64)


class Spec(Strict):
    instances: int = Field(default=1, ge=1)
    postgresql: PostgresConfiguration = Field(default_factory=PostgresConfiguration)
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    probes: Probes = Field(default_factory=Probes)
    smartShutdownTimeout: int = Field(default=DEFAULT_SMART_SHUTDOWN_TIMEOUT, ge=0)
    stopDelay: int = Field(default=DEFAULT_STOP_DELAY, ge=0)
    switchoverDelay: int = Field(default=DEFAULT_SWITCHOVER_DELAY, ge=0)
    startDelay: int = Field(default=DEFAULT_START_DELAY, ge=1)
    livenessProbeTimeout: int | None = Field(default=None, ge=0)
    plugins: list[PluginConfiguration] = Field(default_factory=list)
    wal: WalSettings | None = None
    # Operator-side fields: accepted so a real manifest loads, not used by the instance.
    description: str | None = None
    imageName: str | None = None
    imageCatalogRef: dict[str, Any] | None = None
    imagePullPolicy: str | None = None
    storage: dict[str, Any] | None = None
    walStorage: dict[str, Any] | None = None
    tablespaces: list[dict[str, Any]] | None = None
    resources: dict[str, Any] | None = None
    affinity: dict[str, Any] | None = None
    monitoring: dict[str, Any] | None = None
    backup: dict[str, Any] | None = None
    externalClusters: list[dict[str, Any]] | None = None
    managed: dict[str, Any] | None = None
    primaryUpdateStrategy: str | None = None
    primaryUpdateMethod: str | None = None
    enableSuperuserAccess: bool | None = None
    superuserSecret: dict[str, Any] | None = None
    minSyncReplicas: int | None = None
    maxSyncReplicas: int | None = None
    replicationSlots: dict[str, Any] | None = None
    certificates: dict[str, Any] | None = None
    env: list[dict[str, Any]] | None = None
    logLevel: str | None = None
    postgresUID: int | None = None
    postgresGID: int | None = None
    enablePDB: bool | None = None

    @property
    def wal_max_parallel(self) -> int:
        return self.wal.maxParallel if self.wal else 1


class Status(BaseModel):
    """Written by the operator; we read a few fields and keep the rest as given."""

    model_config = ConfigDict(extra="allow", frozen=True)

    currentPrimary: str = ""
    targetPrimary: str = ""
    timelineID: int = 0
    operatorCertificateFingerprint: str = ""
    instancesReportedState: dict[str, Any] = Field(default_factory=dict)


class Cluster(Strict):
    apiVersion: Literal["postgresql.cnpg.io/v1"] = "postgresql.cnpg.io/v1"
    kind: Literal["Cluster"] = "Cluster"
    metadata: Metadata = Field(default_factory=Metadata)
    spec: Spec = Field(default_factory=Spec)
    status: Status = Field(default_factory=Status)

    def to_json_dict(self) -> dict[str, Any]:
        """The resource as the operator would serialise it."""
        return self.model_dump(mode="json", exclude_none=True)
