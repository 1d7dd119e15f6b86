"""What this instance reports about itself: role, timeline, LSNs, replication."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from instance_manager.cluster import rolling
from instance_manager.postgres.lifecycle import Lifecycle

OBSERVE_TIMEOUT = 2.0
OBSERVE_QUERY = f"""
SELECT json_build_object(
  'inRecovery', pg_catalog.pg_is_in_recovery(),
  'timeline', (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
  'receiverTimeline', (SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver LIMIT 1),
  'systemID', (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),
  'receivedLsn', pg_catalog.pg_last_wal_receive_lsn()::text,
  'replayLsn', pg_catalog.pg_last_wal_replay_lsn()::text,
  'currentLsn', CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                ELSE pg_catalog.pg_current_wal_lsn()::text END,
  'streaming', (SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver
                 WHERE status = 'streaming'),
  'replication', coalesce((SELECT json_agg(json_build_object(
      'applicationName', application_name, 'state', state, 'sentLsn', sent_lsn::text,
      'replayLsn', replay_lsn::text, 'syncState', sync_state) ORDER BY application_name)
      FROM pg_catalog.pg_stat_replication), '[]'::json),
  'receiver', (SELECT json_build_object('status', status, 'slotName', slot_name,
      'senderHost', sender_host, 'senderPort', sender_port,
      'receivedLsn', flushed_lsn::text, 'timeline', received_tli)
      FROM pg_catalog.pg_stat_wal_receiver LIMIT 1),{rolling.PENDING_SQL})
"""


@dataclass
class Observed:
    role: str = "unknown"
    ready: bool = False
    timeline: int | None = None
    system_id: str | None = None
    received_lsn: str | None = None
    replay_lsn: str | None = None
    current_lsn: str | None = None
    replication: list[dict[str, Any]] = field(default_factory=list)
    pending_restart: bool = False
    decreased: dict[str, int] = field(default_factory=dict)  # sensitive parameters lowered
    starts: int = 0  # the postmaster start this was read from (state.postmaster_starts)
    # The configuration PostgreSQL had confirmed loading when the query was sent: what
    # pending_restart above was computed against.
    config_hash: str = ""


async def observe(lifecycle: Lifecycle) -> Observed:
    """Read over the lifecycle's session; 'unknown' while PostgreSQL is not running."""
    state = lifecycle.state
    if not state.postmaster_running or state.stopping:
        return Observed()
    config_hash = state.loaded_config_hash  # before the query: see Observed.config_hash
    row = None
    with contextlib.suppress(Exception):
        row = await lifecycle.session.fetchone(OBSERVE_QUERY, timeout=OBSERVE_TIMEOUT)
    if row is None:
        return Observed()
    data = row[0] if isinstance(row[0], dict) else json.loads(str(row[0]))
    standby = bool(data["inRecovery"])
    replication = data["replication"] if not standby else [r for r in [data["receiver"]] if r]
    return Observed(
        role="replica" if standby else "primary",
        ready=(int(data["streaming"] or 0) > 0) if standby else True,
        timeline=data["receiverTimeline"]
        if standby and data["receiverTimeline"]
        else data["timeline"],
        system_id=data["systemID"],
        received_lsn=data["receivedLsn"],
        replay_lsn=data["replayLsn"],
        current_lsn=data["currentLsn"],
        replication=replication,
        pending_restart=bool(data.get("pendingRestart")),
        decreased={str(k): int(v) for k, v in (data.get("decreased") or {}).items()},
        starts=state.postmaster_starts,
        config_hash=config_hash,
    )
