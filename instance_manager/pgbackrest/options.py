"""Which stanza and repository a request uses, as the environment of a ``pgbackrest`` run.

pgBackRest reads every option from ``PGBACKREST_<OPTION>`` variables and ignores the ones
a command does not use, so one environment serves every command: no configuration file
is written, and nothing of the request ends up on a command line (secrets stay out of
``ps``). Sources, later ones winning: our defaults, the sidecar's ``PGBACKREST_*``
variables, the Cluster's plugin parameters; a parameter must pass the allowlist
(allowlist.py), and the lock and spool directories must be private to the sidecar
(workdir.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instance_manager.pgbackrest import workdir
from instance_manager.pgbackrest.allowlist import OptionPolicy

ENV_PREFIX = "PGBACKREST_"
# Variables a pgbackrest process inherits from the sidecar besides PGBACKREST_*.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
# Options that never come from the configuration.
DEFAULTS = {
    "log-level-file": "off",  # no log file: the container's filesystem may be read-only
    "log-level-console": "off",  # stdout then carries only a command's output (info's JSON)
    "log-level-stderr": "warn",  # warnings and errors, which we log
}
CREATE_STANZA = "createStanza"  # the one parameter that is not a pgBackRest option
RECOVERY_SIGNAL = "recovery.signal"
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_OPTION = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})


class ConfigError(Exception):
    """The plugin's configuration is missing or wrong: the request cannot be served."""


class OptionRefused(ConfigError):
    """A parameter names a pgBackRest option that the Cluster may not set."""


# Directories pgBackRest writes its state into, checked before every run.
PRIVATE_DIRS = ("lock-path", "spool-path")


def option_name(key: str) -> str:
    """``repo1-path`` or ``repo1Path`` -> ``repo1-path``."""
    name = _CAMEL.sub(r"-\1", key).lower()
    if not _OPTION.match(name):
        raise ConfigError(f"parameter {key!r} is not a pgBackRest option name")
    return name


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def text_value(key: str, value: Any) -> str:
    """A parameter's value as pgBackRest reads it from the environment."""
    if isinstance(value, bool):
        text = "y" if value else "n"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise ConfigError(f"parameter {key!r}: expected text, got {value!r}")
    if any(c in text for c in "\n\r\0"):
        raise ConfigError(f"parameter {key!r}: the value must be a single line")
    return text


