"""A standby's connection to the primary: primary_conninfo, the HA slot, standby.signal.

``primary_conninfo`` carries CloudNativePG's keys (user streaming_replica, dbname
postgres, application_name = this pod, tcp_user_timeout) and, once the cluster's
certificates exist, the client certificate and the CA check (cluster/certs.py). Everything
that connects to another instance as streaming_replica (pg_basebackup, pg_rewind, the
standby's WAL receiver) builds its connection string here.
"""

from __future__ import annotations

import os
from pathlib import Path

from instance_manager.cluster import slots
from instance_manager.cluster.view import ClusterView
from instance_manager.postgres import config
from instance_manager.settings import Peer, Settings

SLOT_PREFIX = "_cnpg_"
# CNPG_STANDBY_TCP_USER_TIMEOUT's default: a standby notices a dead primary within 5 s.
TCP_USER_TIMEOUT_MS = "5000"
CONNECT_TIMEOUT = "5"


def slot_name(settings: Settings) -> str | None:
    """This instance's HA slot (``_cnpg_<pod>`` by default); None with HA slots off."""
    ha = settings.cluster.spec.replicationSlots.highAvailability
    if not ha.enabled:
        return None
    return slots.ha_slot_name(ha.slotPrefix or SLOT_PREFIX, settings.instance.podName)


def _tls_params(settings: Settings) -> dict[str, str]:
    """The certificate keywords when the cluster's certificates are in place."""
    if not (settings.certificates_dir / "streaming_replica.crt").is_file():
        return {"user": "streaming_replica", "dbname": "postgres", "sslmode": "prefer"}
    from instance_manager.cluster import certs

    return certs.replication_conninfo_params(settings)


def conninfo_params(settings: Settings, peer: Peer) -> dict[str, str]:
    params = {"host": peer.host, "port": str(peer.port)}
    params.update(_tls_params(settings))
    params["application_name"] = settings.instance.podName
    params["connect_timeout"] = CONNECT_TIMEOUT
    params["tcp_user_timeout"] = os.environ.get(
        "CNPG_STANDBY_TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS
    )
    return params


def conninfo_string(params: dict[str, str]) -> str:
    """``key=value`` pairs in libpq syntax, values quoted where they need it."""
    parts = []
    for key, value in params.items():
        if value == "" or any(c in value for c in " \t\n'\\"):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def primary_conninfo(settings: Settings, peer: Peer) -> str:
    return conninfo_string(conninfo_params(settings, peer))


def recovery_settings(settings: Settings, view: ClusterView) -> dict[str, str]:
    """override.conf additions of a standby following the view's current primary."""
    primary = view.current_primary
    if primary is None or primary == view.me:
        return {}
    wanted = {"primary_conninfo": primary_conninfo(settings, view.peer(primary))}
    slot = slot_name(settings)
    if slot is not None:
        wanted["primary_slot_name"] = slot
    return wanted


def write_signal(pgdata: Path) -> None:
    signal = pgdata / "standby.signal"
    if not signal.exists():
        config.write_atomic(signal, "")


def following(pgdata: Path, wanted: dict[str, str]) -> bool:
    """override.conf already names ``wanted``'s primary_conninfo."""
    try:
        text = (pgdata / config.OVERRIDE_CONF).read_text()
    except OSError:
        return False
    line = f"primary_conninfo = {config.quote(wanted.get('primary_conninfo', ''))}"
    return line in text.splitlines()