def flag(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"parameter {key!r}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class Config:
    """One stanza in its repositories: the complete environment of a pgbackrest run."""

    stanza: str
    env: Mapping[str, str]
    create_stanza: bool
    origin: str  # where the parameters came from, for messages

    @property
    def pgdata(self) -> Path | None:
        path = self.env.get(env_name("pg1-path"))
        return Path(path) if path else None

    def key(self) -> frozenset[tuple[str, str]]:
        """What identifies the stanza and its repositories (a cache key)."""
        return frozenset((k, v) for k, v in self.env.items() if k.startswith(ENV_PREFIX))

    def with_pgdata(self, pgdata: Path) -> Config:
        """The same, with ``pg1-path`` set to ``pgdata`` unless the configuration names one."""
        if self.pgdata is not None:
            return self
        env = {**self.env, env_name("pg1-path"): str(pgdata)}
        return Config(self.stanza, env, self.create_stanza, self.origin)


# -- the Cluster resource -------------------------------------------------------------------


def decode_cluster(raw: bytes) -> dict[str, Any]:
    """The Cluster JSON of a request ({} when the caller sent none)."""
    if not raw:
        return {}
    try:
        document = json.loads(raw)
    except ValueError:
        raise ConfigError("cluster_definition is not JSON") from None
    if not isinstance(document, dict):
        raise ConfigError("cluster_definition is not a JSON object")
    return document


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _entries(value: Any) -> list[dict[str, Any]]:
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def plugin_parameters(cluster: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """``parameters`` of the enabled ``spec.plugins`` entry called ``name``."""
    for entry in _entries(_mapping(cluster.get("spec")).get("plugins")):
        if entry.get("name") == name and entry.get("enabled", True) is not False:
            return _mapping(entry.get("parameters"))
    return None


def recovery_source(cluster: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]] | None:
    """(source, parameters) when ``bootstrap.recovery.source`` is an external cluster
    served by the plugin ``name``."""
    spec = _mapping(cluster.get("spec"))
    source = _mapping(_mapping(spec.get("bootstrap")).get("recovery")).get("source")
    if not isinstance(source, str) or not source:
        return None
    for entry in _entries(spec.get("externalClusters")):
        plugin = _mapping(entry.get("plugin"))
        if entry.get("name") == source and plugin.get("name") == name:
            return source, _mapping(plugin.get("parameters"))
    return None


def check_private_dirs(env: Mapping[str, str]) -> None:
    """ConfigError when an existing lock or spool directory is not private to the sidecar."""
    for option in PRIVATE_DIRS:
        path = env.get(env_name(option))
        if path:
            try:
                workdir.check(Path(path), option)
            except workdir.UnsafeDirectory as exc:
                raise ConfigError(str(exc)) from None


# -- resolution -----------------------------------------------------------------------------


class Resolver:
    """Builds the :class:`Config` of a request from the Cluster and the sidecar's environment."""

    def __init__(
        self,
        name: str,
        environ: Mapping[str, str],
        work_dir: Path,
        policy: OptionPolicy | None = None,
    ) -> None:
        self.name = name
        self.work_dir = work_dir
        self.policy = policy or OptionPolicy()
        base = {k: environ[k] for k in INHERITED if k in environ}
        base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        defaults = {
            **DEFAULTS,
            "lock-path": str(work_dir / "lock"),
            "spool-path": str(work_dir / "spool"),
        }
        if environ.get("PGDATA"):
            defaults["pg1-path"] = environ["PGDATA"]
        base.update({env_name(k): v for k, v in defaults.items()})
        base.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
        self.base: Mapping[str, str] = base

    def build(self, parameters: Mapping[str, Any], origin: str) -> Config:
        """The Config of ``parameters``; ConfigError (OptionRefused naming every refused
        parameter) when they cannot be used as they are."""
        env = dict(self.base)
        create = True
        refused = []
        for key, value in sorted(parameters.items()):
            text = text_value(key, value)
            if key == CREATE_STANZA:
                create = flag(key, text)
                continue
            option = option_name(key)
            refusal = self.policy.refusal(key, option, origin)
            if refusal is not None:
                refused.append(refusal)
            env[env_name(option)] = text
        if refused:
            raise OptionRefused("; ".join(refused))
        stanza = env.get(env_name("stanza"), "")
        if not stanza:
            raise ConfigError(
                f"no stanza configured ({origin}: parameter 'stanza' or PGBACKREST_STANZA)"
            )
        check_private_dirs(env)
        return Config(stanza, env, create, origin)

    def own(self, cluster: Mapping[str, Any]) -> Config:
        """The cluster's own stanza: its spec.plugins entry."""
        parameters = plugin_parameters(cluster, self.name) or {}
        return self.build(parameters, f"spec.plugins[{self.name}]")

    def source(self, cluster: Mapping[str, Any]) -> Config | None:
        """The stanza of the recovery source, when that source uses this plugin."""
        found = recovery_source(cluster, self.name)
        if found is None:
            return None
        name, parameters = found
        return self.build(parameters, f"spec.externalClusters[{name}].plugin")

    def for_wal_restore(self, cluster: Mapping[str, Any]) -> Config:
        """Where WAL comes from: the recovery source while a recovery bootstrap replays WAL
        (recovery.signal in PGDATA), the cluster's own stanza otherwise (standbys too)."""
        own = self.own(cluster) if plugin_parameters(cluster, self.name) is not None else None
        source = self.source(cluster)
        pgdata = (own.pgdata if own else None) or (source.pgdata if source else None)
        bootstrapping = pgdata is not None and (pgdata / RECOVERY_SIGNAL).exists()
        if source is not None and (bootstrapping or own is None):
            return source
        return own if own is not None else self.own(cluster)
